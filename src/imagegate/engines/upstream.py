"""What every relaying engine needs: classifying upstream failures, decoding image payloads, downloading
url-only answers within limits."""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import time
from typing import Any

import httpx
import httpcore
import orjson

from imagegate import imaging
from imagegate.catalog import Size
from imagegate.errors import EngineTimeout, UpstreamError

# httpcore reads responses 64 KiB at a time, and every read costs a trip through anyio: a 4 MB image answer
# took ~100 of them. A larger read size only lets one read take what the socket already holds.
if hasattr(httpcore, "AsyncHTTP11Connection"):
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = max(httpcore.AsyncHTTP11Connection.READ_NUM_BYTES, 1 << 20)

# Statuses that prove the upstream did not start on the image: it was refused or not reached.
NOTHING_GENERATED_STATUSES = {429, 502, 503}


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Retry-After as seconds (delta or HTTP date), or retry-after-ms."""
    if "retry-after-ms" in headers:
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def error_from_response(response: httpx.Response, body: bytes, channel: str, failure_policy: str) -> UpstreamError:
    """Map an upstream error answer to our envelope, keeping its status, type, code and param."""
    status = response.status_code
    upstream: dict[str, Any] = {}
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            upstream = parsed["error"]
    except (ValueError, UnicodeDecodeError):
        pass
    message = upstream.get("message") or f"The upstream '{channel}' answered HTTP {status}."
    extra = {k: v for k, v in upstream.items() if k not in ("message", "type", "code", "param")}
    nothing = status in NOTHING_GENERATED_STATUSES
    return UpstreamError(
        str(message),
        status=status if 400 <= status < 600 else 502,
        type=str(upstream.get("type") or ("server_error" if status >= 500 else "invalid_request_error")),
        code=upstream.get("code") or ("rate_limit_exceeded" if status == 429 else "upstream_error"),
        param=upstream.get("param"),
        nothing_generated=nothing,
        retry_after=retry_after_seconds(response.headers),
        failure_policy=failure_policy,
        extra=extra or None,
    )


def transport_error(exc: Exception, channel: str, failure_policy: str, *, sent: bool) -> UpstreamError:
    """A failure without an answer. Before the request was sent nothing can have been generated; after, the
    upstream may be working on (and billing) the image."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) or not sent:
        return UpstreamError(
            f"Could not reach the upstream '{channel}': {type(exc).__name__}.",
            status=502, code="upstream_unreachable", nothing_generated=True, failure_policy=failure_policy,
        )
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        error = EngineTimeout(f"The upstream '{channel}' did not answer in time.", code="upstream_timeout")
        return UpstreamError(
            error.message, status=504, code="upstream_timeout", nothing_generated=False, failure_policy=failure_policy,
        )
    return UpstreamError(
        f"The connection to the upstream '{channel}' failed after the request was sent: {type(exc).__name__}.",
        status=502, code="upstream_disconnected", nothing_generated=False, failure_policy=failure_policy,
    )


def strip_data_url(value: str) -> str:
    """Relays send b64_json with or without a ``data:image/...;base64,`` prefix; OpenAI's clients expect none."""
    if value.startswith("data:"):
        return value.split(",", 1)[1] if "," in value else ""
    return value


def decode_b64_image(value: str) -> bytes:
    value = strip_data_url(value)
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise ValueError("b64_json is not valid base64") from None


async def read_body(response: httpx.Response, max_bytes: int) -> bytes:
    """The body, up to a limit. Not ``response.aread()``: that caches the body on the response, and httpx's
    response and stream reference each other, so megabytes would live until the cycle collector runs."""
    chunks, total = [], 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise ValueError(f"the upstream's answer is larger than {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def download(client: httpx.AsyncClient, url: str, *, max_bytes: int) -> bytes:
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            raise ValueError(f"image download answered HTTP {response.status_code}")
        return await read_body(response, max_bytes)


def conform(data: bytes, fmt: str, compression: int, transparent: bool) -> tuple[bytes, str, Size]:
    """The upstream's image in the format the client asked for; re-encoded only when it differs.

    When the format already matches, only the header is read (size and format): decoding megapixels on every
    relayed image would cost more than the rest of the relay together.
    """
    sniffed = imaging.sniff_format(data)
    if sniffed == fmt:
        size = imaging.header_size(data)
        if size is not None:
            return data, fmt, size
    upload = imaging.decode_upload(data, param="upstream image", max_pixels=100_000_000)
    if upload.format == fmt:
        return data, fmt, upload.size
    return imaging.encode(upload.image, fmt, compression=compression, transparent=transparent), fmt, upload.size


_B64_KEY = b'"b64_json":'


def loads_images_json(body: bytes) -> Any:
    """Parse an images answer with its base64 strings lifted out first.

    The image strings are nearly all of the bytes, and a JSON parser validates and copies every one of them.
    Base64 has no quotes or backslashes, so each value ends at the next quote and can be cut out with a byte
    search; the small remainder goes to the real parser. Anything unusual (escapes, non-string values, a key
    outside ``data[]``) falls back to parsing the whole body.
    """
    lifted: list[bytes] = []
    pieces: list[bytes] = []
    pos = 0
    while (found := body.find(_B64_KEY, pos)) >= 0:
        start = found + len(_B64_KEY)
        while start < len(body) and body[start] in b" \t\r\n":
            start += 1
        if start >= len(body) or body[start] != 0x22:
            return orjson.loads(body)
        end = body.find(b'"', start + 1)
        if end < 0:
            raise orjson.JSONDecodeError("unterminated b64_json string", body.decode("utf-8", "replace")[:64], start)
        value = body[start + 1:end]
        if b"\\" in value:
            return orjson.loads(body)
        pieces.append(body[pos:start])
        pieces.append(b'"\\u0000%d"' % len(lifted))
        lifted.append(value)
        pos = end + 1
    if not lifted:
        return orjson.loads(body)
    pieces.append(body[pos:])
    doc = orjson.loads(b"".join(pieces))
    restored = 0
    items = doc.get("data") if isinstance(doc, dict) else None
    for item in items if isinstance(items, list) else ():
        placeholder = item.get("b64_json") if isinstance(item, dict) else None
        if isinstance(placeholder, str) and placeholder.startswith("\x00"):
            item["b64_json"] = lifted[int(placeholder[1:])].decode("ascii")
            restored += 1
    if restored != len(lifted):
        return orjson.loads(body)
    return doc
