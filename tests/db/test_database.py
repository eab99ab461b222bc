"""The ways into the database: one-hop transactions (run_write / run_read) that roll back whole, SQLite writers
taking turns within a process (the writer thread) and across processes (flock of the lock file), async write
blocks queueing with them, and dispose ending every thread."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.pool
from sqlalchemy.engine import make_url

from imagegate.db import (
    _PG_MIGRATION_LOCK, LOCK_SUFFIX, SCHEMA_HEAD, Database, is_transient, no_turn_to_write, opened,
)
from imagegate.db.schema import accounts
from tests.db.backends import PG_URL, fresh_url, open_store
from tests.db.test_ledger import check_invariants


def _insert_account(conn, name: str) -> None:
    conn.execute(sa.insert(accounts).values(name=name, group_name="default", balance_micro=0, held_micro=0,
                                            created_at=time.time()))


def _names(conn) -> list[str]:
    return list(conn.execute(sa.select(accounts.c.name).order_by(accounts.c.id)).scalars())


def _sqlite(tmp_path) -> tuple[str, Path]:
    """(URL, lock file) of a fresh SQLite database."""
    url, _ = fresh_url("sqlite", tmp_path)
    return url, tmp_path / f"test-imagegate.db{LOCK_SUFFIX}"


def test_queued_writes_commit_together_and_a_failing_one_is_undone_alone(tmp_path):
    url, _ = _sqlite(tmp_path)
    commits = []

    def insert_or_fail(conn, i: int) -> int:
        _insert_account(conn, f"acct-{i}")
        if i % 5 == 0:
            raise ValueError(f"job {i} refused")
        return i

    async def main():
        async with opened(url) as db:
            sa.event.listen(db._sqlite.engine, "commit", lambda conn: commits.append(1))
            outcomes = await asyncio.gather(*(db.run_write(insert_or_fail, i) for i in range(40)),
                                            return_exceptions=True)
            return outcomes, await db.run_read(_names)

    outcomes, names = asyncio.run(main())
    for i, outcome in enumerate(outcomes):
        if i % 5 == 0:
            assert isinstance(outcome, ValueError) and str(outcome) == f"job {i} refused"
        else:
            assert outcome == i
    assert sorted(names) == sorted(f"acct-{i}" for i in range(40) if i % 5)
    assert len(commits) < 40  # they went in shared transactions


def test_a_database_error_in_a_batch_never_reports_a_lost_write_as_committed(tmp_path):
    # SQLite rolls the whole transaction back on some errors (disk full here): a savepoint cannot undo just the
    # failing write then, so the batch is run again one write at a time.
    url, _ = _sqlite(tmp_path)

    async def main():
        db = Database(url)
        await db.run_write(lambda conn: conn.exec_driver_sql("CREATE TABLE t (v TEXT)"))
        gate = threading.Event()

        def insert(conn, value: str) -> str:
            conn.exec_driver_sql("INSERT INTO t VALUES (?)", (value,))
            return value

        def fill_the_disk(conn) -> None:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            conn.exec_driver_sql(f"PRAGMA max_page_count={pages + 2}")
            conn.exec_driver_sql("INSERT INTO t VALUES (?)", ("x" * 100_000,))

        busy = asyncio.create_task(db.run_write(lambda conn: gate.wait()))
        await asyncio.sleep(0.1)  # the writer is busy: the next three queue up as one batch
        batch = [asyncio.create_task(db.run_write(insert, "one")), asyncio.create_task(db.run_write(fill_the_disk)),
                 asyncio.create_task(db.run_write(insert, "two"))]
        await asyncio.sleep(0.1)
        gate.set()
        await busy
        outcomes = await asyncio.gather(*batch, return_exceptions=True)
        rows = await db.run_read(lambda conn: [r[0] for r in conn.exec_driver_sql("SELECT v FROM t ORDER BY v")])
        await db.dispose()
        return outcomes, rows

    outcomes, rows = asyncio.run(main())
    assert outcomes[0] == "one" and outcomes[2] == "two" and isinstance(outcomes[1], sa.exc.OperationalError)
    assert rows == ["one", "two"]


def test_run_write_rolls_back_whole_when_its_function_raises(database_url):
    def half_then_fail(conn) -> None:
        _insert_account(conn, "half")
        raise ValueError("boom")

    async def main():
        async with opened(database_url) as db:
            with pytest.raises(ValueError, match="boom"):
                await db.run_write(half_then_fail)
            await db.run_write(_insert_account, "whole")  # the writer is free again
            return await db.run_read(_names)

    assert asyncio.run(main()) == ["whole"]


def test_writers_wait_for_the_file_lock_another_process_holds(tmp_path):
    """The lock file is the turn among processes: while someone else holds it, no write of ours begins."""
    url, lock_path = _sqlite(tmp_path)

    async def main():
        async with opened(url) as db:
            await hold_the_lock_meanwhile(db)

    async def hold_the_lock_meanwhile(db: Database) -> None:
        async def block() -> None:
            async with db.write() as conn:
                await conn.execute(sa.insert(accounts).values(name="b", group_name="default", created_at=time.time()))

        fd = os.open(lock_path, os.O_RDONLY)  # an open file of its own: to flock, as good as another process
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            write = asyncio.create_task(db.run_write(_insert_account, "a"))
            await asyncio.sleep(0.05)
            held = asyncio.create_task(block())
            await asyncio.sleep(0.3)
            assert not write.done() and not held.done()
            assert await db.run_read(_names) == []  # reads do not wait
            fcntl.flock(fd, fcntl.LOCK_UN)
            await asyncio.wait_for(asyncio.gather(write, held), 10)
            assert await db.run_read(_names) == ["a", "b"]
            for _ in range(100):  # let go of afterwards, too (the writer thread lets go just after the block ends)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            else:
                raise AssertionError("the writer kept the file lock")
        finally:
            os.close(fd)

    asyncio.run(main())


def test_a_writer_that_gets_no_turn_in_time_hears_database_is_locked_and_its_write_never_runs(tmp_path):
    """A process that hangs holding the lock file stalls nobody for ever: queued writes (and write blocks) fail
    after the write timeout, as SQLite's own busy timeout would, and those given up on never run later."""
    url, lock_path = _sqlite(tmp_path)

    async def main():
        async with opened(url, write_timeout=0.5) as db:
            fd = os.open(lock_path, os.O_RDONLY)  # as good as another process: flock is per open file
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                started = time.monotonic()
                with pytest.raises(sa.exc.OperationalError, match="database is locked") as given_up:
                    await db.run_write(_insert_account, "given up")
                assert 0.4 < time.monotonic() - started < 5 and no_turn_to_write(given_up.value)
                with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                    async with db.write():
                        raise AssertionError("a block that got no turn must not run")
            finally:
                os.close(fd)  # the hung process goes: its lock with it
            await asyncio.wait_for(db.run_write(_insert_account, "after"), 10)
            return await db.run_read(_names)

    assert asyncio.run(main()) == ["after"]


