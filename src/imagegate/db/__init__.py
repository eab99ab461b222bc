"""The database: SQLAlchemy engines, Alembic migrations, and the ways in.

The billing store writes each transaction as one plain function of a sync ``Connection`` and runs it in one hop
off the event loop: ``run_write(fn, *args)``, ``run_read(fn, *args)``. Through the async driver every statement
was a hop of its own (about 1 ms each on aiosqlite), and a hold or a settlement is some seven statements.

SQLite is the default (a file in the data dir, WAL journal). Its writers are serialised: a write transaction
starts with ``BEGIN IMMEDIATE``, so two requests placing holds on the same account queue on the database lock
instead of deadlocking on a lock upgrade. Left to the database, waiting writers sleep in SQLite's busy handler,
whose back-off grows to 100 ms a try: under load most of a request's time went there. So this process's writers
take turns on one writer thread, and the processes sharing the file (``serve --workers``) take turns on an
exclusive ``flock`` of a lock file beside it, waiting in the kernel, which wakes the next one as soon as the lock
is free. The busy timeout stays for writers that take no such lock (the sqlite3 shell). Reads run on a few threads
of their own: WAL readers do not wait for the writer. ``read()`` and ``write()`` still hand out async (aiosqlite)
connections to code that wants one; a ``write()`` block holds the writer's turn while it runs.

PostgreSQL (``postgresql+asyncpg://``) runs the same functions on its async engine through SQLAlchemy's greenlet
bridge (``AsyncConnection.run_sync``), at READ COMMITTED; the billing code never reads a balance and writes it
back, it uses conditional ``UPDATE ... RETURNING`` statements, which PostgreSQL re-checks against the committed
row after waiting on its lock.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from imagegate.config import DB_FILE, WRITE_TIMEOUT_S, ConfigError

LOCK_SUFFIX = ".writelock"  # imagegate.db.writelock: the file whose flock is the turn to write
_MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration (tests check it against alembic's own reading of migrations/versions): a database already
# there is not handed to alembic at start.
SCHEMA_HEAD = "0003"
# Any number, the same in every process: serialises concurrent `upgrade` runs against one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x1A6E6A7E
log = logging.getLogger("imagegate.db")
_SQLITE_READERS = 4
# Errors of a database that is away or busy, by the driver's own code: sqlite3 raises OperationalError for a missing
# table as for a locked file, and asyncpg's errors all reach SQLAlchemy as plain DBAPIError.
_SQLITE_TRANSIENT = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_IOERR,
                     sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL}
# SQLSTATE classes: connection exception, transaction rollback (deadlock, serialization), insufficient resources,
# operator intervention (shutdown), system error; and lock_not_available.
_PG_TRANSIENT_CLASSES = {"08", "40", "53", "57", "58"}


class NoTurnToWrite(sqlite3.OperationalError):
    """SQLite: the turn to write was held elsewhere for the whole write timeout; the write never began."""


def no_turn_to_write(exc: BaseException) -> bool:
    return isinstance(getattr(exc, "orig", None), NoTurnToWrite)


def is_transient(exc: BaseException) -> bool:
    """The database is away or busy (a dropped connection, a lock held too long, a deadlock, no pooled connection
    in time): the transaction never began or rolled back whole, and the same request may succeed later. Anything
    else (a taken key, a missing table, a bad statement) would fail the same way again."""
    if isinstance(exc, (InterfaceError, PoolTimeout, TimeoutError)):  # TimeoutError: asyncpg's command_timeout
        return True
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if exc.connection_invalidated or isinstance(orig, (NoTurnToWrite, OSError)):  # OSError: the connection broke
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_TRANSIENT  # the primary code; the extended one is in the high bits
    state = getattr(orig, "sqlstate", None) or ""
    return state[:2] in _PG_TRANSIENT_CLASSES or state == "55P03"

T = TypeVar("T")


def resolve_url(database_url: str, data_dir: Path) -> str:
    """The async URL to use: the configured one (sync spellings are upgraded), else SQLite in the data dir."""
    if not database_url:
        return f"sqlite+aiosqlite:///{(data_dir / DB_FILE).resolve()}"
    try:
        url = make_url(database_url)
    except Exception:
        raise ConfigError(f"bad setting 'database_url': cannot parse {database_url!r}") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
    else:
        raise ConfigError(f"bad setting 'database_url': {backend!r} is not supported; use sqlite or postgresql")
    return url.render_as_string(hide_password=False)


class Database:
    def __init__(self, url: str, *, write_timeout: float = WRITE_TIMEOUT_S, pool_size: int = 10) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._sqlite: _SqliteThreads | None = None
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(
                # timeout: SQLite's busy timeout, for writers that take no turn through the lock file
                url, connect_args={"timeout": write_timeout}, pool_size=8, max_overflow=8, pool_timeout=60
            )
            _sqlite_setup(self.engine.sync_engine)
            self._sqlite = _SqliteThreads(parsed.set(drivername="sqlite+pysqlite"), f"{database}{LOCK_SUFFIX}",
                                          write_timeout)
        else:
            # pool_size connections per server process, as many again at a peak: with `--workers N`, N times that
            # (PostgreSQL's max_connections is 100 by default). No statement waits for ever on a silent network.
            connect_args = {"command_timeout": write_timeout} if parsed.get_driver_name() == "asyncpg" else {}
            self.engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                                              pool_timeout=60, connect_args=connect_args)
        self._writer = self.engine.execution_options(imagegate_write=True)

    async def run_write(self, fn: Callable[..., T], *args: Any, durable: bool = True) -> T:
        """``fn(connection, *args)`` as one write transaction: committed when it returns, rolled back if it raises.
        ``fn`` runs on another thread (SQLite) or inside the event loop's greenlet bridge (PostgreSQL): it must
        only use the connection, not touch state that the event loop's code shares.

        ``durable=False``: on SQLite the commit is not synced to disk before it returns (a power cut may undo it,
        a crash of the process cannot); a later durable commit syncs it too. For what a power cut makes moot
        anyway: a request's hold dies with the server that placed it."""
        if self._sqlite is None:
            async with self._writer.begin() as conn:
                return await conn.run_sync(fn, *args)
        return await self._sqlite.write(fn, args, durable)

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in one transaction that is rolled back afterwards: on SQLite a snapshot; on
        PostgreSQL READ COMMITTED unless ``fn`` sets another isolation level before its first statement."""
        if self._sqlite is None:
            async with self.engine.connect() as conn:
                return await conn.run_sync(fn, *args)
        return await self._sqlite.read(fn, args)

    def read(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """An async connection for reads (and read-only transactions)."""
        return self.engine.connect()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction on an async connection: committed when the block ends, rolled back if it raises.

        On SQLite the block holds the writer's turn - the writer thread and the file lock - until it ends, so it
        queues with ``run_write`` and with other processes; a ``run_write`` awaited inside the block would wait for
        the block itself.
        """
        if self._sqlite is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        async with self._sqlite.turn():
            async with self._writer.begin() as conn:
                yield conn

    async def upgrade(self) -> None:
        if await self.revision() == SCHEMA_HEAD:
            return  # the usual start: read without taking the turn to write (a hung writer cannot stall it)
        if self._sqlite is None:
            # Not on the pool, whose statements time out with the write timeout: a migration (an index on a big
            # table), or the wait for another process's, takes as long as it takes.
            patient = create_async_engine(self.url, poolclass=NullPool)
            try:
                async with patient.begin() as conn:
                    await conn.run_sync(_alembic_upgrade)
            finally:
                await patient.dispose()
        else:
            # Another process may be migrating the same file: wait for it however long that takes (the write
            # timeout is for requests).
            await self._sqlite.write(_alembic_upgrade, (), patient=True)

    async def revision(self) -> str | None:
        """The schema revision the database is at (None: not created yet)."""
        return await self.run_read(_at_revision)

    async def dispose(self) -> None:
        """Close every connection; on SQLite also wait for the writer and reader threads to finish and end."""
        if self._sqlite is not None:
            await asyncio.to_thread(self._sqlite.close)
        await self.engine.dispose()


