"""The ledger store on SQLite and PostgreSQL: atomic holds under concurrency, settle-once, reconciliation of
holds left by dead servers, keys stored hashed, and the invariants the CHECK constraints keep."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from imagegate.billing.store import BillingStore, IdempotencyTaken, UsageMeta
from imagegate.catalog.tokens import Usage
from imagegate.db.schema import accounts, api_keys, holds, idempotency, instances
from imagegate.errors import Conflict, InsufficientQuota, InvalidRequest, NotFound
from tests.db.backends import open_store


def meta(account_id: int | None, quote: int, request_id: str = "r", key_prefix: str = "sk-ig-test00") -> UsageMeta:
    return UsageMeta(request_id=request_id, endpoint="images", model="gpt-image-1", engine="sandbox",
                     operation="generate", size="1024x1024", quality="low", stream=False, n_asked=1,
                     key_prefix=key_prefix, account_id=account_id, metered=account_id is not None, quote_micro=quote)


def run(database_url: str, body, **store_args):
    async def main():
        async with open_store(database_url, **store_args) as store:
            return await body(store)

    return asyncio.run(main())


async def settle(store, hold_id, usage_id, cost, **kw):
    return await store.settle(hold_id=hold_id, usage_id=usage_id, cost_micro=cost, delivered=1,
                              usage=Usage(3, 0, 272), latency_ms=5, status="ok", error_code=None, **kw)


def check_invariants(totals: dict) -> None:
    assert totals["balance"] == totals["topup"] - totals["settle"]
    assert totals["held"] == totals["open_held"] == totals["hold"] - totals["settle"] - totals["release"]
    assert totals["settle"] == totals["usage_cost"]


def test_concurrent_holds_admit_exactly_what_the_balance_covers(database_url):
    cost = 11_015

    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=100 * cost)
        key, _ = await store.create_key("acme")

        async def one(i: int):
            try:
                hold_id, usage_id, _ = await store.place_hold(meta(account.id, cost, f"r{i}"), key_id=key.id)
            except InsufficientQuota:
                return False
            await asyncio.sleep(0)
            await settle(store, hold_id, usage_id, cost)
            return True

        results = await asyncio.gather(*(one(i) for i in range(200)))
        return results, await store.totals("acme"), await store.key(key.prefix)

    results, totals, key = run(database_url, body)
    assert results.count(True) == 100
    assert totals["balance"] == 0 and totals["held"] == 0 and totals["open_holds"] == 0
    assert totals["settle"] == totals["usage_cost"] == 100 * cost
    assert key.spent_micro == 100 * cost and key.held_micro == 0
    check_invariants(totals)


def test_key_spend_limit_is_atomic_too(database_url):
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=10_000_000)
        key, _ = await store.create_key("acme", spend_limit_micro=5 * 1000)
        results = await asyncio.gather(*(
            store.place_hold(meta(account.id, 1000, f"r{i}"), key_id=key.id) for i in range(12)
        ), return_exceptions=True)
        return results

    results = run(database_url, body)
    assert sum(not isinstance(r, Exception) for r in results) == 5
    refused = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(r, InsufficientQuota) and "spend limit" in r.message for r in refused)


def test_settlement_charges_at_most_the_hold_and_only_once(database_url):
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=1_000_000)
        hold_id, usage_id, available = await store.place_hold(meta(account.id, 50_000), key_id=None)
        assert available == 950_000
        charged, available = await settle(store, hold_id, usage_id, 80_000)  # more than held: capped
        assert (charged, available) == (50_000, 950_000)
        # A second settle (a retry whose first COMMIT went through) charges nothing more; it reports the charge.
        again = await settle(store, hold_id, usage_id, 50_000)
        assert again == (50_000, 950_000)
        second, usage2, _ = await store.place_hold(meta(account.id, 40_000, "r2"), key_id=None)
        assert await settle(store, second, usage2, 30_000) == (30_000, 920_000)  # the unused 10,000 released
        rows = {r["request_id"]: r for r in await store.usage("acme")}
        assert rows["r"]["status"] == "ok" and rows["r"]["cost_micro"] == 50_000
        ledger = [(e["kind"], e["amount_micro"]) for e in reversed(await store.ledger("acme"))]
        assert ledger == [("topup", 1_000_000), ("hold", 50_000), ("settle", 50_000),
                          ("hold", 40_000), ("settle", 30_000), ("release", 10_000)]
        return await store.totals("acme")

    totals = run(database_url, body)
    assert totals["balance"] == 920_000
    check_invariants(totals)


def test_balance_can_never_drop_below_holds(database_url):
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=100)
        async with store.db.write() as conn:
            await conn.execute(sa.update(accounts).where(accounts.c.id == account.id).values(held_micro=50))
        with pytest.raises(IntegrityError):
            async with store.db.write() as conn:
                await conn.execute(sa.update(accounts).where(accounts.c.id == account.id).values(balance_micro=10))
        with pytest.raises(IntegrityError):
            async with store.db.write() as conn:
                await conn.execute(sa.update(accounts).where(accounts.c.id == account.id).values(held_micro=-1))

    run(database_url, body)


def test_accounts_and_keys(database_url):
    async def body(store: BillingStore):
        await store.create_account("acme", balance_micro=2_000_000)
        with pytest.raises(Conflict):
            await store.create_account("acme")
        with pytest.raises(NotFound):
            await store.topup("nobody", 1)
        key, secret = await store.create_key("acme", name="ci", allowed_models=["gpt-image-1"],
                                             expires_at=time.time() + 60)
        assert secret.startswith("sk-ig-") and len(secret) > 40 and key.prefix == secret[:12]
        found, account = await store.key_by_secret(secret)
        assert found.id == key.id and account.name == "acme" and found.allowed_models == ("gpt-image-1",)
        assert await store.key_by_secret(secret + "x") is None
        async with store.db.read() as conn:
            stored = (await conn.execute(sa.select(api_keys))).one()
        assert secret not in [str(v) for v in stored] and stored.key_hash != secret  # only the hash is kept
        with pytest.raises(InvalidRequest):  # a part of a prefix is no prefix: a typo must not revoke some key
            await store.revoke_key(key.prefix[:9])
        assert (await store.revoke_key(key.prefix)).state(time.time()) == "revoked"
        expired, _ = await store.create_key("acme", expires_at=time.time() - 1)
        assert expired.state(time.time()) == "expired"
        with pytest.raises(NotFound):
            await store.revoke_key("sk-ig-nother")

    run(database_url, body)


def test_idempotency_claim_is_part_of_the_hold(database_url):
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=100)
        claim = ("acct:1", "k1", "hash")
        await store.place_hold(meta(account.id, 10, "a"), key_id=None, idem=claim)
        with pytest.raises(IdempotencyTaken):
            await store.place_hold(meta(account.id, 10, "b"), key_id=None, idem=claim)
        # A refused hold leaves no claim behind.
        with pytest.raises(InsufficientQuota):
            await store.place_hold(meta(account.id, 1000, "c"), key_id=None, idem=("acct:1", "k2", "hash"))
        assert await store.idempotency_record("acct:1", "k2") is None
        return await store.totals("acme")

    totals = run(database_url, body)
    assert totals["held"] == 10 and totals["open_holds"] == 1


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_reconcile_releases_holds_of_dead_servers_only(database_url):
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=1_000_000)
        db = store.db

        async def server(hostname: str, pid: int) -> BillingStore:
            other = BillingStore(db)
            other.hostname, other.pid = hostname, pid
            await other.register()
            return other

        dead_here = await server(store.hostname, _dead_pid())  # this host, process gone
        alive_here = await server(store.hostname, os.getppid())  # this host, process running
        elsewhere = await server("another-host", 1)  # another host: judged by its heartbeat
        held = {}
        for name, other in (("dead", dead_here), ("alive", alive_here), ("elsewhere", elsewhere)):
            held[name] = (await other.place_hold(meta(account.id, 1000, name), key_id=None))[0]
        assert await store.reconcile() == 1
        async with db.read() as conn:
            status = dict((await conn.execute(sa.select(holds.c.request_id, holds.c.status))).all())
        assert status == {"dead": "released", "alive": "open", "elsewhere": "open"}
        # The other host stops heart-beating: after stale_after its holds go too (judged by a server whose own
        # heartbeats have been going well for longer than that).
        store._beating_since = time.time() - 3600
        async with db.write() as conn:
            await conn.execute(sa.update(instances).where(instances.c.id == elsewhere.instance_id)
                               .values(heartbeat_at=time.time() - 3600))
        # A live server's hold whose time ran out (it stopped extending it) is released as expired.
        async with db.write() as conn:
            await conn.execute(sa.update(holds).where(holds.c.id == held["alive"]).values(expires_at=time.time() - 1))
        assert await store.reconcile() == 2
        rows = {r["request_id"]: (r["status"], r["error_code"]) for r in await store.usage("acme")}
        assert rows == {"dead": ("crashed", "server_lost"), "elsewhere": ("crashed", "server_lost"),
                        "alive": ("crashed", "hold_expired")}
        async with db.read() as conn:
            ids = set((await conn.execute(sa.select(instances.c.id))).scalars())
        assert ids == {store.instance_id, alive_here.instance_id}
        # A settle that arrives after its hold was released charges nothing and keeps the row as it was.
        assert await settle(store, held["dead"], 1, 1000) == (0, None)
        return await store.totals("acme")

    totals = run(database_url, body, stale_after_seconds=60)
    assert totals["balance"] == 1_000_000 and totals["held"] == 0 and totals["settle"] == 0
    check_invariants(totals)


async def _held_by_another_host(store: BillingStore) -> tuple[BillingStore, str]:
    """A server on another host (judged by its heartbeat only), holding 1,000 of a new account's balance."""
    account = await store.create_account("acme", balance_micro=1_000_000)
    other = BillingStore(store.db)
    other.hostname = "another-host"
    await other.register()
    return other, (await other.place_hold(meta(account.id, 1000, "theirs"), key_id=None))[0]


