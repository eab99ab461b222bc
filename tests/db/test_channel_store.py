"""The channels table: a change is read and written under one lock, so that a concurrent change is not lost."""

from __future__ import annotations

import asyncio
import threading

from imagegate.channels import ChannelStore
from imagegate.config import ChannelConfig
from imagegate.db import Database

BASE = {"name": "up", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k", "models": ["gpt-image-1"]}


def test_a_change_made_meanwhile_by_another_process_is_not_lost(database_url):
    async def setup() -> None:
        db = Database(database_url)
        await db.upgrade()
        assert await ChannelStore(db).add(ChannelConfig(**BASE))
        await db.dispose()

    asyncio.run(setup())

    # The other process: its own database connection, on a thread with its own event loop.
    def other_change() -> None:
        async def main() -> None:
            db = Database(database_url)
            await ChannelStore(db).update("up", lambda stored: ChannelConfig(**{**stored, "weight": 7}))
            await db.dispose()

        asyncio.run(main())

    other = threading.Thread(target=other_change)

    def this_change(stored: dict) -> ChannelConfig:
        # Between this change's read and its write, the other one runs: it must wait for this one (the row or the
        # file is locked) and then build on it, not finish first and be overwritten.
        other.start()
        other.join(timeout=1.0)
        return ChannelConfig(**{**stored, "priority": 3})

    async def main() -> dict:
        db = Database(database_url)
        store = ChannelStore(db)
        await store.update("up", this_change)
        await asyncio.to_thread(other.join, 30)
        try:
            return next(c for c in await store.all() if c["name"] == "up")
        finally:
            await db.dispose()

    final = asyncio.run(main())
    assert (final["priority"], final["weight"]) == (3, 7)
