"""How imagegate is served over HTTP: uvicorn's settings, and its HTTP/1.1 protocol with one change.

uvicorn frames each chunk of a chunked response by joining the chunk's header, the chunk and its trailer into
one new buffer: a copy of every byte of the body. An image answer written while it arrives is chunked (its end is
not known when it begins) and megabytes long, so that copy cost about a tenth of a relayed answer's time
(bench/README.md). Here a large chunk goes to the transport as three buffers instead, which uvloop sends with
one ``writev`` and no copy.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

# Below this a chunk is joined as uvicorn does: copying a few kilobytes costs less than a scatter write.
_SCATTER_FROM_BYTES = 64 * 1024


class _ScatterCycle(RequestResponseCycle):
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


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, whose requests are answered by :class:`_ScatterCycle`."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Every request's cycle passes here, pipelined ones included, before its first send.
        cycle.__class__ = _ScatterCycle
        super()._start_asgi_task(cycle, app)


def uvicorn_options(**options: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config``: ``options`` and imagegate's protocol."""
    return {"http": HttpProtocol, **options}
