"""What settlement charges, decided without a database: delivered images, the failure policies, our own
shutdown, upstreams that provably did nothing, and models without a price."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from imagegate.api.auth import Principal
from imagegate.billing import Billing, load_price_book
from imagegate.catalog import Catalog, load_catalog
from imagegate.errors import EngineError, EngineOverloaded, PermissionDenied, ServerError, UpstreamError
from imagegate.gateway import DeliveredImage, RunResult
from imagegate.engines.base import ImageDone
from imagegate.validate import RawRequest, validate

CATALOG = load_catalog()


def request(model="gpt-image-1", catalog=CATALOG, **fields):
    body = {"model": model, "prompt": "x", "size": "1024x1024", "quality": "low", **fields}
    return validate(RawRequest("generate", body), catalog, max_input_pixels=10**8, max_image_bytes=10**8)


def result(images: int) -> RunResult:
    from imagegate.catalog import Size

    done = [DeliveredImage(ImageDone(i, b"png", "png", Size(1024, 1024))) for i in range(images)]
    return RunResult(images=done)


def settle(billing: Billing, req, res, error=None, *, engine="sandbox", cancelled=False) -> int | None:
    async def main():
        ticket = await billing.reserve(req, None)
        return (await billing.settle(ticket, res, error, engine=engine, cancelled=cancelled)).cost_micro

    return asyncio.run(main())


def test_success_charges_what_was_delivered():
    billing = Billing(load_price_book())
    assert settle(billing, request(n=2), result(2)) == 2 * 11_000 + 5
    assert settle(billing, request(n=2), result(1)) == 11_000 + 5


def test_failure_policies(tmp_path):
    refund = Billing(load_price_book())
    path = tmp_path / "prices.toml"
    path.write_text('[failure_policy]\ndefault = "charge"\n')
    charge = Billing(load_price_book(path))
    req = request(n=2)
    error = EngineError("boom")
    assert settle(refund, req, result(0), error) == 0
    # A run that failed with an image not yet whole (its answer cut off) delivered nothing: refunded.
    assert settle(refund, req, result(1), error) == 0
    assert settle(charge, req, result(0), error) == 2 * 11_000 + 5  # as quoted: the upstream bills the call
    assert settle(charge, req, result(0), error, cancelled=True) == 0  # our own shutdown is never billed
    # Cut short after one whole image: that image is paid; under `charge`, the call as quoted.
    assert settle(refund, req, replace(result(1), cut_short=error)) == 11_000 + 5
    assert settle(charge, req, replace(result(1), cut_short=error)) == 2 * 11_000 + 5
    # A full queue met after the hold (others joined while it was placed): nothing ran, nothing is billed.
    assert settle(charge, req, result(0), EngineOverloaded("full")) == 0
    # A relay's own channel policy decides for its errors; an upstream that provably did nothing is not billed.
    assert settle(refund, req, result(0), UpstreamError("x", failure_policy="charge"), engine="relay") == 2 * 11_000 + 5
    assert settle(charge, req, result(0), UpstreamError("x", nothing_generated=True, failure_policy="charge")) == 0


def test_a_model_without_a_price_is_refused_not_free():
    extended = Catalog({**CATALOG.models, "flux-9": replace(CATALOG.get("gpt-image-1"), id="flux-9")})
    billing = Billing(load_price_book())
    req = request("flux-9", catalog=extended)
    with pytest.raises(ServerError) as exc:
        billing.quote(req, None)
    assert exc.value.code == "price_missing" and "flux-9" in exc.value.message
    # An unmetered caller may still run it: nothing is billed, and no cost is claimed.
    assert settle(billing, req, result(1)) is None


def test_allowed_models_are_enforced_before_anything_is_held():
    billing = Billing(load_price_book())
    payer = Principal(key_prefix="sk-ig-abc", metered=True, account_id=1, key_id=1, allowed_models=("dall-e-2",))
    with pytest.raises(PermissionDenied) as exc:
        asyncio.run(billing.reserve(request(), payer))
    assert exc.value.code == "model_not_allowed"


def test_an_unknown_price_group_is_refused():
    billing = Billing(load_price_book())
    payer = Principal(key_prefix="sk-ig-abc", metered=True, account_id=1, key_id=1, group="platinum")
    with pytest.raises(ServerError) as exc:
        billing.quote(request(), payer)
    assert exc.value.code == "price_group_missing"


def _sqlite_error(tmp_path, kind: str) -> Exception:
    """A real sqlite3 error: the file locked by another connection, a unique value taken, or a statement naming no
    such column."""
    import sqlite3

    path = tmp_path / "t.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (a UNIQUE)")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        if kind == "locked":
            holder.execute("BEGIN IMMEDIATE")
            other.execute("BEGIN IMMEDIATE")
        elif kind == "taken":
            other.execute("INSERT INTO t VALUES (1), (1)")
        else:
            other.execute("SELECT nope FROM t")
    except sqlite3.Error as exc:
        return exc
    finally:
        holder.close()
        other.close()
    raise AssertionError("no error")


def _postgres_error(sqlstate: str) -> Exception:
    # As SQLAlchemy's asyncpg dialect hands on every server error: one class, the SQLSTATE as an attribute.
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

    error = AsyncAdapt_asyncpg_dbapi.Error(f"SQLSTATE {sqlstate}")
    error.sqlstate = error.pgcode = sqlstate
    return error


@pytest.mark.parametrize("orig,tries", [
    ("sqlite_locked", 3),  # the file locked elsewhere: tried again at once (a pause between)
    ("pg_deadlock", 3),  # PostgreSQL chose this transaction as a deadlock's victim: it rolled back whole
    ("pg_gone", 3),  # the server is shutting down
    ("no_turn", 1),  # the turn was held elsewhere for the whole write timeout: left to the background tries
    ("sqlite_no_column", 1),  # a statement the database refuses fails the same way again (an OperationalError too)
    ("pg_no_column", 1),
    ("sqlite_taken", 1),  # an IntegrityError
])
def test_a_settlement_is_tried_again_at_once_only_when_that_can_help(orig, tries, monkeypatch, tmp_path):
    import sqlite3

    from sqlalchemy.exc import DBAPIError

    from imagegate.db import NoTurnToWrite

    monkeypatch.setattr(asyncio, "sleep", lambda _seconds: _no_wait())  # the pauses between tries
    reason = {
        "sqlite_locked": lambda: _sqlite_error(tmp_path, "locked"),
        "sqlite_no_column": lambda: _sqlite_error(tmp_path, "no_column"),
        "sqlite_taken": lambda: _sqlite_error(tmp_path, "taken"),
        "pg_deadlock": lambda: _postgres_error("40P01"),
        "pg_gone": lambda: _postgres_error("57P01"),
        "pg_no_column": lambda: _postgres_error("42703"),
        "no_turn": lambda: NoTurnToWrite("database is locked"),
    }[orig]()
    calls = []

    async def attempt():
        calls.append(1)
        raise DBAPIError.instance("UPDATE holds", None, reason, type(reason))

    with pytest.raises(DBAPIError):
        asyncio.run(Billing._retry(attempt))
    assert len(calls) == tries


async def _no_wait() -> None:
    return None