def test_after_an_outage_silent_servers_get_a_whole_stale_after_to_speak(database_url):
    """A database outage silences every server: once it is over, nobody's holds are taken for lost until the
    judge itself has been heart-beating for stale_after (the others have had the time to beat again)."""
    async def body(store: BillingStore):
        other, hold_id = await _held_by_another_host(store)
        async with store.db.write() as conn:  # the outage: the other server's heartbeats did not land either
            await conn.execute(sa.update(instances).where(instances.c.id == other.instance_id)
                               .values(heartbeat_at=time.time() - 3600))
        async def down(*args, **kw):
            raise OSError("the database is away")

        with _writes(store, lambda real_write: down), pytest.raises(OSError):
            await store.heartbeat()
        await store.heartbeat()  # back: this server beats again, the other has not had its turn yet
        assert await store.reconcile() == 0
        async with store.db.read() as conn:
            assert (await conn.execute(sa.select(holds.c.status))).scalar_one() == "open"
        store._beating_since = time.time() - 61  # a whole stale_after later, still silent: it is gone
        assert await store.reconcile() == 1
        async with store.db.read() as conn:
            assert (await conn.execute(sa.select(holds.c.status).where(holds.c.id == hold_id))).scalar_one() \
                == "released"

    run(database_url, body, stale_after_seconds=60)


