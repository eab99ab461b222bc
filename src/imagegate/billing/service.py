"""Billing as the gateway sees it: quote, reserve (hold) before the engine runs, settle exactly once after.

``reserve`` runs in the request handler and raises ``insufficient_quota`` before anything runs. ``settle`` runs
in the gateway's detached task, so a client that disconnects, a stream, or a chat request all settle the same
way, once. What is charged:

- success: the price of what was delivered (images actually produced, the usage the engine reported);
- engine error: nothing under the ``refund`` policy; the quote under ``charge`` (upstreams that bill once the
  call is sent); nothing when our own shutdown cancelled the work, whatever the policy;
- never more than the hold: the quote is the most a request can cost, and it is what the client was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol

from imagegate.billing import pricing
from imagegate.billing.prices import ModelPrice, PriceBook
from imagegate.billing.pricing import Cost
from imagegate.billing.store import BillingStore, IdempotencyRecord, UsageMeta, key_reused
from imagegate.catalog.tokens import Usage
from imagegate.db import is_transient, no_turn_to_write
from imagegate.errors import Conflict, ImagegateError, InsufficientQuota, PermissionDenied, ServerError

if TYPE_CHECKING:
    from imagegate.gateway import RunResult
    from imagegate.validate import ImageRequest

log = logging.getLogger("imagegate.billing")


class Payer(Protocol):
    """What billing needs to know about the caller (``api.auth.Principal`` has it)."""

    key_prefix: str
    metered: bool
    account_id: int | None
    key_id: int | None
    group: str
    allowed_models: tuple[str, ...] | None


@dataclass(frozen=True)
class Idempotency:
    scope: str  # the account (metered) or the static key
    key: str
    body_hash: str


@dataclass(frozen=True)
class Settlement:
    cost_micro: int | None  # None: the model has no price (unmetered use only)
    available_micro: int | None  # the account's balance minus open holds, after settling; None: unmetered
    metered: bool


@dataclass
class Ticket:
    """One request's money, from reserve to settle."""

    request_id: str
    endpoint: str
    request: "ImageRequest"
    payer: Payer | None
    price: ModelPrice | None
    multiplier: Fraction
    quote: Cost | None
    metered: bool = False
    hold_id: str | None = None
    usage_id: int | None = None
    idempotency: Idempotency | None = None
    available_micro: int | None = None
    started: float = field(default_factory=time.monotonic)
    settlement: Settlement | None = None


def usage_meta(
    request: "ImageRequest", payer: Payer | None, endpoint: str, *, metered: bool, quote_micro: int
) -> UsageMeta:
    """What the usage log records about a request when it starts (or is refused)."""
    job = request.job
    return UsageMeta(
        request_id=job.request_id, endpoint=endpoint, model=job.model.id, engine=job.model.engine,
        operation=job.operation, size=str(job.size), quality=job.quality, stream=request.stream, n_asked=job.n,
        key_prefix=payer.key_prefix if payer is not None else "", account_id=payer.account_id if metered else None,
        metered=metered, quote_micro=quote_micro,
    )


