"""The set of channels a server routes to: those of the config file, fixed, and those added through the admin API,
kept in the database and reloaded by every server process when they change.

Applying a new set keeps the live state (circuit breakers, concurrency slots) of every channel whose settings did
not change, and swaps the router's list in one assignment: a request already routed keeps the channel it has.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from pydantic import ValidationError

from imagegate.catalog import Catalog
from imagegate.config import ENV_PREFIX, ChannelConfig, ConfigError, UnsetVariable, first_error, resolve_env
from imagegate.db import Database
from imagegate.db.schema import channels as channels_table
from imagegate.routing import Channel, Router, channel_engine, route_catalog

log = logging.getLogger("imagegate.channels")


class ChannelError(ConfigError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"bad channel field '{field}': {message}")
        self.field = field


def parse_channel(raw: dict[str, Any], catalog: Catalog, environ=os.environ) -> tuple[ChannelConfig, ChannelConfig]:
    """(as given, as used): ``api_key = "env:NAME"`` is kept as the reference and resolved for use. Raises
    ChannelError naming the field that is wrong."""
    try:
        given = ChannelConfig(**raw)
    except ValidationError as exc:
        where, what = first_error(exc)
        raise ChannelError(where or "channel", what) from None
    unknown = unknown_models([given], catalog)
    if unknown:
        raise ChannelError("models", f"unknown model(s) {unknown}; GET /v1/models lists them")
    if given.api_key.startswith("env:"):
        name = given.api_key[4:]
        if not name.endswith("_API_KEY") or name.startswith(ENV_PREFIX):
            # The key is sent to the channel's host, which the admin API names: any variable would let a leaked
            # admin token carry the server's database password or cloud keys to a host of its choosing.
            raise ChannelError("api_key", f"a channel added through the API may name only a provider key's "
                                          f"variable, one ending in _API_KEY (not imagegate's own): not {name}")
    try:
        used = given.model_copy(update={"api_key": resolve_env(given.api_key, environ)})
    except UnsetVariable as exc:
        raise ChannelError("api_key", f"environment variable {exc.name} is not set on the server") from None
    return given, used


def unknown_models(configs: Iterable[ChannelConfig], catalog: Catalog) -> list[str]:
    """The model ids channels name that the catalog does not have."""
    return sorted({m for c in configs for m in c.models if catalog.get(m) is None})


def _dumped(config: ChannelConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), separators=(",", ":"))


class ChannelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[dict[str, Any]]:
        def read(conn) -> list[dict[str, Any]]:
            rows = conn.execute(sa.select(channels_table).order_by(channels_table.c.name)).all()
            return [json.loads(row.config) for row in rows]

        return await self.db.run_read(read)

    async def add(self, config: ChannelConfig) -> bool:
        """Store a new channel; False if one of that name is stored already (by any process)."""
        def write(conn) -> None:
            conn.execute(sa.insert(channels_table).values(name=config.name, config=_dumped(config),
                                                          updated_at=time.time()))

        try:
            await self.db.run_write(write)
        except IntegrityError:  # the name is the table's key
            return False
        return True

    async def update(self, name: str, change: Callable[[dict[str, Any]], ChannelConfig]) -> ChannelConfig | None:
        """Replace a stored channel with ``change(what is stored)``, read and written in one transaction, so that
        a change made meanwhile by another process is neither lost nor brought back; None if none is stored."""

        def write(conn) -> ChannelConfig | None:
            # Locked as it is read (PostgreSQL; SQLite's write turn is the whole file's): a change or a removal by
            # another process waits for this one, or this one sees it.
            row = conn.execute(sa.select(channels_table.c.config).where(channels_table.c.name == name)
                               .with_for_update()).first()
            if row is None:
                return None
            config = change(json.loads(row.config))
            conn.execute(sa.update(channels_table).where(channels_table.c.name == name)
                         .values(config=_dumped(config), updated_at=time.time()))
            return config

        return await self.db.run_write(write)

    async def delete(self, name: str) -> bool:
        def write(conn) -> bool:
            return conn.execute(sa.delete(channels_table).where(channels_table.c.name == name)).rowcount > 0

        return await self.db.run_write(write)


class ChannelSet:
    """The router over the config file's channels and the stored ones, and the catalog that implies."""

    def __init__(self, file_channels: tuple[ChannelConfig, ...], base_catalog: Catalog, session: Any) -> None:
        self.file = {c.name: c for c in file_channels}
        self.admin: dict[str, ChannelConfig] = {}  # as given (env: references kept), by name
        self.stored: list[dict[str, Any]] | None = None  # the stored channels last applied, as read
        self.base_catalog = base_catalog
        self.session = session
        self.router = Router([Channel(c, channel_engine(c, session)) for c in file_channels])
        self.catalog = route_catalog(base_catalog, self.router)
        # One reload at a time: a read that began before another server's change must not be applied after it.
        self.reloading = asyncio.Lock()

    def apply(self, admin_raw: list[dict[str, Any]]) -> None:
        """Route to the file's channels plus these. A stored channel that no longer parses (a model removed from
        the catalog, an unset variable) is left out with a warning rather than stopping the server."""
        admin_given: dict[str, ChannelConfig] = {}
        used: list[ChannelConfig] = list(self.file.values())
        for raw in admin_raw:
            try:
                given, resolved = parse_channel(raw, self.base_catalog)
            except ConfigError as exc:
                log.warning("channel %r from the database is left out: %s", raw.get("name"), exc)
                continue
            if given.name in self.file:
                continue  # the config file's channel of that name wins
            admin_given[given.name] = given
            used.append(resolved)
        live = {c.name: c for c in self.router.channels}
        self.router.channels = [
            live[c.name] if c.name in live and live[c.name].config == c else Channel(c, channel_engine(c, self.session))
            for c in used
        ]
        self.admin = admin_given
        self.stored = admin_raw
        self.catalog = route_catalog(self.base_catalog, self.router)

    def describe(self) -> list[dict[str, Any]]:
        """Every channel as configured (stored ones with their ``env:`` references), with its health."""
        now = self.router.clock()
        return [
            {
                **self.admin.get(channel.name, channel.config).model_dump(mode="json"),
                "source": "admin" if channel.name in self.admin else "config",
                "circuit": "open" if channel.is_open(now) else "half-open" if channel.opened_at else "closed",
                "consecutive_failures": channel.consecutive_failures,
            }
            for channel in self.router.channels
        ]


async def reload_channels(state: Any) -> bool:
    """Route to the config file's channels plus the stored ones, if those changed since last applied; the
    gateway's queues follow the channels' caps. Returns whether anything changed."""
    channel_set: ChannelSet = state.channels
    async with channel_set.reloading:
        stored = await state.channel_store.all()
        if stored == channel_set.stored:
            return False
        channel_set.apply(stored)
        state.gateway.resize_queues()
        return True