def test_a_write_block_holds_the_writers_turn_while_it_awaits(tmp_path):
    url, lock_path = _sqlite(tmp_path)

    async def main():
        async with opened(url) as db:
            async with db.write() as conn:
                await conn.execute(sa.insert(accounts).values(name="block", group_name="default",
                                                              created_at=time.time()))
                queued = asyncio.create_task(db.run_write(_insert_account, "queued"))
                await asyncio.sleep(0.2)  # awaiting inside the block: nothing deadlocks, the writer just waits
                assert not queued.done()
                fd = os.open(lock_path, os.O_RDONLY)
                try:
                    with pytest.raises(BlockingIOError):  # other processes wait too
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                finally:
                    os.close(fd)
            await asyncio.wait_for(queued, 10)
            return await db.run_read(_names)

    assert asyncio.run(main()) == ["block", "queued"]


def test_a_write_block_cancelled_while_waiting_for_its_turn_gives_it_up(tmp_path):
    url, _ = _sqlite(tmp_path)

    async def main():
        async with opened(url) as db:

            async def waiting() -> None:
                async with db.write():
                    raise AssertionError("a cancelled block must not run")

            async with db.write():
                task = asyncio.create_task(waiting())
                await asyncio.sleep(0.1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await asyncio.wait_for(db.run_write(_insert_account, "after"), 10)
            return await db.run_read(_names)

    assert asyncio.run(main()) == ["after"]


def test_dispose_ends_the_threads_and_closes_the_lock_file(tmp_path):
    url, lock_path = _sqlite(tmp_path)
    before = set(threading.enumerate())

    def ours() -> list[str]:
        return [t.name for t in set(threading.enumerate()) - before if t.name.startswith("imagegate-db")]

    def lock_files_open() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(lock_path.resolve()))

    async def main():
        db = Database(url)
        await db.upgrade()
        await asyncio.gather(db.run_write(_insert_account, "a"), *(db.run_read(_names) for _ in range(8)))
        async with db.write():
            pass
        assert ours() and lock_files_open() == 1
        await db.dispose()
        return ours(), lock_files_open()

    assert asyncio.run(main()) == ([], 0)