@contextlib.contextmanager
def _writes(store: BillingStore, wrap):
    """Within the block every write goes through ``wrap(real_write)``: a database that fails, stalls or loses its
    replies."""
    real_write = store.db.run_write
    store.db.run_write = wrap(real_write)
    try:
        yield
    finally:
        store.db.run_write = real_write


def _stalled(seconds: float):
    """The database stalls: every write waits ``seconds`` before it runs."""
    def wrap(real_write):
        async def slow(*args, **kw):
            await asyncio.sleep(seconds)
            return await real_write(*args, **kw)
        return slow
    return wrap


def test_a_heartbeat_is_stamped_when_it_runs_not_before_its_wait(database_url):
    """A stamp taken before a stall would land already old: the live server would look silent to others."""
    async def body(store: BillingStore):
        asked = time.time()
        with _writes(store, _stalled(0.3)):
            await store.heartbeat()
        async with store.db.read() as conn:
            stamped = (await conn.execute(sa.select(instances.c.heartbeat_at)
                                          .where(instances.c.id == store.instance_id))).scalar_one()
        assert stamped >= asked + 0.3

    run(database_url, body)


def test_after_a_database_stall_silent_servers_get_a_whole_stale_after_to_speak(database_url):
    """A stall (slow writes, not failing ones) held every server's heartbeats up: a judge whose own beat was
    slow does not take the others for gone until it has beaten well for stale_after again."""
    async def body(store: BillingStore):
        other, hold_id = await _held_by_another_host(store)
        async with store.db.write() as conn:
            await conn.execute(sa.update(instances).where(instances.c.id == other.instance_id)
                               .values(heartbeat_at=time.time() - 3600))
        store._beating_since = time.time() - 3600  # beating well for long before the stall
        with _writes(store, _stalled(0.5)):  # a third of stale_after and more
            await store.heartbeat()
        assert await store.reconcile() == 0
        async with store.db.read() as conn:
            assert (await conn.execute(sa.select(holds.c.status).where(holds.c.id == hold_id))).scalar_one() \
                == "open"

    run(database_url, body, stale_after_seconds=1.2)


