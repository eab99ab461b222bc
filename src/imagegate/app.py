"""create_app(settings): builds the concrete parts once and wires them into the ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI

from imagegate.api import errors as api_errors
from imagegate.api import admin, billing as billing_api, channels as channels_api, chat, files, images, models
from imagegate.api.admin import apply_price_file
from imagegate.api.auth import KeyStore, StaticKeys
from imagegate.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from imagegate.billing.prices import price_file_stamp
from imagegate.catalog import Catalog, load_catalog
from imagegate.config import ConfigError, Settings, metering_enabled
from imagegate.engines.sandbox import SandboxEngine
from imagegate.engines.upstream import UpstreamSession
from imagegate.gateway import Gateway
from imagegate.keyfile import ensure_api_keys, existing_key
from imagegate.memory import keep_freed_buffers
from imagegate.channels import ChannelSet, ChannelStore, reload_channels, unknown_models
from imagegate.storage import LocalStorage, UrlSigner
from imagegate.storage.local import load_or_create_secret

log = logging.getLogger("imagegate")


def _load_guard(settings: Settings):
    if settings.guard_policy == "off":
        return None
    try:
        from imagegate.guard import PromptGuard, RuleError
    except ImportError:  # pragma: no cover - the guard ships with the package
        return None
    try:
        return PromptGuard.load(extra_paths=[Path(p) for p in settings.guard_rule_files])
    except RuleError as exc:  # the operator's rule file: a configuration problem, said in one line at start-up
        raise ConfigError(f"guard_rule_files: {exc}") from None


def _billing(settings: Settings, catalog: Catalog, keys: KeyStore | None):
    """The price book (always: quotes and cost headers), and with metering the database, its key store and the
    runtime that migrates, heartbeats and reconciles. A malformed price file, or a model without a price while
    metering is on, stops the start with one line naming the entry."""
    from imagegate.billing import Billing, BillingRuntime, PriceBookError, load_price_book

    prices = load_price_book(settings.price_file)
    if not metering_enabled(settings):
        for problem in prices.coverage_problems(catalog):
            log.warning("prices: %s (unmetered: its quote is refused)", problem)
        return Billing(prices), keys or StaticKeys(ensure_api_keys(settings)[0]), None
    from imagegate.api.billing import DbKeys
    from imagegate.billing.store import BillingStore
    from imagegate.db import Database, resolve_url

    problems = prices.coverage_problems(catalog)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PriceBookError(f"prices: {problems[0]}{more}")
    store = BillingStore(
        Database(resolve_url(settings.database_url, settings.data_dir),
                 write_timeout=settings.database_write_timeout_seconds, pool_size=settings.database_pool_size),
        hold_ttl_seconds=settings.hold_ttl_seconds,
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
        stale_after_seconds=max(3 * settings.heartbeat_interval_seconds, 30.0),
    )
    if keys is None:
        # Static keys stay an explicit, unmetered mode: configured ones, or a key file made earlier; with
        # metering on, no static key is created behind the operator's back.
        static = settings.api_keys or existing_key(settings.data_dir)
        keys = DbKeys(store, StaticKeys(static) if static else None, cache_seconds=settings.key_cache_seconds)
    return Billing(prices, store), keys, BillingRuntime(store, heartbeat_interval=settings.heartbeat_interval_seconds)


def create_app(
    settings: Settings, *, catalog: Catalog | None = None, keys: KeyStore | None = None
) -> FastAPI:
    catalog = catalog or load_catalog()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    prices_stamp = price_file_stamp(settings.price_file)  # before reading it: a change meanwhile is read again
    billing, keys, billing_runtime = _billing(settings, catalog, keys)
    signer = UrlSigner(load_or_create_secret(settings.data_dir / "url_secret.key"))
    storage = LocalStorage(settings.images_dir, signer, settings.url_ttl_seconds)
    unknown = unknown_models(settings.channels, catalog)
    if unknown:
        raise ConfigError(f"bad setting 'channels': unknown model(s) {unknown}; see the model catalog")
    upstream_client = UpstreamSession()  # connects on first use only
    channel_set = ChannelSet(settings.channels, catalog, upstream_client)
    engines: dict = {"sandbox": SandboxEngine(latency_ms=settings.sandbox_latency_ms), "relay": channel_set.router}
    moderation = None
    moderation_client = None
    if settings.moderation_url:
        # Only here: httpx (with the command-line tools it loads) is some 10 MB a process without a moderation stage.
        import httpx

        from imagegate.moderation import ModerationClient

        moderation_client = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        moderation = ModerationClient(
            settings.moderation_url, settings.moderation_api_key, settings.moderation_model, moderation_client
        )
    gateway = Gateway(
        engines=engines,
        storage=storage,
        guard=_load_guard(settings),
        guard_policy=settings.guard_policy,
        engine_concurrency=settings.engine_concurrency,
        engine_queue_limit=settings.engine_queue_limit,
        billing=billing,
        moderation=moderation,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keep_freed_buffers()  # this process now serves: megabyte buffers come and go with every request
        background = []
        if billing_runtime is not None:
            await billing_runtime.start()  # migrate, register, release what a crashed server left held
            await reload_channels(app.state)
            background.append(asyncio.create_task(_repeat(
                settings.heartbeat_interval_seconds, lambda: _follow_channels(app), "reloading channels failed",
                first_wait=True)))
        if settings.price_file is not None:  # the shipped book never changes under a running server
            # Unmetered too: quotes and cost headers price by the book, and `--workers N` has N processes to follow.
            background.append(asyncio.create_task(_repeat(
                settings.heartbeat_interval_seconds, lambda: _follow_prices(app), "reloading prices failed",
                first_wait=True)))
        background.append(asyncio.create_task(_repeat(
            settings.janitor_interval_seconds, lambda: _sweep(storage), "janitor sweep failed")))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Runs whose clients left finish (and keep their images) first; cancelled ones settle (refund) before
            # the database closes.
            await gateway.aclose(grace=settings.shutdown_grace_seconds)
            await billing.aclose()  # and settlements still being retried get a last try
            if billing_runtime is not None:
                await billing_runtime.stop()
            for client in (upstream_client, moderation_client):
                if client is not None:
                    await client.aclose()

    app = FastAPI(
        title="imagegate",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.keys = keys
    app.state.storage = storage
    app.state.gateway = gateway
    app.state.billing = billing
    app.state.prices_stamp = prices_stamp
    app.state.channels = channel_set
    # Channels kept in the database (added through the admin API); None without one.
    app.state.channel_store = ChannelStore(billing_runtime.store.db) if billing_runtime is not None else None
    api_errors.install(app)
    app.include_router(images.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(files.router)
    app.include_router(billing_api.router)
    app.include_router(admin.router)
    app.include_router(channels_api.router)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app


async def _repeat(interval: float, step: Callable[[], Awaitable[None]], failed: str, *,
                  first_wait: bool = False) -> None:
    """``step()`` every ``interval`` seconds for as long as the server runs; a step that fails is logged and the
    next one comes as usual (a database away for a moment, a bad sweep)."""
    if first_wait:
        await asyncio.sleep(interval)
    while True:
        try:
            await step()
        except Exception:
            log.exception(failed)
        await asyncio.sleep(interval)


async def _follow_channels(app: FastAPI) -> None:
    """Channels changed through another server process (or replica) reach this one within a heartbeat."""
    if await reload_channels(app.state):
        log.info("channels reloaded: %s", ", ".join(c.name for c in app.state.channels.router.channels))


async def _follow_prices(app: FastAPI) -> None:
    """A price file changed (edited, and reloaded through another server process's admin API, or not): this
    process prices with it within a heartbeat. A bad file is reported once and the old prices stay."""
    state = app.state
    stamp = price_file_stamp(state.settings.price_file)
    if stamp is None or stamp == state.prices_stamp:
        return
    try:
        apply_price_file(state)
    except ConfigError as exc:
        state.prices_stamp = stamp  # once per version of the file
        log.warning("the price file changed but is not applied, the old prices stay: %s", exc)
        return
    log.info("prices reloaded from %s", state.settings.price_file)


async def _sweep(storage: LocalStorage) -> None:
    removed = await asyncio.to_thread(storage.sweep)
    if removed:
        log.info("janitor removed %d expired image(s)", removed)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagegate")
    except PackageNotFoundError:  # pragma: no cover
        return "0+unknown"