class Prebuilt:
    """A statement built once, for the transactions every request makes. On SQLite it runs straight through the
    sqlite3 cursor, its SQL compiled once per set of parameter names: SQLAlchemy's execution path costs several
    times what SQLite takes to run such a statement (about 0.04-0.15 ms against 0.01), and a hold or a settlement
    is five or six of them. Elsewhere (PostgreSQL) it runs through SQLAlchemy like any statement. Its values go to
    the driver as they are: columns of plain types only (integers, floats, strings, booleans); a list of parameter
    sets (executemany) must name the same parameters in each."""

    __slots__ = ("statement", "_sqlite")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._sqlite: dict[frozenset[str], tuple[str, tuple[str, ...], dict[str, Any]]] = {}

    def __call__(self, conn: sa.Connection, params: dict[str, Any] | list[dict[str, Any]]) -> Any:
        if conn.dialect.name != "sqlite":
            return conn.execute(self.statement, params)
        many = isinstance(params, list)
        first = params[0] if many else params
        names = frozenset(first)
        compiled = self._sqlite.get(names)
        if compiled is None:
            built = self.statement.compile(dialect=conn.dialect, column_keys=sorted(names))
            # Values the statement holds itself (state = 'done') are bound parameters too; one the caller must give
            # and did not is a KeyError, as a programming error should be, not a database failure.
            own = {name: bind.effective_value for name, bind in built.binds.items() if not bind.required}
            compiled = self._sqlite[names] = (str(built), tuple(built.positiontup), own)
        sql, order, own = compiled
        driver = conn.connection.driver_connection
        try:
            if many:
                driver.executemany(sql, [tuple(p[n] if n in p else own[n] for n in order) for p in params])
                return None
            return _Rows(driver.execute(sql, tuple(first[n] if n in first else own[n] for n in order)))
        except sqlite3.Error as exc:
            # As SQLAlchemy would raise it: callers tell a taken key (IntegrityError) from a failing database.
            raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc


