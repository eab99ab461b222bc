"""Pure ASGI middleware: request ids on every response (and in the access log), and the request-size limit (413)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate.api.errors import error_response
from imagegate.errors import ImagegateError, PayloadTooLarge, ServerError

log = logging.getLogger("imagegate.api")
# One line per request once it is over, with the id the client saw (uvicorn's own access log, off, has none).
access_log = logging.getLogger("imagegate.access")


async def send_error(scope: Scope, receive: Receive, send: Send, error: ImagegateError, *,
                     final: bool = False) -> None:
    """The app's own error answer (api.errors), sent from below the app when no response has begun. ``final``:
    the client is not to retry, and the connection closes."""
    response = error_response(error)
    if final:
        response.headers["x-should-retry"] = "false"
        response.headers["connection"] = "close"
    await response(scope, receive, send)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        started = False
        status = 0
        since = time.monotonic()

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # The server cut the request off: its shutdown's grace ran out. Logged with the id the client has,
            # and answered, if nothing was sent yet, in the envelope (not the server's bare 500). Not to be retried
            # blindly: a run already under way may still finish within the gateway's own grace and be charged, so a
            # plain retry could pay twice; one with the same Idempotency-Key gets the result.
            log.warning("request %s (%s %s) cut off by the shutdown", request_id, scope.get("method"), scope.get("path"))
            if not started:
                with contextlib.suppress(Exception):  # the connection may be going too
                    await send_error(scope, receive, send_with_id, ImagegateError(
                        "The server shut down before the answer was ready. Work already under way may still "
                        "finish, be charged and have its images kept: if the request had an Idempotency-Key, a retry "
                        "with the same key gets them without paying again.", status=503, type="server_error",
                        code="server_shutting_down"), final=True)
            raise
        except Exception:
            # Starlette's own 500 handler sits outside every middleware and would answer without our request id.
            log.exception("unhandled error on %s %s (%s)", scope.get("method"), scope.get("path"), request_id)
            if started:
                raise
            await send_error(scope, receive, send_with_id,
                             ServerError("The server had an error while processing your request."))
        finally:
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info('%s - "%s %s" %s %s %.1fms', f"{client[0]}:{client[1]}" if client else "-",
                                scope.get("method"), scope.get("path"), status or "-", request_id,
                                (time.monotonic() - since) * 1000)


class BodyLimitMiddleware:
    """Refuse bodies over the limit before reading them when Content-Length says so, and while reading
    otherwise (chunked uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    def _message(self) -> str:
        return f"Request body too large: the limit is {self.max_bytes:,} bytes."

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(scope, receive, send, PayloadTooLarge(self._message()), final=True)
