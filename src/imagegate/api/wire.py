"""Reading requests, shared by every route: content type, a JSON object body, the request's id, the public base
URL."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from imagegate.errors import InvalidRequest


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = json.loads(raw)
    except ValueError as exc:  # bad JSON or UTF-8, and numbers past Python's 4,300-digit limit
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise InvalidRequest("The request body is not valid JSON here: it is nested too deeply.") from None
    if _holds_lone_surrogate(body):
        raise InvalidRequest(
            "The request body is not valid JSON text: a string holds a lone surrogate (\\ud800 to \\udfff without "
            "its pair), which is no character. Send text as UTF-8."
        )
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _holds_lone_surrogate(body: Any) -> bool:
    """json.loads takes lone surrogates, escaped (\\ud800) or raw (UTF-8 bytes ED A0 80), and they would fail much
    later, wherever the string is encoded (the prompt sent upstream, the error envelope naming the model)."""
    pending = [body]  # not recursive: the body may be nested almost as deep as the parser's own limit
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if value.isascii():  # a flag CPython keeps: megabytes of data URL cost nothing here
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def request_id(request: Request) -> str | None:
    """The id RequestIdMiddleware gave this request (its x-request-id)."""
    return getattr(request.state, "request_id", None)


def base_url(request: Request) -> str:
    """Where our signed links point: the configured public URL, else the request's own host."""
    return request.app.state.settings.public_base_url or str(request.base_url)