class _Rows:
    """What the billing code reads of a result: ``first()``, ``one()``, ``scalar_one()``, rows by column name."""

    __slots__ = ("cursor",)
    _shapes: dict[tuple[str, ...], type] = {}

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def first(self) -> Any:
        row = self.cursor.fetchone()
        description = self.cursor.description
        self.cursor.close()  # the statement is done with (an UPDATE ... RETURNING made its changes on the first row)
        if row is None or description is None:
            return row
        names = tuple(column[0] for column in description)
        shape = self._shapes.get(names)
        if shape is None:
            shape = self._shapes[names] = collections.namedtuple("Row", names)  # type: ignore[misc]
        return shape(*row)

    def one(self) -> Any:
        row = self.first()
        if row is None:
            raise sa.exc.NoResultFound("No row was found when one was required")
        return row

    def scalar_one(self) -> Any:
        return self.one()[0]


class _BatchBroken(Exception):
    """A job in a shared transaction met a database error: the batch is abandoned whole."""


@dataclass
class _WriteJob:
    fn: Callable[..., Any]
    args: tuple
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    durable: bool = True
    started: bool = False  # its transaction has begun: it is no longer given up on (see _SqliteThreads.write)


def _settle_future(future: asyncio.Future, outcome: tuple[bool, Any]) -> None:
    if not future.done():  # cancelled, or given up on (write_timeout): nobody is waiting
        if outcome[0]:
            future.set_result(outcome[1])
        else:
            future.set_exception(outcome[1])


class _WriterThread:
    """One daemon thread running what is submitted, in order: a one-thread ThreadPoolExecutor, save that shutdown
    can leave it behind. It may be stuck in flock() on a lock another process holds for good; an executor's
    thread would then hold up the server's exit forever (the interpreter joins it)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> "concurrent.futures.Future[T]":
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, timeout: float) -> bool:
        """Let what is queued run, for up to ``timeout`` seconds; whether the thread has ended."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