def test_a_hold_whose_servers_row_is_gone_is_judged_by_silence_too(database_url):
    """A server dropped as silent that lives on places holds before its next beat writes its row again: such a
    hold goes only after a whole stale_after, and not once its server has spoken."""
    async def body(store: BillingStore):
        other, hold_id = await _held_by_another_host(store)
        async with store.db.write() as conn:
            await conn.execute(sa.delete(instances).where(instances.c.id == other.instance_id))
        store._beating_since = time.time() - 3600
        assert await store.reconcile() == 0  # placed just now
        async with store.db.write() as conn:
            await conn.execute(sa.update(holds).where(holds.c.id == hold_id).values(created_at=time.time() - 3600))
        await other.heartbeat()  # it speaks: its row is back, fresh
        assert await store.reconcile() == 0
        async with store.db.write() as conn:
            await conn.execute(sa.delete(instances).where(instances.c.id == other.instance_id))
        assert await store.reconcile() == 1  # silent, and for longer than stale_after: gone
        async with store.db.read() as conn:
            assert (await conn.execute(sa.select(holds.c.status).where(holds.c.id == hold_id))).scalar_one() \
                == "released"

    run(database_url, body, stale_after_seconds=60)


def test_a_server_that_speaks_before_its_hold_is_released_keeps_it(database_url):
    async def body(store: BillingStore):
        _, hold_id = await _held_by_another_host(store)
        # Judged silent a moment ago; it has beaten since: the release must not go through.
        assert await store.release(hold_id, reason="server_lost", silent_since=time.time() - 60) is False
        async with store.db.read() as conn:
            assert (await conn.execute(sa.select(holds.c.status))).scalar_one() == "open"

    run(database_url, body)


def test_heartbeat_keeps_a_live_servers_holds(database_url):
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=1000)
        hold_id, _, _ = await store.place_hold(meta(account.id, 10), key_id=None)
        async with store.db.write() as conn:
            await conn.execute(sa.update(holds).values(expires_at=time.time() + 1))
        await store.heartbeat()
        async with store.db.read() as conn:
            expires = (await conn.execute(sa.select(holds.c.expires_at))).scalar_one()
        assert expires > time.time() + 3000
        assert await store.reconcile() == 0

    run(database_url, body)


