"""The request pipeline: validated request -> guard -> queue -> engine -> stored results, as events.

Every endpoint renders the same event stream differently (a JSON body, SSE, chat chunks). The engine runs in a
task of its own, detached from the HTTP request: a client that disconnects does not cancel work that is already
paid for; the images are still produced and stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Mapping, TypeVar

from imagegate.billing.pricing import estimate_usage
from imagegate.catalog import Size
from imagegate.catalog.tokens import Usage
from imagegate.engines.base import Engine, Event, ImageDone, JobDone, PartialImage, Progress
from imagegate.errors import EngineError, ImagegateError, ModerationBlocked, ServerError
from imagegate.queueing import FifoLimiter
from imagegate.storage import LocalStorage, StoredImage
from imagegate.validate import ImageRequest

if TYPE_CHECKING:
    from imagegate.billing import Billing, Idempotency, Settlement, Ticket
    from imagegate.guard import PromptGuard
    from imagegate.moderation import ModerationClient

log = logging.getLogger("imagegate.gateway")
T = TypeVar("T")


@dataclass
class DeliveredImage:
    done: ImageDone
    stored: StoredImage | None = None

    @property
    def index(self) -> int:
        return self.done.image_index

    @property
    def format(self) -> str:
        return self.done.format

    @property
    def size(self) -> Size:
        return self.done.size

    @property
    def revised_prompt(self) -> str | None:
        return self.done.revised_prompt

    @property
    def data(self) -> bytes:
        return self.done.bytes()


@dataclass
class RunResult:
    images: list[DeliveredImage] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    partial_images: int = 0  # partial images streamed; each is billed as 100 output tokens
    # The engine's error after some images were whole: those are answered and charged, the rest is not made.
    cut_short: ImagegateError | None = None
    prompt_used: str = ""
    started: float = 0.0
    finished: float = 0.0


@dataclass(frozen=True)
class Stored:
    """Emitted after ImageDone once the image is on disk (url responses, abandoned runs)."""

    image_index: int
    stored: StoredImage


_END = object()


class Run:
    """One request in flight. Consumers iterate :meth:`events`; the work goes on if they leave."""

    def __init__(self, request: ImageRequest, ticket: "Ticket | None" = None, *,
                 keep_late: "Callable[[Run], None] | None" = None) -> None:
        self.request = request
        self.ticket = ticket  # the request's hold, settled by the run's own task once it ends
        self.settlement: "Settlement | None" = None
        self.result = RunResult(prompt_used=request.job.prompt, started=time.monotonic())
        self._queue: asyncio.Queue = asyncio.Queue()
        self.abandoned = False
        self.task: asyncio.Task | None = None
        self.error: ImagegateError | None = None  # how the run ended, once it has
        self._keep_late = keep_late  # stores the images of a run left after it ended

    @property
    def ended(self) -> bool:
        """The work is over and what it stores is stored: a client leaving from now on (while the run settles, or
        while its answer is still being written) has its images kept by ``keep_late``, not by the run's task."""
        return self.result.finished > 0

    def _emit(self, item: object) -> None:
        self._queue.put_nowait(item)

    async def events(self) -> AsyncIterator[Event | Stored]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    async def wait(self) -> RunResult:
        async for _ in self.events():
            pass
        return self.result

    def abandon(self) -> None:
        """The client went away: finish anyway and keep the images (also when it left while the answer was still
        being written after the run had ended)."""
        if self.abandoned:
            return
        self.abandoned = True
        if self.ended and self._keep_late is not None:
            self._keep_late(self)


def _log_kept(run: Run, how: str) -> None:
    # The operator's way to the images a client paid for and never received (the request id is the one it saw).
    names = [d.stored.name for d in run.result.images if d.stored is not None]
    if names:
        log.info("request %s %s; %d image(s) kept: %s", run.request.job.request_id, how, len(names), " ".join(names))


