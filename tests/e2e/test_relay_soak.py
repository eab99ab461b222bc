"""Many relayed requests at once against a seeded random mix of upstream faults, with clients that leave early.

Whatever the mix and however the requests interleave, the books must balance to the micro-dollar, nothing may
stay held, every request has exactly one usage row (found by the ``x-request-id`` its client saw), a client with
a whole answer has a whole image and was charged once for it, and a client with an error or a cut-off answer was
charged nothing. Which fault meets which request is up to the interleaving: the checks are the ones that hold for
any of them.
"""

from __future__ import annotations

import base64
import io
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

from tests.billing.live import (  # noqa: F401  (fixtures)
    admin, assert_books_balance, backend, metered_server, new_account, quote, settled,
)
from tests.fault_upstream import B64, FaultUpstream, Reply, error_body, ok_body

REQUESTS = 48
IN_FLIGHT = 12
# A prompt the quote counts at least the 12 prompt tokens the upstream reports for (the charge is capped at the hold).
BODY = {"model": "gpt-image-1", "prompt": "a lighthouse on a cliff at dawn, waves below and gulls overhead",
        "size": "1024x1024", "quality": "low"}
PRICE = 11_000 + 12 * 5  # the per-image price for low 1024x1024 plus the upstream's 12 prompt tokens at $5/M