_WORKER = """
import asyncio, sys
from imagegate.billing.store import BillingStore, UsageMeta
from imagegate.catalog.tokens import Usage
from imagegate.db import Database

url, tag = sys.argv[1], sys.argv[2]
account_id, key_id, pairs, quote, cost = map(int, sys.argv[3:])


async def main():
    db = Database(url)
    store = BillingStore(db)
    await store.register()
    print("ready", flush=True)
    sys.stdin.readline()

    async def worker(w):
        for i in range(pairs // 8):
            meta = UsageMeta(request_id=f"{tag}-{w}-{i}", endpoint="images", model="gpt-image-1", engine="sandbox",
                             operation="generate", size="1024x1024", quality="low", stream=False, n_asked=1,
                             key_prefix="sk-ig-test00", account_id=account_id, metered=True, quote_micro=quote)
            hold_id, usage_id, _ = await store.place_hold(meta, key_id=key_id, idem=("acct", meta.request_id, "h"))
            await store.settle(hold_id=hold_id, usage_id=usage_id, cost_micro=cost, delivered=1, usage=Usage(),
                               latency_ms=1, status="ok", error_code=None, idem=("acct", meta.request_id, meta.request_id),
                               idem_result={"status": 200})

    try:
        await asyncio.gather(*(worker(w) for w in range(8)))
        await store.unregister()
    finally:
        await db.dispose()


asyncio.run(main())
"""


def test_dispose_ends_even_while_another_process_holds_the_lock_for_good(tmp_path, caplog):
    """Shutdown must end: a writer stuck waiting for a lock another process never lets go is left behind after
    the write timeout (it held the server's exit for as long as the lock was held)."""
    url, lock_path = _sqlite(tmp_path)

    async def main():
        db = Database(url, write_timeout=0.5)
        await db.upgrade()
        fd = os.open(lock_path, os.O_RDONLY)  # as good as another process: flock is per open file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                await db.run_write(_insert_account, "given up")
            started = time.monotonic()
            await asyncio.wait_for(db.dispose(), 10)
            return time.monotonic() - started
        finally:
            os.close(fd)

    assert asyncio.run(main()) < 5
    assert "the database writer still waits for its turn" in caplog.text


def test_processes_sharing_the_database_settle_exactly(database_url):
    """Server processes (``serve --workers``) on one database, each with eight requests in flight at a time: every
    hold and settlement lands, none fails on a locked database, and the books balance to the micro-dollar."""
    processes, pairs, quote, cost = 3, 96, 10_000, 7_000

    async def prepare():
        async with open_store(database_url) as store:
            account = await store.create_account("acme", balance_micro=10**9)
            key, _ = await store.create_key("acme")
            return account.id, key.id

    account_id, key_id = asyncio.run(prepare())
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, database_url, f"p{n}", *map(str, (account_id, key_id, pairs, quote, cost))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in range(processes)
    ]
    try:
        assert [w.stdout.readline().strip() for w in workers] == ["ready"] * processes
        for w in workers:  # all at once
            w.stdin.write("go\n")
            w.stdin.flush()
        for w in workers:
            _, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
    finally:
        for w in workers:
            w.kill()

    async def audit():
        async with open_store(database_url) as store:
            return await store.totals("acme"), (await store.keys("acme"))[0], len(await store.usage("acme", 10_000))

    totals, key, rows = asyncio.run(audit())
    charged = processes * pairs * cost
    assert rows == processes * pairs
    assert totals["balance"] == 10**9 - charged and totals["settle"] == totals["usage_cost"] == charged
    assert totals["held"] == totals["open_holds"] == 0
    assert key.spent_micro == charged and key.held_micro == 0
    check_invariants(totals)


def _synchronous(conn) -> int:
    return conn.exec_driver_sql("PRAGMA synchronous").scalar_one()