def test_heartbeat_extends_only_holds_this_process_still_runs(database_url):
    """A hold whose settlement was given up on must expire (and be released) while its server goes on beating."""
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=1000)
        live, _, _ = await store.place_hold(meta(account.id, 10, "live"), key_id=None)
        orphan, _, _ = await store.place_hold(meta(account.id, 10, "orphan"), key_id=None)
        store.let_expire(orphan)
        async with store.db.write() as conn:
            await conn.execute(sa.update(holds).values(expires_at=time.time() + 0.2))
        await asyncio.sleep(0.3)
        await store.heartbeat()
        assert await store.reconcile() == 1
        async with store.db.read() as conn:
            return dict((await conn.execute(sa.select(holds.c.request_id, holds.c.status))).all())

    assert run(database_url, body) == {"live": "open", "orphan": "released"}


def test_error_codes_are_cut_to_the_column(database_url):
    """An upstream's numeric or overlong error code must not fail the settlement (PostgreSQL checks lengths)."""
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=1_000_000)
        for request_id, code in (("int", 500), ("long", "x" * 100)):
            hold_id, usage_id, _ = await store.place_hold(meta(account.id, 100, request_id), key_id=None)
            await store.settle(hold_id=hold_id, usage_id=usage_id, cost_micro=0, delivered=0, usage=Usage(),
                               latency_ms=1, status="error", error_code=code)  # type: ignore[arg-type]
        await store.log_refused(meta(account.id, 0, "refused"), "y" * 100)
        return {r["request_id"]: r["error_code"] for r in await store.usage("acme")}, await store.totals("acme")

    codes, totals = run(database_url, body)
    assert codes == {"int": "500", "long": "x" * 64, "refused": "y" * 64}
    assert totals["open_holds"] == 0 and totals["held"] == 0


def test_same_host_replicas_in_other_pid_namespaces_keep_each_others_holds(database_url):
    """Two containers on one host (host networking: one hostname), each PID 1 in its own PID namespace: a PID
    says nothing across namespaces, so only a stale heartbeat may free the other's holds."""
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=1_000_000)
        db = store.db

        async def replica(pid: int, namespace: str | None, boot_id: str | None) -> BillingStore:
            other = BillingStore(db)
            other.pid, other.pid_namespace, other.boot_id = pid, namespace, boot_id
            await other.register()
            return other

        store.pid_namespace, store.boot_id = "pid:[4026532001]", "boot-1"  # the one reconciling at the end
        a = await replica(1, "pid:[4026532001]", "boot-1")
        b = await replica(1, "pid:[4026532002]", "boot-1")
        before_reboot = await replica(_dead_pid(), "pid:[4026532001]", "boot-0")
        unknown = await replica(_dead_pid(), None, None)  # no /proc to tell
        held = {}
        for name, other in (("a", a), ("b", b), ("before_reboot", before_reboot), ("unknown", unknown)):
            held[name] = await other.place_hold(meta(account.id, 1000, name), key_id=None)
        assert await b.reconcile() == 0 and await a.reconcile() == 0 and await store.reconcile() == 0
        charged, _ = await settle(a, held["a"][0], held["a"][1], 1000)
        assert charged == 1000  # A's delivered image is paid for
        # B stops beating, while A's own heartbeats go on: now B's holds go.
        async with db.write() as conn:
            await conn.execute(sa.update(instances).where(instances.c.id == b.instance_id)
                               .values(heartbeat_at=time.time() - 3600))
        a._beating_since = time.time() - 3600
        assert await a.reconcile() == 1
        async with db.read() as conn:
            row = (await conn.execute(sa.select(instances).where(instances.c.id == a.instance_id))).one()
            assert (row.pid_namespace, row.boot_id) == ("pid:[4026532001]", "boot-1")
            return dict((await conn.execute(sa.select(holds.c.request_id, holds.c.status))).all())

    status = run(database_url, body, stale_after_seconds=60)
    assert status == {"a": "settled", "b": "released", "before_reboot": "open", "unknown": "open"}


