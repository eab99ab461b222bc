"""The key cache: a valid key is remembered briefly, but never across a change made through this process."""

from __future__ import annotations

import asyncio

import pytest

from imagegate.api.billing import DbKeys
from imagegate.billing.store import BillingStore
from imagegate.db import opened
from imagegate.errors import AuthenticationFailed


async def _keys(db) -> tuple[BillingStore, DbKeys, object, str]:
    store = BillingStore(db)
    await store.create_account("acme")
    key, secret = await store.create_key("acme")
    return store, DbKeys(store, cache_seconds=30), key, secret


def test_a_lookup_in_flight_during_a_revocation_does_not_cache_the_key(tmp_path):
    async def main():
        async with opened(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite") as db:
            store, keys, key, secret = await _keys(db)
            read, resume = asyncio.Event(), asyncio.Event()
            real = store.key_by_secret

            async def slow(token):
                found = await real(token)  # read before the revocation, answered after it
                read.set()
                await resume.wait()
                return found

            store.key_by_secret = slow
            in_flight = asyncio.create_task(keys.authenticate(secret))
            await read.wait()
            await store.revoke_key(key.prefix)  # what the admin API does, then it forgets the prefix
            keys.forget(key.prefix)
            resume.set()
            await in_flight  # that request was already under way
            store.key_by_secret = real
            with pytest.raises(AuthenticationFailed) as exc:
                await keys.authenticate(secret)
            assert exc.value.code == "api_key_revoked"

    asyncio.run(main())


def test_a_cached_key_is_served_without_the_database_until_forgotten(tmp_path):
    async def main():
        async with opened(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite") as db:
            store, keys, _, secret = await _keys(db)
            first = await keys.authenticate(secret)
            calls = []
            real = store.key_by_secret

            async def counted(token):
                calls.append(token)
                return await real(token)

            store.key_by_secret = counted
            assert await keys.authenticate(secret) == first and calls == []
            keys.forget()
            assert await keys.authenticate(secret) == first and len(calls) == 1

    asyncio.run(main())
