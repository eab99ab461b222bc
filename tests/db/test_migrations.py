"""The schema comes from Alembic migrations, on SQLite and PostgreSQL, and matches what the code queries."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from imagegate.config import ConfigError
from imagegate.db import SCHEMA_HEAD, Database, head_revision, opened, resolve_url
from imagegate.db.schema import metadata

EXE = Path(sys.executable).parent / "imagegate"


def test_upgrade_creates_every_table_and_is_repeatable(database_url):
    async def main():
        db = Database(database_url)
        try:
            assert await db.revision() is None
            await db.upgrade()
            await db.upgrade()  # a second start finds nothing to do
            assert await db.revision() == head_revision()
            async with db.read() as conn:
                tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            return tables
        finally:
            await db.dispose()

    assert set(metadata.tables) | {"alembic_version"} <= asyncio.run(main())


def test_migrations_match_the_schema_module(database_url):
    """What `alembic revision --autogenerate` would see: no difference between migrations and schema.py."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    async def main():
        db = Database(database_url)
        try:
            await db.upgrade()
            async with db.read() as conn:
                return await conn.run_sync(
                    lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
                )
        finally:
            await db.dispose()

    assert asyncio.run(main()) == []


def test_concurrent_upgrades_do_not_collide(database_url):
    async def one():
        db = Database(database_url)
        try:
            await db.upgrade()
        finally:
            await db.dispose()

    async def main():
        await asyncio.gather(*(one() for _ in range(4)))

    asyncio.run(main())


def test_urls(tmp_path):
    assert resolve_url("", tmp_path) == f"sqlite+aiosqlite:///{(tmp_path / 'imagegate.db').resolve()}"
    assert resolve_url("postgresql://u:p@h:5/db", tmp_path) == "postgresql+asyncpg://u:p@h:5/db"
    assert resolve_url("sqlite:////var/x.db", tmp_path) == "sqlite+aiosqlite:////var/x.db"
    with pytest.raises(ConfigError, match="'mysql' is not supported"):
        resolve_url("mysql://h/db", tmp_path)


def test_db_upgrade_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IMAGEGATE_"))}
    data = tmp_path / "data"
    current = subprocess.run([str(EXE), "db", "current", "--data-dir", str(data)], env=env, capture_output=True,
                             text=True, timeout=60)
    assert current.returncode == 0 and "schema revision: none" in current.stdout
    assert not (data / "imagegate.db").exists()  # looking does not create it (that would turn metering on)
    done = subprocess.run([str(EXE), "db", "upgrade", "--data-dir", str(data)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"schema revision: {head_revision()} (newest: {head_revision()})" in done.stdout
    assert (data / "imagegate.db").exists()


def test_the_schema_head_is_the_newest_migration():
    assert SCHEMA_HEAD == head_revision()


def test_a_start_on_a_current_database_leaves_alembic_unloaded(tmp_path):
    # A process of its own: whether alembic was imported is only known in a fresh interpreter.
    script = (
        "import asyncio, sys\n"
        "from imagegate.db import Database, resolve_url\n"
        "async def main():\n"
        f"    db = Database(resolve_url('', __import__('pathlib').Path({str(tmp_path)!r})))\n"
        "    await db.upgrade()\n"
        "    print(await db.revision() if sys.argv[1] == 'first' else '', 'alembic' in sys.modules)\n"
        "    await db.dispose()\n"
        "asyncio.run(main())\n"
    )
    first = subprocess.run([sys.executable, "-c", script, "first"], capture_output=True, text=True, check=True)
    assert first.stdout.split() == [SCHEMA_HEAD, "True"]  # a new database: alembic made it
    again = subprocess.run([sys.executable, "-c", script, "again"], capture_output=True, text=True, check=True)
    assert again.stdout.split() == ["False"]


@pytest.mark.parametrize("query", ["_OPEN_HOLDS", "_ACCOUNT_OPEN_HOLDS"])
def test_open_holds_are_found_through_their_partial_index(database_url, query):
    # Reconciliation and the account summary ask for open holds: written as a literal, the condition lets both
    # planners use the partial index instead of reading every hold ever placed.
    from imagegate.billing import store

    statement = getattr(store, query).params(account_id=1)

    async def main():
        async with opened(database_url) as db, db.read() as conn:
            sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            if conn.dialect.name == "sqlite":
                return str((await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)).all())
            await conn.exec_driver_sql("SET enable_seqscan = off")  # an empty table is otherwise just read
            return str((await conn.exec_driver_sql("EXPLAIN " + sql)).all())

    assert "ix_holds_open_account" in asyncio.run(main())
