"""Settlement that hits the database at a bad moment, on SQLite and PostgreSQL: a pool timeout is retried like a
dropped connection, a settlement that keeps failing is retried in the background with the charge it computed,
one given up on expires and is released (the heartbeat keeps only holds of runs still in flight), and a retry
whose first commit did go through reports the real charge."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imagegate.api.auth import Principal
from imagegate.billing import Billing, Idempotency, load_price_book
from imagegate.billing.store import BillingStore
from imagegate.catalog import Size, load_catalog
from imagegate.db.schema import holds
from imagegate.engines.base import ImageDone
from imagegate.gateway import DeliveredImage, RunResult
from imagegate.storage import StoredImage
from imagegate.validate import RawRequest, validate
from tests.db.backends import open_store

CATALOG = load_catalog()
COST = 11_005  # one low 1024x1024 image for the prompt "x"


def _request(request_id: str):
    body = {"model": "gpt-image-1", "prompt": "x", "size": "1024x1024", "quality": "low"}
    req = validate(RawRequest("generate", body), CATALOG, max_input_pixels=10**8, max_image_bytes=10**8)
    return replace(req, job=replace(req.job, request_id=request_id))


def _result() -> RunResult:
    image = DeliveredImage(ImageDone(0, b"png", "png", Size(1024, 1024)),
                           stored=StoredImage(name="a.png", expires_at=0))
    return RunResult(images=[image], finished=time.monotonic())


def _db_down() -> OperationalError:
    return OperationalError("UPDATE holds", {}, ConnectionResetError("connection reset"))


def run(database_url: str, body, **store_args):
    async def main():
        async with open_store(database_url, **store_args) as store:
            account = await store.create_account("acme", balance_micro=1_000_000)
            billing = Billing(load_price_book(), store)
            billing.settle_retry_delays = (0.05,) * 4
            payer = Principal(key_prefix="sk-ig-test00", account="acme", metered=True, account_id=account.id)
            return await body(store, billing, payer)

    return asyncio.run(main())


def _failing(store: BillingStore, failures: int, error=_db_down):
    """Make the next ``failures`` settle calls fail before touching the database."""
    real = store.settle
    calls = {"n": 0}

    async def settle(**kw):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise error()
        return await real(**kw)

    store.settle = settle  # type: ignore[method-assign]
    return calls


def test_a_pool_timeout_is_retried(database_url):
    async def body(store, billing, payer):
        calls = _failing(store, 1, lambda: PoolTimeout("QueuePool limit reached, connection timed out"))
        ticket = await billing.reserve(_request("r1"), payer)
        settlement = await billing.settle(ticket, _result(), None, engine="sandbox")
        return settlement, calls["n"], await store.totals("acme")

    settlement, calls, totals = run(database_url, body)
    assert calls == 2 and settlement.cost_micro == COST
    assert totals["settle"] == COST and totals["open_holds"] == 0


def test_a_settlement_that_keeps_failing_is_retried_in_the_background(database_url):
    async def body(store, billing, payer):
        _failing(store, 4)  # the three quick tries, and the first later one
        ticket = await billing.reserve(_request("r1"), payer, idempotency=Idempotency("acct:1", "k", "h"))
        with pytest.raises(OperationalError):
            await billing.settle(ticket, _result(), None, engine="sandbox")
        assert (await store.totals("acme"))["open_holds"] == 1
        deadline = time.monotonic() + 10
        while ticket.settlement is None:
            assert time.monotonic() < deadline, "the background retry never settled"
            await asyncio.sleep(0.02)
        return ticket.settlement, await store.totals("acme"), await store.usage("acme"), \
            await store.idempotency_record("acct:1", "k")

    settlement, totals, usage, record = run(database_url, body)
    # The images were delivered: they are charged, not given away.
    assert settlement.cost_micro == COST and settlement.available_micro == 1_000_000 - COST
    assert totals["settle"] == COST and totals["open_holds"] == 0 and totals["held"] == 0
    assert (usage[0]["status"], usage[0]["cost_micro"]) == ("ok", COST)
    assert record.state == "done" and record.result["cost_micro"] == COST


def test_a_settlement_still_being_retried_at_shutdown_gets_a_last_try(database_url):
    async def body(store, billing, payer):
        _failing(store, 3)  # the three quick tries; the database is back by shutdown
        billing.settle_retry_delays = (300,)  # the next background try would come long after the server stopped
        ticket = await billing.reserve(_request("r1"), payer)
        with pytest.raises(OperationalError):
            await billing.settle(ticket, _result(), None, engine="sandbox")
        await billing.aclose()
        return ticket.settlement, await store.totals("acme")

    settlement, totals = run(database_url, body)
    assert settlement.cost_micro == COST
    assert totals["settle"] == COST and totals["open_holds"] == 0 and totals["held"] == 0


def test_a_settlement_given_up_on_expires_and_is_released(database_url):
    async def body(store, billing, payer):
        _failing(store, 10**6)
        lost = await billing.reserve(_request("lost"), payer, idempotency=Idempotency("acct:1", "k", "h"))
        await billing.reserve(_request("running"), payer)  # still in flight: its hold must stay
        with pytest.raises(OperationalError):
            await billing.settle(lost, _result(), None, engine="sandbox")
        # The background retries give up; the server is alive and beating, yet the hold nobody will settle
        # expires and is released.
        released, deadline = 0, time.monotonic() + 10
        while not released:
            assert time.monotonic() < deadline, "the hold was never released"
            await asyncio.sleep(0.1)
            await store.heartbeat()
            released = await store.reconcile()
        async with store.db.read() as conn:
            status = dict((await conn.execute(sa.select(holds.c.request_id, holds.c.status))).all())
        return released, status, await store.usage("acme"), await store.idempotency_record("acct:1", "k")

    released, status, usage, record = run(database_url, body, hold_ttl_seconds=0.5)
    assert released == 1 and status == {"lost": "released", "running": "open"}
    rows = {r["request_id"]: (r["status"], r["error_code"]) for r in usage}
    assert rows == {"lost": ("crashed", "hold_expired"), "running": ("running", None)}
    assert record is None  # the claim is gone: a retry runs again instead of a 409 forever


def test_a_retried_settle_whose_first_commit_went_through_reports_the_real_charge(database_url):
    async def body(store, billing, payer):
        real = store.settle
        calls = {"n": 0}

        async def settle(**kw):  # the COMMIT reached the database, its answer did not reach us
            calls["n"] += 1
            answer = await real(**kw)
            if calls["n"] == 1:
                raise _db_down()
            return answer

        store.settle = settle
        ticket = await billing.reserve(_request("r1"), payer, idempotency=Idempotency("acct:1", "k", "h"))
        settlement = await billing.settle(ticket, _result(), None, engine="sandbox")
        return settlement, await store.totals("acme"), await store.usage("acme"), \
            await store.idempotency_record("acct:1", "k")

    settlement, totals, usage, record = run(database_url, body)
    assert settlement.cost_micro == COST and settlement.available_micro == 1_000_000 - COST
    assert totals["settle"] == COST and totals["open_holds"] == 0
    assert (usage[0]["status"], usage[0]["error_code"], usage[0]["cost_micro"]) == ("ok", None, COST)
    assert record.state == "done" and record.result["cost_micro"] == COST