class _SqliteThreads:
    """A sync engine on the SQLite file, with its one writer thread and its reader threads."""

    def __init__(self, url: sa.URL, lock_path: str, write_timeout: float) -> None:
        # One connection per thread; each is used by one thread at a time, not always the one that opened it.
        self.engine = sa.create_engine(url, connect_args={"timeout": write_timeout, "check_same_thread": False},
                                       pool_size=_SQLITE_READERS + 1, max_overflow=0)
        _sqlite_setup(self.engine)
        self._writer = self.engine.execution_options(imagegate_write=True)
        self._write_thread = _WriterThread("imagegate-db-write")
        self._read_threads = ThreadPoolExecutor(_SQLITE_READERS, thread_name_prefix="imagegate-db-read")
        self._lock_path = lock_path
        self.write_timeout = write_timeout
        self._lock_fd: int | None = None  # opened by the writer thread on its first write, used only there
        # The writer thread's connection, kept from one transaction to the next: a pool checkout and its reset per
        # transaction cost more than the transaction's statements.
        self._conn: sa.Connection | None = None
        self._synced: bool | None = None  # whether its commits are synced to disk (None: not known, set it)
        self._queue: list[_WriteJob] = []  # writes waiting for the writer thread's next transaction
        self._queue_lock = threading.Lock()

    async def write(self, fn: Callable[..., T], args: tuple, durable: bool = True, *, patient: bool = False) -> T:
        """Queue ``fn`` for the writer thread. Writes that queue up while it is busy go together: one transaction
        (and one fsync, one turn of the file lock) for all of them, each in a savepoint of its own, so that one
        that raises is undone alone. A caller hears its result only once the whole transaction has committed.

        One whose transaction has not begun within ``write_timeout`` (the turn is held elsewhere) gets
        OperationalError ("database is locked"), and its job, given up on, never runs; one that has begun is waited
        for. ``patient``: no time limit."""
        loop = asyncio.get_running_loop()
        job = _WriteJob(fn, args, loop, loop.create_future(), durable)
        with self._queue_lock:
            self._queue.append(job)
            first = len(self._queue) == 1
        if first:  # otherwise a drain already queued will take this job too
            self._write_thread.submit(self._drain)
        if patient:
            return await job.future
        timer = loop.call_later(self.write_timeout, self._give_up, job)
        try:
            return await job.future
        finally:
            timer.cancel()

    def _give_up(self, job: _WriteJob) -> None:
        with self._queue_lock:  # against _begin_job: a job is either begun or given up on, never both
            if not job.started and not job.future.done():
                job.future.set_exception(self._locked())

    def _begin_job(self, job: _WriteJob) -> bool:
        """On the writer thread, inside the job's transaction: whether to run it (not cancelled, not given up on)."""
        with self._queue_lock:
            if job.future.done():
                return False
            job.started = True
            return True

    def _locked(self) -> DBAPIError:
        reason = NoTurnToWrite(
            f"database is locked: no turn to write within {self.write_timeout:g} s (another process, or a write() "
            f"block, holds {self._lock_path})"
        )
        return DBAPIError.instance("BEGIN IMMEDIATE", None, reason, sqlite3.Error)

    async def read(self, fn: Callable[..., T], args: tuple) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._read_threads, self._read, fn, args)

    def _drain(self) -> None:
        with self._queue_lock:
            jobs, self._queue = self._queue, []
        jobs = [job for job in jobs if not job.future.done()]  # given up on before it began: never run it
        if not jobs:
            return
        outcomes = self._together(jobs) if len(jobs) > 1 else None
        if outcomes is None:
            outcomes = [self._alone(job) for job in jobs]
        for job, outcome in zip(jobs, outcomes):
            try:
                job.loop.call_soon_threadsafe(_settle_future, job.future, outcome)
            except RuntimeError:  # its event loop is closed: nobody is waiting, the others still are
                continue

    def _alone(self, job: "_WriteJob") -> tuple[bool, Any]:
        try:
            with self._file_lock():
                if not self._begin_job(job):  # given up on while it waited for its turn
                    return False, asyncio.CancelledError()
                with self._transaction(job.durable) as conn:
                    return True, job.fn(conn, *job.args)
        except BaseException as exc:  # BEGIN, the job or COMMIT failed: none of it happened
            return False, exc

    @contextlib.contextmanager
    def _transaction(self, durable: bool) -> Iterator[sa.Connection]:
        """One write transaction on the writer thread's connection (BEGIN IMMEDIATE, see _begin), its commit synced
        to disk or, not ``durable``, only written (see Database.run_write)."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self._writer.connect()
            self._synced = None  # a pooled connection keeps whatever it was last set to: set it, whatever it is
        try:
            if durable != self._synced:
                _driver_execute(self._conn.connection.driver_connection,
                                f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._synced = durable
            with self._conn.begin():
                yield self._conn
        except IntegrityError:
            raise  # the job's own conflict (a taken idempotency key): rolled back, the connection is fine
        except DBAPIError:
            # The database failed, not the job: the next transaction starts on a fresh connection, and this one is
            # never handed out again.
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.invalidate()
            raise

    def _together(self, jobs: list["_WriteJob"]) -> list[tuple[bool, Any]] | None:
        """The jobs in one transaction, each in a savepoint: a job that raises is undone alone. None when a job
        met a database error: SQLite may have rolled back the whole transaction then (disk full, I/O error), and
        a savepoint cannot tell; nothing of the batch is kept and the caller runs the jobs one by one."""
        outcomes: list[tuple[bool, Any]] = [(False, asyncio.CancelledError())] * len(jobs)
        try:
            with self._file_lock():
                begun = [i for i, job in enumerate(jobs) if self._begin_job(job)]  # the rest were given up on
                if not begun:
                    return outcomes
                with self._transaction(any(jobs[i].durable for i in begun)) as conn:
                    for i in begun:
                        try:
                            with conn.begin_nested():
                                outcomes[i] = (True, jobs[i].fn(conn, *jobs[i].args))
                        except IntegrityError as exc:  # the job's own conflict: its savepoint undid it alone
                            outcomes[i] = (False, exc)
                        except DBAPIError:
                            raise _BatchBroken() from None
                        except Exception as exc:  # refused by the job's own logic (insufficient quota, ...)
                            outcomes[i] = (False, exc)
        except _BatchBroken:
            return None
        except BaseException as exc:  # BEGIN or COMMIT failed: none of it happened
            return [(False, exc)] * len(jobs)
        return outcomes

    def _read(self, fn: Callable[..., T], args: tuple) -> T:
        with self.engine.connect() as conn:
            return fn(conn, *args)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """This process's turn among the processes writing to the file. A process that dies holding it lets go."""
        if self._lock_fd is None:
            # Read-only is enough to flock, and lets a lock file made by another user (`sudo imagegate ...`) serve.
            self._lock_fd = os.open(self._lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """The writer's turn for an async block: the writer thread waits, holding the file lock, until it ends."""
        loop = asyncio.get_running_loop()
        taken = loop.create_future()
        ended = threading.Event()

        def hold() -> None:
            with self._file_lock():
                loop.call_soon_threadsafe(taken.set_result, None)
                ended.wait()

        job = asyncio.wrap_future(self._write_thread.submit(hold), loop=loop)
        try:
            await asyncio.wait((taken, job), timeout=self.write_timeout, return_when=asyncio.FIRST_COMPLETED)
            if not taken.done():
                if job.done():
                    job.result()  # it failed before the turn began: raise why
                raise self._locked()  # no turn within write_timeout
            yield
        finally:
            ended.set()
            job.cancel()  # still queued (the block was cancelled while waiting): never run it

    def close(self) -> None:
        """Let running and queued work finish, end the threads, close the connections and the lock file. A writer
        still waiting for its turn after ``write_timeout`` (another process holds the lock) is left behind, and
        what it waited to write is lost to this process: shutdown must end."""
        stuck = not self._write_thread.shutdown(self.write_timeout)
        if stuck:  # its connection and the lock file stay open: the thread still holds them
            log.error("the database writer still waits for its turn after %g s (another process holds %s); "
                      "closing without it", self.write_timeout, self._lock_path)
        self._read_threads.shutdown()
        if self._conn is not None and not stuck:
            self._conn.close()
            self._conn = None
        self.engine.dispose()
        if self._lock_fd is not None and not stuck:
            os.close(self._lock_fd)
            self._lock_fd = None


def head_revision() -> str:
    """The newest migration's revision, as alembic finds it in ``migrations/versions`` (``SCHEMA_HEAD`` must be
    the same: a test sees to it)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(_MIGRATIONS)).get_current_head() or ""


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _alembic_upgrade(connection) -> None:
    if _at_revision(connection) == SCHEMA_HEAD:
        return  # another process migrated it while this one waited; alembic (some 10 MB) stays unloaded
    from alembic import command

    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    quiet = logging.getLogger("alembic")
    if quiet.level == logging.NOTSET:  # its INFO lines on every start say nothing an operator needs
        quiet.setLevel(logging.WARNING)
    command.upgrade(_alembic_config(connection), "head")


def _at_revision(connection) -> str | None:
    """The revision alembic recorded, read without alembic (None: none recorded)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _driver_execute(driver: sqlite3.Connection, statement: str) -> None:
    """A statement straight to sqlite3, failing as SQLAlchemy would (DBAPIError: a database error, not a bug)."""
    try:
        driver.execute(statement)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a committed charge survives a power cut, not just a crash
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get("imagegate_write", False) else "BEGIN"
        driver = conn.connection.driver_connection
        if not isinstance(driver, sqlite3.Connection):  # aiosqlite's
            conn.exec_driver_sql(statement)
            return
        _driver_execute(driver, statement)  # through SQLAlchemy this took longer than the transaction's statements


@contextlib.asynccontextmanager
async def opened(url: str, *, upgrade: bool = True, write_timeout: float = WRITE_TIMEOUT_S) -> AsyncIterator[Database]:
    """A database for a one-off job (the CLI): upgraded to the newest schema, disposed afterwards."""
    db = Database(url, write_timeout=write_timeout)
    try:
        if upgrade:
            await db.upgrade()
        yield db
    finally:
        await db.dispose()
