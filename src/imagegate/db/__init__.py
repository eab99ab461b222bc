"""The database: one async SQLAlchemy engine, Alembic migrations, and the two ways in (read, write).

SQLite is the default (a file in the data dir, WAL journal). Its writers are serialised: a write transaction
starts with ``BEGIN IMMEDIATE``, so two requests placing holds on the same account queue on the database lock
instead of deadlocking on a lock upgrade. PostgreSQL (``postgresql+asyncpg://``) runs at READ COMMITTED; the
billing code never reads a balance and writes it back, it uses conditional ``UPDATE ... RETURNING`` statements,
which PostgreSQL re-checks against the committed row after waiting on its lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import AsyncIterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from imagegate.config import ConfigError

DB_FILE = "imagegate.db"
_MIGRATIONS = Path(__file__).parent / "migrations"
# Any number, the same in every process: serialises concurrent `upgrade` runs against one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x1A6E6A7E


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
    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        if self.dialect == "sqlite":
            database = make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(
                url, connect_args={"timeout": 60}, pool_size=8, max_overflow=8, pool_timeout=60
            )
            _sqlite_setup(self.engine)
        else:
            self.engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, pool_timeout=60)
        self._writer = self.engine.execution_options(imagegate_write=True)
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    def read(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reads (and read-only transactions)."""
        return self.engine.connect()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed when the block ends, rolled back if it raises.

        SQLite has one writer at a time. Left to the database, waiting writers sleep in SQLite's busy handler,
        whose back-off grows to 100 ms a try: under load most of a request's time went there. Queued on an
        asyncio lock instead, this process's writers take turns without sleeping; other processes on the same
        file still meet the busy timeout.
        """
        if self._write_lock is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        async with self._write_lock:
            async with self._writer.begin() as conn:
                yield conn

    async def upgrade(self) -> None:
        async with self._writer.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            await conn.run_sync(_alembic_upgrade)

    async def revision(self) -> str | None:
        """The schema revision the database is at (None: not created yet)."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def dispose(self) -> None:
        await self.engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(_MIGRATIONS)).get_current_head() or ""


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _alembic_upgrade(connection) -> None:
    from alembic import command

    quiet = logging.getLogger("alembic")
    if quiet.level == logging.NOTSET:  # its INFO lines on every start say nothing an operator needs
        quiet.setLevel(logging.WARNING)
    command.upgrade(_alembic_config(connection), "head")


def _current_revision(connection) -> str | None:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _sqlite_setup(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a committed charge survives a power cut, not just a crash
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn) -> None:
        write = conn.get_execution_options().get("imagegate_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextlib.asynccontextmanager
async def opened(url: str, *, upgrade: bool = True) -> AsyncIterator[Database]:
    """A database for a one-off job (the CLI): upgraded to the newest schema, disposed afterwards."""
    db = Database(url)
    try:
        if upgrade:
            await db.upgrade()
        yield db
    finally:
        await db.dispose()
