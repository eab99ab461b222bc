"""Every error leaves as OpenAI's envelope, translated here and nowhere else."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagegate.db import is_transient
from imagegate.errors import ImagegateError, InvalidRequest, MethodNotAllowed, NotFound, ServerError

log = logging.getLogger("imagegate.api")

_NO_RETRY_TYPES = {"invalid_request_error", "image_generation_user_error"}


def error_response(exc: ImagegateError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.status < 500 and exc.status not in (408, 409, 429):
        # The SDK retries 409/429/5xx; a user error will fail the same way again.
        headers.setdefault("x-should-retry", "false")
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)


def _from_http(exc: StarletteHTTPException, request: Request) -> ImagegateError:
    if exc.status_code == 404:
        return NotFound(f"Unknown route: {request.method} {request.url.path}. See GET /v1/models and the OpenAI images API.")
    if exc.status_code == 405:
        allowed = exc.headers.get("Allow", "") if exc.headers else ""
        return MethodNotAllowed(
            f"Method {request.method} is not allowed on {request.url.path}." + (f" Allowed: {allowed}." if allowed else ""),
            headers={"Allow": allowed} if allowed else None,
        )
    err = ImagegateError(str(exc.detail), status=exc.status_code, type="invalid_request_error")
    return err


def install(app: FastAPI) -> None:
    @app.exception_handler(ImagegateError)
    async def _imagegate(request: Request, exc: ImagegateError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(_from_http(exc, request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        return error_response(InvalidRequest(f"Invalid request: {first.get('msg', 'bad input')}.", param=".".join(loc) or None))

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # A database away or busy, not one that refused what we asked (those stay 500s: retrying cannot help).
        # Nothing is charged for it: a hold whose commit went unheard is nobody's, it expires and is released.
        if not is_transient(exc):
            return await _unexpected(request, exc)
        log.error("database error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(ServerError(
            "The gateway's database is unavailable or busy, so the request was refused. Retry shortly.",
            status=503, code="database_unavailable", headers={"retry-after": "1"},
        ))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ServerError("The server had an error while processing your request."))

    for database_error in (DBAPIError, PoolTimeout):
        app.add_exception_handler(database_error, _database)