class Gateway:
    def __init__(
        self,
        *,
        engines: Mapping[str, Engine],
        storage: LocalStorage,
        guard: "PromptGuard | None" = None,
        guard_policy: str = "block",
        moderation: "ModerationClient | None" = None,
        engine_concurrency: int = 4,
        engine_queue_limit: int | None = None,
        billing: "Billing | None" = None,
    ) -> None:
        self.engines = dict(engines)
        self.billing = billing
        self.storage = storage
        self.guard = guard
        self.guard_policy = guard_policy
        self.moderation = moderation
        # Relays carry their own per-channel caps; the gateway's queue only needs to admit that many.
        self._engine_concurrency = engine_concurrency
        self.limiters = {name: FifoLimiter(self._concurrency(engine), engine_queue_limit)
                         for name, engine in self.engines.items()}
        self._tasks: set[asyncio.Task] = set()  # runs: cancelled at shutdown (their holds are then refunded)
        # Work on what is already paid for: a charge being committed, images being kept. Shutdown waits for it
        # instead of cancelling it, since the database and the storage must outlive it.
        self._finishing: set[asyncio.Future] = set()

    def _concurrency(self, engine: Engine) -> int:
        return getattr(engine, "concurrency", self._engine_concurrency)

    def resize_queues(self) -> None:
        """Each engine's queue admits what the engine takes now (a relay's channels changed their caps)."""
        for name, engine in self.engines.items():
            self.limiters[name].resize(self._concurrency(engine))

    async def preflight(
        self, request: ImageRequest, principal: object | None = None, *, endpoint: str = "images"
    ) -> ImageRequest:
        """Checks that must refuse before anything is spent: the prompt guard's rules, then the optional
        moderation endpoint. A key may carry its own guard policy over the deployment's."""
        try:
            return await self._preflight(request, getattr(principal, "guard_policy", None) or self.guard_policy)
        except ModerationBlocked as exc:
            if self.billing is not None:
                categories = tuple(exc.extra.get("moderation_details", {}).get("categories", ()))
                await self.billing.log_blocked(request, principal, endpoint=endpoint, categories=categories)  # type: ignore[arg-type]
            raise

    async def _preflight(self, request: ImageRequest, policy: str) -> ImageRequest:
        if policy == "off":
            return request
        if self.guard is not None:
            verdict = self.guard.check(request.job.prompt, moderation=request.moderation, policy=policy)  # type: ignore[arg-type]
            if verdict.action == "block":
                log.info("prompt guard blocked request %s: %s", request.job.request_id, ", ".join(verdict.categories))
                raise ModerationBlocked(
                    verdict.message or "Your request was rejected as a result of our safety system.",
                    extra={"moderation_details": {"moderation_stage": "input", "categories": list(verdict.categories)}},
                )
            if verdict.action == "rewrite":
                log.info("prompt guard rewrote request %s: %s", request.job.request_id, ", ".join(verdict.categories))
                request = replace(
                    request, job=replace(request.job, prompt=verdict.prompt), original_prompt=request.job.prompt
                )
        if self.moderation is not None:
            await self.moderation.check(request.job.prompt)
        return request

    async def begin(
        self,
        request: ImageRequest,
        principal: object | None = None,
        *,
        store: bool | None = None,
        endpoint: str = "images",
        idempotency: "Idempotency | None" = None,
    ) -> Run:
        """Hold the most the request can cost on the caller's account (429 ``insufficient_quota`` if it cannot be
        covered, and nothing runs), then start it. The run's own task settles the hold when the work ends.
        A full queue is refused first (503 ``engine_overloaded``), before anything is held."""
        self._check_room(request)
        if self.billing is None:
            return self.start(request, store=store)
        ticket = await self.billing.reserve(request, principal, endpoint=endpoint, idempotency=idempotency)  # type: ignore[arg-type]
        try:
            # An idempotent result is replayed from storage, so its images are kept whatever the format.
            return self.start(request, store=True if idempotency is not None else store, ticket=ticket)
        except BaseException:
            await self.billing.abort(ticket)
            raise

    def _engine(self, request: ImageRequest) -> Engine:
        engine = self.engines.get(request.job.model.engine)
        if engine is None:
            raise ServerError(f"No engine '{request.job.model.engine}' is configured for model '{request.job.model.id}'.")
        return engine

    def _check_room(self, request: ImageRequest) -> None:
        self.limiters[self._engine(request).name].check_room()

    def start(self, request: ImageRequest, *, store: bool | None = None, ticket: "Ticket | None" = None) -> Run:
        """Start the engine work in a detached task and return the run to read events from. The queue's length
        limit is checked again when the run joins it (others may have joined while the hold was placed)."""
        engine = self._engine(request)
        store_images = request.response_format == "url" if store is None else store
        if store_images and request.job.b64_as_it_arrives:
            # Images kept (for a link, or for an idempotent replay) are read whole before they are answered.
            request = replace(request, job=replace(request.job, b64_as_it_arrives=False))
        run = Run(request, ticket, keep_late=self._keep_late)
        run.task = self._track(
            asyncio.create_task(self._drive(run, engine, store_images), name=f"run-{request.job.request_id}"))
        return run

    def _track(self, task: asyncio.Task) -> asyncio.Task:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _finish(self, work: Awaitable[T]) -> asyncio.Future[T]:
        future = asyncio.ensure_future(work)
        self._finishing.add(future)
        future.add_done_callback(self._finishing.discard)
        return future

    def _keep_late(self, run: Run) -> None:
        """A client left after its run ended (while it settled, or while its answer was being written): the images
        it was charged for are stored, as for a client that left earlier."""
        if run.error is None and run.result.images:
            self._finish(asyncio.create_task(self._store_all(run, late=True),
                                             name=f"keep-{run.request.job.request_id}"))

    async def _store_all(self, run: Run, *, late: bool = False) -> None:
        for delivered in run.result.images:
            if delivered.stored is None:
                await self._store(run, delivered)
        if late:
            _log_kept(run, "left after its run ended, before its answer was delivered")

    async def _store(self, run: Run, delivered: DeliveredImage) -> None:
        keep = self.billing.keep_images_for(run.ticket) if self.billing is not None and run.ticket is not None else 0
        delivered.stored = await self.storage.put(delivered.data, delivered.format, keep_at_least=keep)
        run._emit(Stored(delivered.index, delivered.stored))

    async def _drive(self, run: Run, engine: Engine, store_images: bool) -> None:
        job = run.request.job
        limiter = self.limiters[engine.name]
        error: ImagegateError | None = None
        cancelled = False
        try:
            async for position in limiter.acquire():
                run._emit(Progress(0, "queued", queue_position=position))
            try:
                async for event in engine.run(job):
                    if isinstance(event, ImageDone):
                        delivered = DeliveredImage(event)
                        run.result.images.append(delivered)
                        run._emit(event)
                        if (store_images or run.abandoned) and not event.arriving:
                            await self._store(run, delivered)
                    elif isinstance(event, JobDone):
                        run.result.usage = event.usage
                    elif isinstance(event, (Progress, PartialImage)):
                        if isinstance(event, PartialImage):
                            run.result.partial_images += 1
                        run._emit(event)
            except ImagegateError as exc:
                # Images already whole are the client's: answered and charged, not thrown away with the error. With
                # one handed on while arriving and never finished, the answer is cut off instead (api.images).
                images = run.result.images
                if not images or not all(image.done.whole for image in images):
                    raise
                # Kept past this frame, so without its traceback: that holds this frame, which holds the run (a
                # cycle only the cyclic collector would free, images and upstream response included).
                exc.__traceback__ = exc.__context__ = exc.__cause__ = None
                run.result.cut_short = exc
                if not run.result.usage.total_tokens:
                    # The job's usage never came: what the engine reported for each image, else the tables' figure
                    # (the answer shows what is billed).
                    reported = [image.done.usage for image in images]
                    if all(usage is not None for usage in reported):
                        run.result.usage = sum(reported, Usage())  # type: ignore[arg-type]
                    else:
                        run.result.usage = estimate_usage(job, len(images))
                log.warning("request %s: %s after %d of %d image(s); answering those", job.request_id, exc.code,
                            len(images), job.n)
            finally:
                limiter.release()
            if store_images or run.abandoned:
                # Images handed over while still arriving, or produced before the client left, are stored now.
                await self._store_all(run)
            if run.abandoned:
                _log_kept(run, "finished after the client left")
            if not run.result.images:
                raise EngineError(f"The engine for '{job.model.id}' produced no image.")
        except ImagegateError as exc:
            error = exc
        except asyncio.CancelledError:
            error = EngineError("The request was cancelled while the server shut down.")
            cancelled = True
        except Exception as exc:  # an engine bug must still end the run with an error the client can read
            log.exception("engine %s failed on request %s", engine.name, job.request_id)
            error = EngineError(f"The engine failed: {type(exc).__name__}.")
        finally:
            run.result.finished = time.monotonic()
            run.error = error  # with the time above, the run has ended: abandon() keeps the images from here on
            # Settle here, in the run's own task, before the consumer hears the end: exactly once, whether the
            # client is still there, streamed, or left.
            if self.billing is not None and run.ticket is not None:
                try:
                    run.settlement = await asyncio.shield(self._finish(
                        self.billing.settle(run.ticket, run.result, error, engine=engine.name, cancelled=cancelled)
                    ))
                except (Exception, asyncio.CancelledError):
                    # Billing keeps retrying it in the background with the charge it computed; if that gives up
                    # too, the hold expires and reconciliation releases it.
                    log.exception("settling request %s failed or was interrupted", job.request_id)
            if error is not None:
                run._emit(error)
            run._emit(_END)
        if cancelled:
            raise asyncio.CancelledError

    async def aclose(self, grace: float = 0.0) -> None:
        """Let runs still going (their clients gone, or answers still being written) finish for up to ``grace``
        seconds, keeping their images; then cancel the rest, which are refunded."""
        if self._tasks and grace > 0:
            log.info("waiting up to %gs for %d run(s) to finish", grace, len(self._tasks))
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            log.warning("request %s: cut off by the shutdown", task.get_name().removeprefix("run-"))
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # A run cancelled while it was already settling left its charge being committed, and a client that left
        # late may have images still being kept: the database and the storage close only after both.
        while self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        for engine in self.engines.values():
            await engine.aclose()
