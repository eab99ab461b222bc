"""200 generations at once on an account whose balance covers exactly 100: exactly 100 succeed, the rest get
``insufficient_quota``, the balance ends at exactly 0, and the ledger equals the usage log to the micro-dollar."""

from __future__ import annotations

import asyncio

import openai
from openai import AsyncOpenAI

from tests.billing.live import (  # noqa: F401  (fixtures)
    admin, assert_books_balance, backend, metered, new_account, quote, settled,
)

# Small, cheap images: the point is the money, not the pixels.
BODY = {"model": "dall-e-2", "prompt": "a small owl", "size": "256x256", "response_format": "b64_json"}
REQUESTS = 200
IN_FLIGHT = 50


def test_200_concurrent_generations_on_a_balance_for_100(metered):
    key = new_account(metered, "acme")
    price = quote(metered, key, BODY)
    assert price == 16_000
    topped = admin(metered, "POST", "/accounts/acme/topups", json={"amount": f"{100 * price / 1e6:.6f}"})
    assert topped.status_code == 200 and topped.json()["balance"]["micro_usd"] == 100 * price

    async def main():
        sdk = AsyncOpenAI(base_url=metered.base_url, api_key=key, max_retries=0, timeout=120)
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one():
            async with gate:
                try:
                    raw = await sdk.images.with_raw_response.generate(**BODY)
                except openai.RateLimitError as exc:
                    assert exc.code == "insufficient_quota"
                    return "insufficient_quota"
                assert len(raw.parse().data) == 1
                assert raw.headers["x-imagegate-cost"] == "0.016000"
                return "ok"

        try:
            return await asyncio.gather(*(one() for _ in range(REQUESTS)))
        finally:
            await sdk.close()

    outcomes = asyncio.run(main())
    assert outcomes.count("ok") == 100
    assert outcomes.count("insufficient_quota") == 100
    t = settled(metered, "acme")
    assert t["balance"] == 0 and t["held"] == 0 and t["open_holds"] == 0
    assert t["settle"] == t["usage_cost"] == 100 * price
    assert_books_balance(t)
    rows = admin(metered, "GET", "/usage", params={"account": "acme", "limit": 1000}).json()["data"]
    by_status = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    assert by_status == {"ok": 100, "refused": 100}
    assert sum(row["cost_micro"] for row in rows) == 100 * price