def test_a_write_that_need_not_survive_a_power_cut_skips_the_sync_and_the_next_durable_one_syncs(tmp_path):
    """A hold need not survive a power cut (its request does not either): its commit is written, not synced, and is
    at once what everyone reads; every other write is synced (synchronous=FULL, 2), and with it whatever came
    before it in the log."""
    url, _ = _sqlite(tmp_path)

    async def main():
        async with opened(url) as db:
            await db.run_write(_insert_account, "hold-like", durable=False)
            assert await db.run_write(_synchronous, durable=False) == 1  # NORMAL
            assert await db.run_read(_names) == ["hold-like"]
            await db.run_write(_insert_account, "settle-like")
            assert await db.run_write(_synchronous) == 2  # FULL again
        with sqlite3.connect(make_url(url).database) as other:  # what another process sees
            assert [r[0] for r in other.execute("SELECT name FROM accounts ORDER BY id")] == ["hold-like",
                                                                                             "settle-like"]

    asyncio.run(main())


def _fails(conn, kind: str) -> None:
    if kind == "integrity":
        _insert_account(conn, "taken")  # a second time: the name is unique
    else:
        conn.exec_driver_sql("SELECT * FROM no_such_table")


@pytest.mark.parametrize("kind", ["integrity", "operational"])
def test_a_durable_write_after_a_failed_unsynced_one_is_synced(tmp_path, kind):
    url, _ = _sqlite(tmp_path)

    async def main():
        async with opened(url) as db:
            await db.run_write(_insert_account, "taken")
            with pytest.raises(sa.exc.DBAPIError):
                await db.run_write(_fails, kind, durable=False)
            assert await db.run_write(_synchronous) == 2  # FULL, whatever connection the writer is on now
            assert await db.run_write(_synchronous, durable=False) == 1
            assert await db.run_write(_synchronous) == 2

    asyncio.run(main())


def test_a_write_that_has_begun_is_waited_for_past_the_write_timeout(tmp_path):
    """The timeout is for the wait for a turn: a transaction that takes longer than it still reports its outcome,
    so a caller never hears "failed" about a write that then commits."""
    url, _ = _sqlite(tmp_path)

    def slow_insert(conn, name: str) -> str:
        time.sleep(0.8)
        _insert_account(conn, name)
        return name

    async def main():
        async with opened(url, write_timeout=0.3) as db:
            assert await db.run_write(slow_insert, "slow") == "slow"
            return await db.run_read(_names)

    assert asyncio.run(main()) == ["slow"]


_NEEDS_PG = pytest.mark.skipif(not PG_URL, reason="IMAGEGATE_TEST_DATABASE_URL is not set")


@_NEEDS_PG
def test_a_postgresql_migration_waits_past_the_statement_timeout_for_another_processes(tmp_path):
    """Statements time out with the write timeout, but not a migration, nor the wait for another process's."""
    url, drop = fresh_url("postgresql", tmp_path)

    async def main():
        other = sa_async.create_async_engine(url, poolclass=sa.pool.NullPool)
        db = Database(url, write_timeout=0.3)
        try:
            async with other.begin() as conn:  # another process, migrating: it holds the lock for a while
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                waiting = asyncio.create_task(db.upgrade())
                await asyncio.sleep(1.0)
                assert not waiting.done()
            await asyncio.wait_for(waiting, 60)
            return await db.revision()
        finally:
            await db.dispose()
            await other.dispose()

    try:
        assert asyncio.run(main()) == SCHEMA_HEAD
    finally:
        drop()


@_NEEDS_PG
def test_postgresql_pools_are_sized_by_the_setting_and_statements_cannot_hang(tmp_path):
    """With `--workers N` every process has its pool: its size is the operator's to fit max_connections."""
    url, drop = fresh_url("postgresql", tmp_path)

    async def main():
        db = Database(url, write_timeout=0.5, pool_size=3)
        try:
            assert db.engine.pool.size() == 3
            started = time.monotonic()
            with pytest.raises(TimeoutError) as timed_out:  # a statement that does not answer (a silent network)
                async with db.engine.connect() as conn:
                    await conn.execute(sa.text("SELECT pg_sleep(10)"))
            assert time.monotonic() - started < 5
            assert is_transient(timed_out.value)  # a 503 database_unavailable, and settlements retry it
        finally:
            await db.dispose()

    try:
        asyncio.run(main())
    finally:
        drop()