class Billing:
    # Pauses between the later tries of a settlement that failed (a database outage): about ten minutes in all.
    # The hold is kept alive meanwhile; after the last try it is left to expire and reconciliation releases it.
    settle_retry_delays: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 60, 120, 300)

    def __init__(self, prices: PriceBook, store: BillingStore | None = None) -> None:
        self.prices = prices
        self.store = store
        self._inflight: dict[tuple[str, str], asyncio.Event] = {}
        self._claim_locks: dict[tuple[str, str], list] = {}  # [lock, users]
        self._later: set[asyncio.Task] = set()  # settlements being retried in the background
        self._closing = asyncio.Event()  # the server stops: each of them makes its last try now

    # --- pricing --------------------------------------------------------------------------------------------

    def multiplier(self, payer: Payer | None) -> Fraction:
        if payer is None or not payer.metered:
            return Fraction(1)
        value = self.prices.multiplier(payer.group)
        if value is None:
            raise ServerError(
                f"The account's price group '{payer.group}' is not in the price book; the request is refused "
                "rather than priced by guesswork. Add it under [groups] or move the account.",
                code="price_group_missing",
            )
        return value

    def quote(self, request: "ImageRequest", payer: Payer | None) -> tuple[ModelPrice, Cost]:
        """The most ``request`` can cost this payer. A model without a price is an error, never free."""
        check_model_allowed(request.job.model.id, payer)
        price = self.prices.price(request.job.model.id)
        if price is None:
            raise ServerError(
                f"Model '{request.job.model.id}' has no entry in the price book, so it has no price; add one to the "
                "price file. Models are never served free by omission.",
                code="price_missing",
            )
        return price, pricing.quote(price, request.job, self.multiplier(payer))

    # --- reserve / settle -----------------------------------------------------------------------------------

    async def reserve(
        self,
        request: "ImageRequest",
        payer: Payer | None,
        *,
        endpoint: str = "images",
        idempotency: Idempotency | None = None,
    ) -> Ticket:
        """Price the request and hold its quote on the payer's account before any engine runs."""
        metered = payer is not None and payer.metered and self.store is not None
        if metered:
            price, quote = self.quote(request, payer)
        else:
            check_model_allowed(request.job.model.id, payer)
            price = self.prices.price(request.job.model.id)
            quote = pricing.quote(price, request.job, Fraction(1)) if price is not None else None
        job = request.job
        multiplier = self.multiplier(payer) if metered else Fraction(1)
        ticket = Ticket(job.request_id, endpoint, request, payer, price, multiplier, quote, metered=metered,
                        idempotency=idempotency)
        if self.store is None:
            return ticket
        meta = usage_meta(request, payer, endpoint, metered=metered, quote_micro=quote.micro if quote else 0)
        claim = (idempotency.scope, idempotency.key, idempotency.body_hash) if idempotency else None
        async with self._claiming(idempotency):
            if metered:
                try:
                    ticket.hold_id, ticket.usage_id, ticket.available_micro = await self.store.place_hold(
                        meta, key_id=payer.key_id, idem=claim  # type: ignore[union-attr]
                    )
                except InsufficientQuota:
                    await self.store.log_refused(meta, "insufficient_quota")
                    raise
            else:
                ticket.usage_id = await self.store.open_usage(meta, idem=claim)
            if idempotency is not None:
                # Still under the claim lock: a twin that saw the claim finds this to wait on.
                self._inflight[(idempotency.scope, idempotency.key)] = asyncio.Event()
        return ticket

    async def log_blocked(self, request: "ImageRequest", payer: Payer | None, *, endpoint: str,
                          categories: tuple[str, ...]) -> None:
        """A request the prompt guard refused: no hold, no charge, one usage row naming the categories."""
        if self.store is None:
            return
        metered = payer is not None and payer.metered
        meta = usage_meta(request, payer, endpoint, metered=metered, quote_micro=0)
        await self.store.log_refused(meta, ("moderation_blocked:" + ",".join(categories))[:64])

    @contextlib.asynccontextmanager
    async def _claiming(self, idempotency: Idempotency | None) -> AsyncIterator[None]:
        """Per key, in this process: claiming a key and registering its in-flight run happen as one step."""
        if idempotency is None:
            yield
            return
        slot = (idempotency.scope, idempotency.key)
        entry = self._claim_locks.setdefault(slot, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._claim_locks[slot]

    def keep_images_for(self, ticket: Ticket) -> int:
        """Seconds a request's stored images must live at least: a retry under its Idempotency-Key replays them for
        as long as the key is remembered, however short-lived the operator makes image links (it must not find
        them gone and pay again)."""
        if ticket.idempotency is None or self.store is None:
            return 0
        return int(self.store.idempotency_ttl)

    async def abort(self, ticket: Ticket) -> None:
        """The request was reserved but no engine started: give everything back."""
        if ticket.settlement is not None or self.store is None:
            return
        ticket.settlement = Settlement(0, ticket.available_micro, ticket.metered)
        try:
            if ticket.hold_id is not None:
                await self.store.release(ticket.hold_id, reason="not_started", status="error")
            elif ticket.usage_id is not None:
                idem = ticket.idempotency
                await self.store.finish_unstarted(ticket.usage_id,
                                                  (idem.scope, idem.key, ticket.request_id) if idem else None)
        finally:
            self._wake(ticket)

    async def settle(
        self, ticket: Ticket, result: "RunResult", error: ImagegateError | None, *, engine: str, cancelled: bool = False
    ) -> Settlement:
        if ticket.settlement is not None:  # exactly once
            return ticket.settlement
        try:
            ticket.settlement = await self._settle(ticket, result, error, engine=engine, cancelled=cancelled)
            return ticket.settlement
        finally:
            self._wake(ticket)

    async def _settle(
        self, ticket: Ticket, result: "RunResult", error: ImagegateError | None, *, engine: str, cancelled: bool
    ) -> Settlement:
        job = ticket.request.job
        delivered = len(result.images) if error is None else 0
        priced_usage = result.usage
        if ticket.price is None or ticket.quote is None:
            cost = None
        elif error is None:
            actual = pricing.actual(ticket.price, job, ticket.multiplier, delivered=delivered, usage=result.usage,
                                    partials=result.partial_images)
            cost, priced_usage = actual.micro, actual.usage
            if result.cut_short is not None and self._policy(result.cut_short, engine) == "charge":
                cost = ticket.quote.micro  # the upstream bills the whole call, failed part included
        elif cancelled or getattr(error, "nothing_generated", False):
            cost = 0  # our own shutdown, or an upstream that provably did no work
        elif self._policy(error, engine) == "charge":
            cost = ticket.quote.micro
        else:
            cost = 0
        if self.store is None or ticket.usage_id is None:
            return Settlement(cost, None, False)
        idem = ticket.idempotency
        latency_ms = int(((result.finished or time.monotonic()) - ticket.started) * 1000)
        failure = error or result.cut_short  # a run cut short is "ok" (its images were answered), with its error
        # Everything is computed once, here; a later try writes exactly the same settlement.
        fields = dict(
            hold_id=ticket.hold_id, usage_id=ticket.usage_id, cost_micro=cost or 0, delivered=delivered,
            usage=priced_usage if priced_usage.total_tokens else result.usage, latency_ms=latency_ms,
            status="ok" if error is None else "error", error_code=None if failure is None else failure.code,
            idem=(idem.scope, idem.key, ticket.request_id) if idem else None,  # the claim this request made
            idem_result=_idempotent_result(result, error, cost or 0) if idem else None,
        )

        async def attempt() -> Settlement:
            charged, available = await self.store.settle(**fields)  # type: ignore[union-attr, arg-type]
            return Settlement(charged if ticket.metered else cost, available, ticket.metered)

        try:
            return await self._retry(attempt)
        except Exception:
            # The work is done (images may be delivered): keep its charge and go on trying, rather than leave the
            # hold, the usage row and the idempotency claim open for reconciliation to refund.
            task = asyncio.create_task(self._settle_later(ticket, attempt), name=f"settle-{ticket.request_id}")
            self._later.add(task)
            task.add_done_callback(self._later.discard)
            raise

    async def _settle_later(self, ticket: Ticket, attempt) -> None:
        try:
            for tries, delay in enumerate(self.settle_retry_delays, 1):
                closing = await self._pause(delay)
                try:
                    ticket.settlement = await attempt()
                except Exception:
                    if closing:
                        log.error("settling request %s failed at shutdown too; reconciliation will release its hold",
                                  ticket.request_id, exc_info=True)
                        return
                    log.warning("settling request %s failed again (later try %d of %d)", ticket.request_id, tries,
                                len(self.settle_retry_delays), exc_info=True)
                    continue
                log.info("request %s settled %s", ticket.request_id, "at shutdown" if closing else "on a later try")
                return
            log.error("gave up settling request %s; its hold expires and reconciliation releases it",
                      ticket.request_id)
        finally:
            if ticket.settlement is None and self.store is not None:  # given up on
                self.store.let_expire(ticket.hold_id)

    async def _pause(self, seconds: float) -> bool:
        """Wait before the next try; True when the server stops meanwhile (the try is then the last one)."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """At shutdown, before the database closes: every settlement still being retried gets one last try now,
        instead of being cancelled in its pause (its hold would then be released, the work given away)."""
        self._closing.set()
        await asyncio.gather(*self._later, return_exceptions=True)
        if self.store is not None:
            await self.store.settle_unheard()

    def _policy(self, error: ImagegateError, engine: str) -> str:
        """What a failure costs: the failing channel's own policy, else the engine's in the price book."""
        return getattr(error, "failure_policy", None) or self.prices.policy(engine)

    @staticmethod
    async def _retry(call):
        for attempt in range(3):
            try:
                return await call()
            # The database away or busy: the transaction never began or rolled back whole. Other errors would fail
            # the same way again; and a turn to write that another process held for the whole write timeout is not
            # worth waiting for twice more here (the background tries take over).
            except Exception as exc:
                if not is_transient(exc) or attempt == 2 or no_turn_to_write(exc):
                    raise
                log.warning("settlement hit a database error; retrying", exc_info=True)
                await asyncio.sleep(0.2 * (attempt + 1))

    def _wake(self, ticket: Ticket) -> None:
        if ticket.idempotency is not None:
            slot = (ticket.idempotency.scope, ticket.idempotency.key)
            event = self._inflight.pop(slot, None)
            if event is not None:
                event.set()

    # --- idempotency ----------------------------------------------------------------------------------------

    async def idempotent_result(self, idem: Idempotency) -> IdempotencyRecord | None:
        """The finished result stored under this key (None: run it). Waits for a run of the same key that is in
        flight in this process; one in flight elsewhere is a retryable 409."""
        assert self.store is not None
        for _ in range(2):
            record = await self.store.idempotency_record(idem.scope, idem.key)
            if record is None:
                return None
            if record.body_hash != idem.body_hash:
                raise key_reused("with a different request body", "request")
            if record.state == "done":
                return record
            async with self._claiming(idem):  # a claim made here a moment ago has registered its run by now
                event = self._inflight.get((idem.scope, idem.key))
            if event is None:
                break
            await event.wait()
        raise Conflict(
            "A request with this Idempotency-Key is still running; retry in a moment to get its result.",
            code="idempotency_in_progress",
            headers={"retry-after": "1"},
        )


def _idempotent_result(result: "RunResult", error: ImagegateError | None, charged: int) -> dict[str, Any] | None:
    """What a retry with the same key gets back: stored image names (never bytes), usage and cost; or the error
    if it was charged for. An uncharged failure keeps nothing, so the retry runs again."""
    if error is not None:
        if charged == 0:
            return None
        return {"status": error.status, "error": error.to_dict(), "cost_micro": charged}
    usage: Usage = result.usage
    return {
        "status": 200,
        "created": int(time.time()),
        "cost_micro": charged,
        "usage": [usage.text_tokens, usage.image_tokens, usage.output_tokens],
        "images": [
            {"index": img.index, "format": img.format, "size": str(img.size), "name": img.stored.name,
             "expires_at": img.stored.expires_at, "revised_prompt": img.revised_prompt}
            for img in sorted(result.images, key=lambda i: i.index) if img.stored is not None
        ],
    }


def check_model_allowed(model_id: str, payer: Payer | None) -> None:
    """A key limited to some models may use only those (asked early too: before a request's images are fetched)."""
    if payer is not None and payer.allowed_models is not None and model_id not in payer.allowed_models:
        raise PermissionDenied(
            f"This API key may not use model '{model_id}'. It may use: {', '.join(payer.allowed_models) or 'no models'}.",
            param="model",
            code="model_not_allowed",
        )


class BillingRuntime:
    """The database side's life: migrate, register this server, reconcile what a dead one left, heartbeat."""

    def __init__(self, store: BillingStore, *, heartbeat_interval: float = 10.0, reconcile_every: int = 6) -> None:
        self.store = store
        self.interval = heartbeat_interval
        self.reconcile_every = reconcile_every
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.store.db.upgrade()
        await self.store.register()
        released = await self.store.reconcile()
        if released:
            log.warning("released %d hold(s) left by a server that stopped without settling them", released)
        self._task = asyncio.create_task(self._beat(), name="billing-heartbeat")

    async def _beat(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(self.interval)
            beats += 1
            try:
                await self.store.heartbeat()
                if beats % self.reconcile_every == 0:
                    released = await self.store.reconcile()
                    if released:
                        log.warning("released %d stale hold(s)", released)
            except Exception:  # the heartbeat must outlive a database hiccup
                log.exception("billing heartbeat failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await self.store.unregister()
        except Exception as exc:  # the database is away or locked: the row goes stale and is reconciled
            log.warning("could not unregister this server on the way out: %s", exc)
        finally:
            await self.store.db.dispose()