def test_twin_top_ups_under_one_idempotency_key_credit_once(database_url):
    async def body(store: BillingStore):
        await store.create_account("acme", balance_micro=0)
        results = await asyncio.gather(*(store.topup("acme", 1000, "inv", idempotency_key="k") for _ in range(4)))
        assert sorted(replayed for _, replayed in results) == [False, True, True, True]
        assert all(account.balance_micro == 1000 for account, _ in results)
        with pytest.raises(Conflict):
            await store.topup("acme", 2000, "inv", idempotency_key="k")
        await store.topup("acme", 1000, "inv")  # no key: every call credits
        other = await store.create_account("other", balance_micro=0)
        account, replayed = await store.topup("other", 1000, "inv", idempotency_key="k")  # keys are per account
        assert (account.id, account.balance_micro, replayed) == (other.id, 1000, False)
        return await store.totals("acme")

    totals = run(database_url, body)
    assert totals["balance"] == totals["topup"] == 2000
    check_invariants(totals)


def test_a_hold_whose_commit_was_never_heard_of_is_given_back_and_frees_its_key(database_url):
    """The hold committed but its reply was lost (a dropped connection): the client's retry with the same
    Idempotency-Key must not be turned away until the hold expires an hour later."""
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=1_000_000)
        claim = ("acct:1", "k", "hash")
        def reply_lost(real_write):
            async def write(*args, **kw):
                await real_write(*args, **kw)
                raise OSError("connection reset")
            return write

        with _writes(store, reply_lost), pytest.raises(OSError):
            await store.place_hold(meta(account.id, 100, "first"), key_id=None, idem=claim)
        deadline = time.monotonic() + 5
        while True:  # the hold is given back in the background, a moment later
            try:
                _, _, available = await store.place_hold(meta(account.id, 100, "retry"), key_id=None, idem=claim)
                break
            except IdempotencyTaken:
                assert time.monotonic() < deadline, "the key stays taken"
                await asyncio.sleep(0.05)
        assert available == 1_000_000 - 100  # the first hold is given back, not counted twice
        rows = {r["request_id"]: (r["status"], r["error_code"]) for r in await store.usage("acme")}
        assert rows == {"first": ("error", "not_started"), "retry": ("running", None)}

    run(database_url, body)


def test_a_settlements_retry_leaves_a_newer_twins_claim_alone(database_url):
    """Unmetered: the first settlement dropped its failed request's claim, but its answer was lost; a twin took
    the key meanwhile. The settlement's retry must not drop the twin's claim (a third request would run too)."""
    async def body(store: BillingStore):
        claim = ("static:x", "k", "hash")
        first = await store.open_usage(meta(None, 0, "first"), idem=claim)
        failed = dict(hold_id=None, usage_id=first, cost_micro=0, delivered=0, usage=Usage(), latency_ms=5,
                      status="error", error_code="engine_error", idem=(*claim[:2], "first"), idem_result=None)
        await store.settle(**failed)
        await store.open_usage(meta(None, 0, "twin"), idem=claim)  # the key is free: the twin claims it
        await store.settle(**failed)  # the retry
        record = await store.idempotency_record(*claim[:2])
        assert record is not None and (record.state, record.request_id) == ("running", "twin")
        with pytest.raises(IdempotencyTaken):
            await store.open_usage(meta(None, 0, "third"), idem=claim)

    run(database_url, body)


def test_an_expired_idempotency_record_can_be_claimed_again(database_url):
    async def body(store: BillingStore):
        account = await store.create_account("acme", balance_micro=1_000_000)
        claim = ("acct:1", "k", "hash")
        hold_id, usage_id, _ = await store.place_hold(meta(account.id, 100, "first"), key_id=None, idem=claim)
        await settle(store, hold_id, usage_id, 100, idem=(*claim[:2], "first"), idem_result={"status": 200})
        async with store.db.write() as conn:
            await conn.execute(sa.update(idempotency).values(expires_at=time.time() - 1))
        assert await store.idempotency_record("acct:1", "k") is None  # past its time: as if never there
        await store.place_hold(meta(account.id, 100, "second"), key_id=None, idem=claim)  # not IdempotencyTaken
        record = await store.idempotency_record("acct:1", "k")
        assert (record.state, record.request_id) == ("running", "second")

    run(database_url, body)
