"""How imagegate is served over HTTP: uvicorn's settings, its HTTP/1.1 protocol with one change, and the worker
processes of ``serve --workers N``.

The process that runs ``serve`` with workers only watches them: this module keeps the app out of it (imported,
the app is about 100 MB of a process's memory, which the workers have already).

uvicorn frames each chunk of a chunked response by joining the chunk's header, the chunk and its trailer into
one new buffer: a copy of every byte of the body. An image answer written while it arrives is chunked (its end is
not known when it begins) and megabytes long, so that copy cost about a tenth of a relayed answer's time
(bench/README.md). Here a large chunk goes to the transport as three buffers instead, which uvloop sends with
one ``writev`` and no copy.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from imagegate.config import WORKER_ENV, Settings

# Below this a chunk is joined as uvicorn does: copying a few kilobytes costs less than a scatter write.
_SCATTER_FROM_BYTES = 64 * 1024


class _ScatterCycle(RequestResponseCycle):
    # The transport keeps the body until the socket has taken it, uncopied: a body must not change after it was
    # sent (imagegate sends bytes, and memoryviews of the upstream's bytes).

    async def send(self, message: Any) -> None:
        body = message.get("body", b"")
        if (
            message["type"] != "http.response.body"
            or len(body) < _SCATTER_FROM_BYTES
            or not self.response_started
            or self.response_complete
            or not self.chunked_encoding
            or self.scope["method"] == "HEAD"
        ):
            await super().send(message)
            return
        # What uvicorn's send does for a chunked body, less the join.
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        more_body = message.get("more_body", False)
        self.transport.writelines((b"%x\r\n" % len(body), body, b"\r\n" if more_body else b"\r\n0\r\n\r\n"))
        if not more_body:
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()  # starts a pipelined request, resumes reading, arms the keep-alive timeout


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, whose requests are answered by :class:`_ScatterCycle`."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Every request's cycle passes here, pipelined ones included, before its first send. Only uvloop's
        # transports write a list of buffers in place: asyncio's join them (3.11) or, before 3.12.9, skipped flow
        # control doing it.
        if type(self.transport).__module__.startswith("uvloop"):
            cycle.__class__ = _ScatterCycle
        super()._start_asgi_task(cycle, app)


def uvicorn_options(**options: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config``: ``options``, imagegate's protocol, and no
    access log of uvicorn's (imagegate's own, ``imagegate.access``, carries each request's id)."""
    return {"http": HttpProtocol, "access_log": False, **options}


def _check_child(settings: Settings, answer) -> None:
    """Build the app once: a bad setting shows here, and the URL-signing secret is made before any worker could
    race to draw its own (two secrets would reject each other's links). Workers migrate the schema themselves,
    one at a time (the database's write lock)."""
    try:
        from imagegate.app import create_app

        create_app(settings)
    except Exception as exc:  # every problem goes back to the parent as its one line
        answer.send(str(exc) or type(exc).__name__)
    else:
        answer.send("")


def check_in_subprocess(settings: Settings) -> str:
    """_check_child in a spawned process; returns its problem ("" if none)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_check_child, args=(settings, send), name="imagegate-check")
    child.start()
    send.close()
    try:
        problem = receive.recv()
    except EOFError:
        problem = f"the start-up check died (exit code {child.exitcode})"
    child.join()
    return problem


def run_workers(workers: int, **options: Any) -> int:
    """`serve --workers N`: uvicorn's supervisor, and an exit status that says how it stopped. When a worker
    fails to start (one restarted while the database is away, say) the supervisor stops them all and returns as
    after a signal: the server exited 0, and `Restart=on-failure` never brought it back."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("imagegate.serving:worker_app", factory=True, workers=workers, **options)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    try:
        supervisor.run()
    except KeyboardInterrupt:  # pragma: no cover - the supervisor handles SIGINT itself
        pass
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        logging.getLogger("imagegate").error("a worker failed to start: every worker was stopped")
        return STARTUP_FAILURE
    return 0


def worker_app() -> Any:
    """The app of one `serve --workers N` process (uvicorn's factory): the settings the parent read."""
    from imagegate.app import create_app

    settings = Settings.model_validate_json(os.environ[WORKER_ENV])
    configure_logging(settings)
    return create_app(settings)


def configure_logging(settings: Settings) -> None:
    """The server's log lines, for the serving process and every worker alike."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