def _noisy_b64() -> str:
    """1024x1024, noisy at the top: its base64 (about 130 KB) spans many reads, so that forwarding it begins before
    it has all arrived, and a cut-off lands mid-answer."""
    pixels = np.full((1024, 1024, 3), (30, 90, 200), np.uint8)
    pixels[:32] = np.random.default_rng(5).integers(0, 256, (32, 1024, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


NOISY = _noisy_b64()


def _faults(upstream: FaultUpstream, rng: random.Random) -> list[Reply]:
    body = ok_body(b64=NOISY)
    kinds = [
        Reply(body=body),
        Reply(body=ok_body(b64="data:image/png;base64," + B64)),
        Reply(body=ok_body(url=upstream.image_url)),
        Reply(body=body, pause_at=len(body) // 3, pause_s=0.2),  # a slow body: the image arrives in two parts
        Reply(429, error_body("slow down", "requests", "rate_limit_exceeded"), {"retry-after": "0"}),
        Reply(503, error_body("overloaded", "server_error", "overloaded")),
        Reply(500, error_body("The server had an error", "server_error", "server_error")),
        Reply(200, body, truncate=True),  # cut off mid-image: the upstream may have generated, so no retry
        Reply(400, error_body("Your request was rejected by the safety system.", "image_generation_user_error",
                              "moderation_blocked")),
        Reply(hang=True),
    ]
    return [rng.choice(kinds) for _ in range(2 * REQUESTS)]


def _decoded(b64: str) -> tuple[str, tuple[int, int]]:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image.format, image.size


def _one(base_url: str, key: str, how: str) -> dict:
    """One client: ``b64``, ``url`` (and fetch the link), or ``leave`` (go once the answer has begun)."""
    headers = {"Authorization": f"Bearer {key}"}
    body = dict(BODY, response_format="url" if how == "url" else "b64_json")
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{base_url}/images/generations", json=body, headers=headers) as response:
            seen = {"how": how, "id": response.headers["x-request-id"], "status": response.status_code}
            if how == "leave":
                # A chunked answer was still arriving: this client leaves mid-image, and its run must keep it.
                return {**seen, "mid_image": response.headers.get("transfer-encoding") == "chunked"}
            try:
                response.read()
            except httpx.RemoteProtocolError:  # the answer cut off mid-image
                return {**seen, "status": "cut"}
        answer = response.json()
        if response.status_code != 200:
            error = answer["error"]
            assert error["message"] and error["type"] and "param" in error, answer
            return {**seen, "code": error["code"]}
        (item,) = answer["data"]
        if how == "url":
            fetched = http.get(item["url"])
            assert fetched.status_code == 200
            item = {"b64_json": base64.b64encode(fetched.content).decode()}
        assert _decoded(item["b64_json"]) == ("PNG", (1024, 1024))
        assert answer["usage"]["input_tokens"] == 12
        return {**seen, "cost": response.headers.get("x-imagegate-cost")}


def _kept(seen: list[dict], by_id: dict[str, dict]) -> tuple[int, int]:
    """The fewest and the most images on disk: every url answer's, and those of the clients that left a charged
    answer mid-image (unless the server had written the whole answer before it saw the client go)."""
    url = sum(client["how"] == "url" and client["status"] == 200 for client in seen)
    left = sum(client["how"] == "leave" and client["mid_image"] and by_id[client["id"]]["status"] == "ok"
               for client in seen)
    return url, url + left


def test_a_random_mix_of_faults_and_leaving_clients_keeps_the_books_exact(backend, tmp_path):
    rng = random.Random(20261121)
    primary, backup = FaultUpstream(), FaultUpstream()
    primary.script.extend(_faults(primary, rng))
    backup.script.extend(_faults(backup, rng)[: REQUESTS // 4])  # the backup fails now and then too
    channels = (
        {"name": "primary", "base_url": primary.base_url, "api_key": "k", "models": ["gpt-image-1"], "priority": 1,
         "max_retries": 1, "timeout_s": 1.0},
        {"name": "backup", "base_url": backup.base_url, "api_key": "k", "models": ["gpt-image-1"],
         "timeout_s": 1.0},
    )
    clients = [rng.choice(["b64", "b64", "url", "leave"]) for _ in range(REQUESTS)]
    try:
        with metered_server(backend, tmp_path, channels=channels) as live:
            key = new_account(live, "acme", "10")
            assert quote(live, key, BODY) >= PRICE
            with ThreadPoolExecutor(IN_FLIGHT) as pool:
                seen = list(pool.map(lambda how: _one(live.base_url, key, how), clients))
            books = settled(live, "acme", timeout=60)
            rows = admin(live, "GET", "/usage", params={"account": "acme", "limit": 1000}).json()["data"]
            by_id = {row["request_id"]: row for row in rows}
            images = live.settings.images_dir
            fewest, most = _kept(seen, by_id)
            deadline = time.monotonic() + 2
            while len(list(images.glob("*.png"))) < most and time.monotonic() < deadline:
                time.sleep(0.05)  # a client that left just after its run ended has its images kept after that
            stored = len(list(images.glob("*.png")))
    finally:
        primary.close()
        backup.close()

    assert books["open_holds"] == 0 and books["held"] == 0
    assert_books_balance(books)
    assert len(rows) == REQUESTS and len(by_id) == REQUESTS
    for row in rows:  # charged for one delivered image at the upstream's usage, or for nothing
        assert (row["status"], row["n_delivered"], row["cost_micro"]) in {("ok", 1, PRICE), ("error", 0, 0)}, row
    charged = sum(row["status"] == "ok" for row in rows)
    assert books["settle"] == charged * PRICE and books["balance"] == 10_000_000 - charged * PRICE

    for client in seen:
        row = by_id[client["id"]]
        if client["how"] == "leave":
            continue  # gone before the end: charged if the image came (and it is kept), else not
        if client["status"] == 200:
            assert row["status"] == "ok", (client, row)
            if client["how"] == "url":  # read whole before answering: the exact cost, not the quote
                assert client["cost"] == f"{PRICE / 1e6:.6f}"
        elif client["status"] == "cut":
            assert row["status"] == "error", (client, row)
        else:
            assert row["status"] == "error" and row["error_code"] == client["code"], (client, row)
    assert fewest <= stored <= most, (fewest, stored, most)
    # Both whole answers and failures happened, or the mix tested little.
    assert 0 < charged < REQUESTS
    # Nothing was retried without end: at most one retry on the primary, then the backup.
    assert primary.calls() + backup.calls() <= 3 * REQUESTS
    outcomes = [str(client["status"]) for client in seen if client["how"] != "leave"]
    print(json.dumps({"charged": charged, "stored": [fewest, stored, most], "primary": primary.calls(),
                      "backup": backup.calls(), "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))}}))

