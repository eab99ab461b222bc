"""Database backends for the tests: SQLite always; PostgreSQL too when IMAGEGATE_TEST_DATABASE_URL is set
(``.ci/run`` sets it). Every test gets a database of its own - a file in its tmp dir, or a PostgreSQL database
created for it and dropped afterwards - so xdist workers never share state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from imagegate.billing.store import BillingStore
from imagegate.db import Database

PG_URL = os.environ.get("IMAGEGATE_TEST_DATABASE_URL", "")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql", id="postgresql",
        marks=pytest.mark.skipif(not PG_URL, reason="IMAGEGATE_TEST_DATABASE_URL is not set"),
    ),
]


async def _admin(sql: str) -> None:
    import asyncpg

    url = make_url(PG_URL)
    conn = await asyncpg.connect(user=url.username, password=url.password, host=url.host or "127.0.0.1",
                                 port=url.port or 5432, database=url.database or "postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fresh_url(backend: str, tmp_path) -> tuple[str, object]:
    """(async URL, cleanup) for a brand-new, empty database."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test-imagegate.db'}", lambda: None
    name = f"ig_test_{uuid.uuid4().hex[:16]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(drivername="postgresql+asyncpg", database=name)

    def drop() -> None:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return url.render_as_string(hide_password=False), drop


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    url, drop = fresh_url(request.param, tmp_path)
    yield url
    drop()


@contextlib.asynccontextmanager
async def open_store(database_url: str, **store_args) -> AsyncIterator[BillingStore]:
    """A migrated database and a registered billing store on it, disposed afterwards."""
    db = Database(database_url)
    await db.upgrade()
    store = BillingStore(db, **store_args)
    await store.register()
    try:
        yield store
    finally:
        await db.dispose()
