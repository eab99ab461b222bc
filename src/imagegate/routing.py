"""Channels and how a job picks one: priority tiers, weighted choice, circuit breakers, retries, failover.

The router is itself an engine. It only retries a channel, or moves to the next, when the failure proves the
upstream did no work (connection refused, 429, 502/503 before any body): a timeout after the request was sent
may already have produced, and billed, an image, and is not repeated unless the channel says that is safe.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Protocol


from imagegate.catalog import Catalog, Model
from imagegate.config import ChannelConfig
from imagegate.engines.base import Event, Job
from imagegate.errors import EngineError, UpstreamError

if TYPE_CHECKING:
    from imagegate.engines.upstream import UpstreamSession

log = logging.getLogger("imagegate.routing")

MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After means: try another channel instead of waiting
BACKOFF_BASE_S = 0.25


class ChannelEngine(Protocol):
    name: str

    def run(self, job: Job) -> AsyncIterator[Event]: ...


@dataclass
class Channel:
    config: ChannelConfig
    engine: ChannelEngine
    limiter: asyncio.Semaphore = field(init=False)
    consecutive_failures: int = 0
    opened_at: float | None = None

    def __post_init__(self) -> None:
        self.limiter = asyncio.Semaphore(self.config.concurrency)

    @property
    def name(self) -> str:
        return self.config.name

    probing: bool = False

    def is_open(self, now: float) -> bool:
        """An open circuit refuses traffic until its cool-down passes; then a single probe is let through, and
        the rest wait for its outcome."""
        if self.opened_at is None:
            return False
        return now - self.opened_at < self.config.circuit_cooldown_s or self.probing

    def begin(self, now: float) -> bool | None:
        """Admit one attempt, asked at the moment it would go (the circuit may have opened since the request's
        channels were listed): None if the circuit refuses it, True if it goes as the one probe of a half-open
        circuit, False if as ordinary traffic."""
        if self.opened_at is None:
            return False
        if self.is_open(now):
            return None
        self.probing = True
        return True

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self.probing = False

    def failed(self, now: float, probe: bool) -> None:
        if probe:
            self.probing = False
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.config.circuit_failures:
            if self.opened_at is None or now - self.opened_at >= self.config.circuit_cooldown_s:
                log.warning("circuit opened for channel %s after %d failures", self.name, self.consecutive_failures)
            self.opened_at = now

    def settled_without_verdict(self, probe: bool) -> None:
        """An outcome that says nothing about the channel's health (the client's own 4xx, a cancellation): the
        probe, if this was it, is over without a verdict. Only the probe's own outcome ends the probe: an attempt
        that was under way before the circuit opened does not let a second probe through."""
        if probe:
            self.probing = False

    def can_serve(self, job: Job) -> bool:
        c = self.config
        if job.model.id not in c.models or job.operation not in c.operations:
            return False
        if c.max_n is not None and job.n > c.max_n:
            return False
        if job.mask_file is not None and c.type == "chat-image":
            return False  # a chat completion has no place for a mask: the edit would ignore it
        if job.transparent and not c.transparency:
            return False
        if c.sizes is not None and str(job.size) not in c.sizes:
            return False
        return True


def health_failure(exc: UpstreamError) -> bool:
    """Failures that say the channel is unwell: unreachable, timing out, overloaded, erroring, misconfigured.
    A client's own 4xx (a refused prompt, a bad parameter) says nothing about it and must not let one user open
    the circuit for everyone."""
    return exc.status >= 500 or exc.status == 429


class Router:
    """An engine over channels."""

    name = "relay"

    def __init__(
        self,
        channels: list[Channel],
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channels = channels
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock

    @property
    def concurrency(self) -> int:
        return sum(c.config.concurrency for c in self.channels) or 1

    def serves(self, model: Model) -> bool:
        return any(model.id in c.config.models for c in self.channels)

    def candidates(self, job: Job) -> list[Channel]:
        """Highest priority tier first; weighted random order within a tier; open circuits skipped. Channels at
        their cap go after those with room, each group in that order: a request would otherwise wait behind a full
        channel while another that can serve it stands idle (only when every one is full does it wait, for the
        first)."""
        now = self.clock()
        able = [c for c in self.channels if c.can_serve(job) and not c.is_open(now)]
        ordered: list[Channel] = []
        for priority in sorted({c.config.priority for c in able}, reverse=True):
            tier = [c for c in able if c.config.priority == priority]
            while tier:
                pick = self.rng.choices(tier, weights=[c.config.weight for c in tier])[0]
                ordered.append(pick)
                tier.remove(pick)
        ordered.sort(key=lambda c: c.limiter.locked())  # stable: the order above holds within each group
        return ordered

    async def run(self, job: Job) -> AsyncIterator[Event]:
        channels = self.candidates(job)
        if not channels:
            if any(c.can_serve(job) for c in self.channels):
                raise _no_healthy_channel(job)
            raise EngineError(
                f"No configured channel can serve this '{job.model.id}' request (size {job.size}, n={job.n}, "
                f"{job.operation}{', transparent' if job.transparent else ''}).",
                status=400, type="invalid_request_error", code="no_capable_channel",
            )
        last_error: UpstreamError | None = None
        for channel in channels:
            attempt = 0
            while True:
                produced = False
                probe = channel.begin(self.clock())
                if probe is None:  # its circuit opened, or another request probes it, since the list was made
                    log.info("skipping channel %s: its circuit is open", channel.name)
                    break
                try:
                    async with channel.limiter:
                        async for event in channel.engine.run(job):
                            produced = True
                            yield event
                    channel.succeeded()
                    return
                except UpstreamError as exc:
                    if health_failure(exc):
                        channel.failed(self.clock(), probe)
                    else:
                        channel.settled_without_verdict(probe)
                    last_error = exc
                    safe = exc.nothing_generated or (channel.config.retry_after_send and exc.status in (502, 504))
                    if produced or not safe:
                        raise
                    wait = exc.retry_after if exc.retry_after is not None else BACKOFF_BASE_S * (2**attempt)
                    if attempt < channel.config.max_retries and wait <= MAX_RETRY_AFTER_S:
                        attempt += 1
                        log.info("retrying channel %s in %.2fs after %s", channel.name, wait, exc.code)
                        await self.sleep(wait)
                        continue
                    log.info("failing over from channel %s after %s", channel.name, exc.code)
                    break
                except BaseException:
                    channel.settled_without_verdict(probe)  # an engine bug or a cancellation: no verdict
                    raise
        if last_error is None:  # every channel's circuit opened before this request reached it
            raise _no_healthy_channel(job)
        raise last_error

    async def aclose(self) -> None:
        return None


def _no_healthy_channel(job: Job) -> UpstreamError:
    return UpstreamError(
        f"Every channel for '{job.model.id}' is failing; try again in a little while.",
        status=503, code="no_healthy_channel", nothing_generated=True,
    )


def channel_engine(config: ChannelConfig, client: UpstreamSession) -> ChannelEngine:
    from imagegate.engines.chat_relay import ChatImageEngine
    from imagegate.engines.openai_compat import OpenAICompatEngine

    return ChatImageEngine(config, client) if config.type == "chat-image" else OpenAICompatEngine(config, client)


def route_catalog(catalog: Catalog, router: Router) -> Catalog:
    """Models served by a channel run on the router instead of their catalog engine."""
    from dataclasses import replace

    return Catalog({mid: replace(m, engine="relay") if router.serves(m) else m for mid, m in catalog.models.items()})
