"""What every relaying engine needs: the upstream HTTP session, classifying upstream failures, decoding image
payloads, downloading url-only answers within limits.

Upstream calls go through aiohttp: its C parser hands a 4 MB image answer over in a few large pieces, where a
pure-Python HTTP stack spent more time per relayed request than everything else in the gateway together.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import binascii
import email.utils
import json
import logging
import math
import ssl
import time
import urllib.request
from dataclasses import dataclass
from datetime import timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from imagegate import imaging
from imagegate.catalog import Size
from imagegate.catalog.tokens import Usage
from imagegate.engines.base import Job
from imagegate.billing.pricing import estimate_usage
from imagegate.errors import REFUSAL_CODES, EngineTimeout, InvalidImage, UpstreamError
from imagegate.fetch import env_proxy, public_connector, public_host, read_body, read_followed

if TYPE_CHECKING:
    from imagegate.config import ChannelConfig

_READ_BUFFER = 1 << 20  # bytes a response read may take at once; an image answer is megabytes
# Below the idle timeout of common servers (uvicorn closes after 5 s): reusing a connection the upstream is
# closing fails the request after it was sent, which cannot be retried safely.
_KEEPALIVE_SECONDS = 4.0


class UpstreamSession:
    """The one HTTP session every channel shares (one connection pool), made on first use inside the server's
    event loop and closed at shutdown."""

    def __init__(self, *, connect_timeout: float = 10.0) -> None:
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._public: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str] | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new(
                aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_SECONDS, ssl=_tls_context()))
        return self._session

    def public(self) -> aiohttp.ClientSession:
        """A session that connects to public addresses only, checked by the resolver it connects with: for links
        an upstream names on other hosts than its own."""
        if self._public is None or self._public.closed:
            self._public = self._new(public_connector(limit=0, keepalive_timeout=_KEEPALIVE_SECONDS,
                                                      ssl=_tls_context()))
        return self._public

    def _new(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            # A whole-answer deadline is the channel's (see with_deadline), not the session's.
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
            read_bufsize=_READ_BUFFER,
            auto_decompress=True,
            # Not trust_env: aiohttp would then also send ~/.netrc credentials to every host an upstream names.
            # Proxies from the environment are applied per request instead (proxy_for).
            trust_env=False,
        )

    def proxy_for(self, url: str) -> str | None:
        """The proxy from HTTP(S)_PROXY / NO_PROXY for ``url``, as an HTTP client is expected to honour them."""
        if self._proxies is None:
            self._proxies = urllib.request.getproxies()
        return env_proxy(url, self._proxies)

    async def aclose(self) -> None:
        for session in (self._session, self._public):
            if session is not None:
                await session.close()
        self._session = self._public = None


def _tls_context() -> ssl.SSLContext:
    """The system's trust store; where it is empty (slim container images), certifi's bundle."""
    context = ssl.create_default_context()
    if not context.cert_store_stats().get("x509_ca"):
        import certifi

        context.load_verify_locations(certifi.where())
    return context


log = logging.getLogger("imagegate.relay")


@dataclass
class UpstreamRequest:
    """One call to an upstream: a JSON body, or a multipart form built fresh for each attempt (a form is spent
    once sent)."""

    method: str
    url: str
    headers: dict[str, str]
    json_body: Any = None
    form: Callable[[], aiohttp.FormData] | None = None

    def body(self) -> Any:
        if self.form is not None:
            return self.form()
        if self.json_body is not None:
            return orjson.dumps(self.json_body)
        return None

    def all_headers(self) -> dict[str, str]:
        if self.json_body is not None and self.form is None:
            return {"Content-Type": "application/json", **self.headers}
        return self.headers

# Statuses that prove the upstream did not start on the image: it was refused or not reached.
NOTHING_GENERATED_STATUSES = {429, 502, 503}


def retry_after_seconds(headers: "CIMultiDictProxy[str] | dict[str, str]") -> float | None:
    """Retry-After as seconds (delta or HTTP date), or retry-after-ms; never negative. Unreadable ("30s", "soon",
    "nan"): as if there were none, and the usual back-off applies."""
    if "retry-after-ms" in headers:
        millis = _finite(headers["retry-after-ms"])
        if millis is not None:
            return max(0.0, millis / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000": RFC 5322's UTC of unknown origin, not this machine's local time
        parsed = parsed.replace(tzinfo=timezone.utc)
    return max(0.0, parsed.timestamp() - time.time())


def _finite(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _short_code(value: Any, default: str) -> str:
    """Upstream codes are free-form (numbers, long strings); ours are short strings that fit the usage log."""
    return str(value)[:64] if value not in (None, "") else default


def error_from_response(
    response: aiohttp.ClientResponse, body: bytes, channel: str, failure_policy: str
) -> UpstreamError:
    """Map an upstream error answer to our envelope, keeping its status, type, code and param.

    Two exceptions. 401/403/404 say the channel is misconfigured (its key, its model name), not the request: the
    client gets a 502 and never the upstream's message, which can quote the operator's key. And such answers,
    like 429 and other refusals before any work, are never charged whatever the channel's failure policy; a 400
    (the request itself refused, moderation included) follows the policy, since such upstreams bill it.
    """
    status = response.status
    upstream: dict[str, Any] = {}
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            upstream = parsed["error"]
    except (ValueError, UnicodeDecodeError):
        pass
    if status in (401, 403, 404):
        return UpstreamError(
            f"The upstream '{channel}' refused the gateway's request (HTTP {status}); the channel's key or model "
            "mapping needs the operator's attention.",
            status=502, code="upstream_misconfigured", nothing_generated=True, failure_policy="refund",
            retry_after=math.inf,  # the same channel will refuse again: fail over now, without retrying it
        )
    if _out_of_quota(upstream):
        return _quota_exhausted(channel)
    message = upstream.get("message") or f"The upstream '{channel}' answered HTTP {status}."
    extra = {k: v for k, v in upstream.items() if k not in ("message", "type", "code", "param") and isinstance(k, str)}
    nothing = status in NOTHING_GENERATED_STATUSES
    param = upstream.get("param")
    return UpstreamError(
        str(message)[:2000],
        status=status if 400 <= status < 600 else 502,
        type=_short_code(upstream.get("type"), "server_error" if status >= 500 else "invalid_request_error"),
        code=_short_code(upstream.get("code"), "rate_limit_exceeded" if status == 429 else "upstream_error"),
        param=str(param)[:100] if param is not None else None,
        nothing_generated=nothing,
        retry_after=retry_after_seconds(response.headers),
        failure_policy="refund" if nothing or (400 < status < 500) else failure_policy,
        extra=extra or None,
    )


# Error types of a refused request (OpenAI's, and the image models' own), as opposed to a failing upstream.
_REFUSAL_TYPES = ("invalid_request_error", "image_generation_user_error")


def _out_of_quota(err: dict[str, Any]) -> bool:
    return "insufficient_quota" in (err.get("code"), err.get("type"))


def _quota_exhausted(channel: str) -> UpstreamError:
    # The operator's account with the upstream is out of credit, not the client's with us: passed on as it is, the
    # client would read it as its own balance running out.
    return UpstreamError(
        f"The upstream '{channel}' has no quota left on the gateway's account; the operator needs to top it up.",
        status=503, type="server_error", code="upstream_quota_exhausted", nothing_generated=True,
        failure_policy="refund", retry_after=math.inf,  # no use retrying it soon: fail over now
    )


def stream_error(err: Any, channel: str, failure_policy: str) -> UpstreamError:
    """An ``error`` inside a 200 answer (a stream's error event, or a relay's JSON body holding only an error):
    the work may have started, so the channel's policy applies. A refusal of the request itself (a moderation
    block, say) is the client's 400, as it would be before any body; anything else, the upstream failing, a 502."""
    if not isinstance(err, dict):
        err = {"message": str(err)}
    if _out_of_quota(err):
        return _quota_exhausted(channel)
    refused = err.get("code") in REFUSAL_CODES or err.get("type") in _REFUSAL_TYPES
    return UpstreamError(
        str(err.get("message") or f"The upstream '{channel}' reported an error mid-stream.")[:2000],
        status=400 if refused else 502,
        type=_short_code(err.get("type"), "server_error"),
        code=_short_code(err.get("code"), "upstream_error"),
        param=str(err["param"])[:100] if err.get("param") is not None else None,
        failure_policy=failure_policy,
    )


# Failures that prove the request never reached the upstream: no connection was made.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def transport_error(exc: Exception, channel: str, failure_policy: str, *, sent: bool) -> UpstreamError:
    """A failure without an answer. Before the request was sent nothing can have been generated; after, the
    upstream may be working on (and billing) the image."""
    if isinstance(exc, _NOT_SENT) or not sent:
        return UpstreamError(
            f"Could not reach the upstream '{channel}': {type(exc).__name__}.",
            status=502, code="upstream_unreachable", nothing_generated=True, failure_policy=failure_policy,
        )
    if isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
        error = EngineTimeout(f"The upstream '{channel}' did not answer in time.", code="upstream_timeout")
        return UpstreamError(
            error.message, status=504, code="upstream_timeout", nothing_generated=False, failure_policy=failure_policy,
        )
    return UpstreamError(
        f"The connection to the upstream '{channel}' failed after the request was sent: {type(exc).__name__}.",
        status=502, code="upstream_disconnected", nothing_generated=False, failure_policy=failure_policy,
    )


def strip_data_url(value: str | bytes | memoryview) -> str | bytes | memoryview:
    """Relays send b64_json with or without a ``data:image/...;base64,`` prefix; OpenAI's clients expect none."""
    if isinstance(value, str):
        if value.startswith("data:"):
            return value.split(",", 1)[1] if "," in value else ""
        return value
    if bytes(value[:5]) == b"data:":
        comma = bytes(value[:512]).find(b",")
        return value[comma + 1:] if comma >= 0 else b""
    return value


def decode_b64_image(value: str | bytes | memoryview) -> bytes:
    value = strip_data_url(value)
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise ValueError("b64_json is not valid base64") from None


ERROR_BODY_LIMIT = 64 * 1024  # an error answer is a message, not a payload


@dataclass
class Attempt:
    """What a relay attempt got to: once the request may have left, a failure can no longer prove that the
    upstream did nothing."""

    sent: bool = False


async def with_deadline(channel: "ChannelConfig", attempt: Callable[[Attempt], AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """Run one relay attempt under the channel's whole-answer limit. A timeout is reported as such, and as
    possibly generated once the request had left."""
    state = Attempt()
    async for event in within(
        channel.timeout_s, attempt(state),
        lambda: transport_error(TimeoutError(), channel.name, channel.failure_policy, sent=state.sent),
    ):
        yield event


@contextlib.asynccontextmanager
async def upstream_call(
    session: UpstreamSession, request: UpstreamRequest, channel: "ChannelConfig", state: Attempt
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send ``request`` and hand over the streaming response; error answers and transport failures become
    UpstreamErrors, classified by whether the upstream can have started on the image."""
    try:
        state.sent = True  # from here on the upstream may be working on the image
        async with session.get().request(
            request.method, request.url, data=request.body(), headers=request.all_headers(),
            proxy=session.proxy_for(request.url),
            timeout=aiohttp.ClientTimeout(total=None, connect=channel.connect_timeout_s),
        ) as response:
            if response.status >= 400:
                body = await read_body(response, ERROR_BODY_LIMIT, truncate=True)
                raise error_from_response(response, body, channel.name, channel.failure_policy)
            yield response
    except UpstreamError:
        raise
    except (aiohttp.ClientError, OSError) as exc:
        # Only a failed connect proves the request never left; anything later may have started the image.
        raise transport_error(exc, channel.name, channel.failure_policy, sent=not isinstance(exc, _NOT_SENT)) \
            from None


async def within(
    seconds: float, events: AsyncIterator[Any], on_timeout: Callable[[], Exception]
) -> AsyncIterator[Any]:
    """Yield from ``events`` with every step bounded by one overall deadline.

    No timeout context stays open across a ``yield``: a deadline that fired while the consumer was busy (storing
    an image, say) would cancel the consumer's own await and look like a shutdown. Nor does the consumer's time
    count: the deadline moves on by it, so images already received are not lost to a timeout of the gateway's own
    making.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    event = await anext(events)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise on_timeout() from None
            handed = loop.time()
            yield event
            deadline += loop.time() - handed
    finally:
        await events.aclose()


async def download(
    session: UpstreamSession, url: str, *, max_bytes: int, trusted_hosts: frozenset[str] = frozenset()
) -> bytes:
    """An image an upstream pointed to. The URL came over the wire, so every hop must be a public address or a
    host the operator configured (the channel's own)."""
    async def hop(target: str) -> tuple[aiohttp.ClientSession, str | None]:
        host = urlsplit(target).hostname or ""
        trusted = host in trusted_hosts
        if not trusted and not await public_host(target):
            raise ValueError(f"refusing to download from {host or target!r}: not a public address")
        proxy = session.proxy_for(target)
        return (session.get() if trusted or proxy else session.public()), proxy

    return await read_followed(url, hop, max_bytes=max_bytes)  # its errors are ValueErrors that say what failed


class RelayEngine:
    """What both channel types share: the channel and the session, one attempt under the channel's deadline, and
    images fetched from links the upstream gave (only its own host or public addresses) in the format asked for."""

    kind = "relay"

    def __init__(self, channel: "ChannelConfig", client: UpstreamSession) -> None:
        self.channel = channel
        self.client = client
        self.name = f"{self.kind}:{channel.name}"
        self.trusted_hosts = trusted_hosts(channel.base_url)

    def run(self, job: Job) -> AsyncIterator[Any]:
        return with_deadline(self.channel, lambda state: self._attempt(job, state))

    def _attempt(self, job: Job, state: Attempt) -> AsyncIterator[Any]:
        raise NotImplementedError

    def malformed(self, what: str) -> UpstreamError:
        """A 200 whose answer cannot be used: the upstream did the work (and billed it), so no retry."""
        return UpstreamError(
            f"The upstream '{self.channel.name}' returned a malformed answer: {what}.",
            code="upstream_bad_response", failure_policy=self.channel.failure_policy,
        )

    async def usable_images(
        self, sources: list[Any], read: Callable[[int, Any], Awaitable[Any]], *, first: int = 0
    ) -> AsyncIterator[Any]:
        """``read(index, source)`` for each source: its image, numbered on from ``first`` (images already handed
        over). Fewer images than asked is an answer (seed 001), paid for what it holds: one that cannot be read or
        fetched is left out, and the request fails only if no image at all was delivered."""
        delivered, failed = first, None
        for position, source in enumerate(sources):
            try:
                done = await read(delivered, source)
            except (ValueError, aiohttp.ClientError, OSError) as exc:
                log.warning("upstream %s: image %d of %d is unusable: %s", self.channel.name, position + 1,
                            len(sources), exc)
                failed = failed or self.malformed(f"an unusable image: {exc}")
                continue
            yield done
            delivered += 1
        if failed is not None and not delivered:
            raise failed

    async def fetch_image(self, url: str, job: Job) -> tuple[bytes, str, Size]:
        raw = await download(self.client, url, max_bytes=self.channel.max_download_bytes,
                             trusted_hosts=self.trusted_hosts)
        return await asyncio.to_thread(conform, raw, job.output_format, job.output_compression, job.transparent)


def trusted_hosts(base_url: str) -> frozenset[str]:
    """Hosts a channel may point image links at without the public-address check: its own."""
    host = urlsplit(base_url).hostname or ""
    return frozenset({host}) if host else frozenset()


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
    try:
        upload = imaging.decode_upload(data, param="upstream image", max_pixels=100_000_000)
    except InvalidImage as exc:  # the upstream's fault, not the client's: a malformed answer, not a 400
        raise ValueError(f"its image cannot be read: {exc.message}") from None
    if upload.format == fmt:
        return data, fmt, upload.size
    return imaging.encode(upload.image, fmt, compression=compression, transparent=transparent), fmt, upload.size


class StreamTooLarge(ValueError):
    """An SSE line, or an event's data, past the channel's download limit: no image event is that long."""


async def sse_data(response: aiohttp.ClientResponse, max_bytes: int) -> AsyncIterator[str]:
    """The ``data:`` payloads of an SSE stream, multi-line data joined. Raises :class:`StreamTooLarge` past
    ``max_bytes`` in a line or an event, rather than keep what an upstream sends without a line break."""
    lines: list[str] = []
    size = 0
    async for line in _lines(response.content, max_bytes):
        if line == "":
            if lines:
                yield "\n".join(lines)
                lines, size = [], 0
        elif line.startswith("data:"):
            lines.append(line[5:].lstrip(" "))
            size += len(line)
            if size > max_bytes:
                raise StreamTooLarge(f"an event of its stream passed {max_bytes:,} bytes")
    if lines:
        yield "\n".join(lines)


async def _lines(stream: aiohttp.StreamReader, max_bytes: int) -> AsyncIterator[str]:
    """Lines of any length up to ``max_bytes`` (an event carrying a partial image is one line of megabytes, past
    what aiohttp's own line reader takes), without their line break: LF, CRLF or a lone CR, as SSE allows."""
    pending: list[bytes] = []
    held = 0  # bytes in pending
    after_cr = False  # the last chunk ended in CR: an LF opening the next one belongs to it
    async for chunk in stream.iter_any():
        start = 1 if after_cr and chunk[:1] == b"\n" else 0
        after_cr = False
        next_lf, next_cr = chunk.find(b"\n", start), chunk.find(b"\r", start)
        while next_lf >= 0 or next_cr >= 0:
            end = next_lf if next_cr < 0 or 0 <= next_lf < next_cr else next_cr
            if held + end - start > max_bytes:
                raise StreamTooLarge(f"a line of its stream passed {max_bytes:,} bytes")
            pending.append(chunk[start:end])
            yield b"".join(pending).decode("utf-8", "replace")
            pending, held = [], 0
            start = end + 1
            if end == next_cr:
                if start == len(chunk):
                    after_cr = True
                elif chunk[start] == 0x0A:
                    start += 1
            if next_lf >= 0 and next_lf < start:
                next_lf = chunk.find(b"\n", start)
            if next_cr >= 0 and next_cr < start:
                next_cr = chunk.find(b"\r", start)
        if start < len(chunk):
            pending.append(chunk[start:])
            held += len(chunk) - start
            if held > max_bytes:
                raise StreamTooLarge(f"a line of its stream passed {max_bytes:,} bytes")
    if pending:
        yield b"".join(pending).decode("utf-8", "replace")


def usage_from(raw: Any, job: Job, delivered: int) -> Usage:
    """The upstream's usage; where it gives none, or no output tokens (the images' own, billed at the highest
    rate), what the token tables say for what was delivered, marked as an estimate."""
    if isinstance(raw, dict):
        details = raw.get("input_tokens_details") or {}
        try:
            text = int(details.get("text_tokens", raw.get("input_tokens", 0) if not details else 0))
            image = int(details.get("image_tokens", 0))
            output = int(raw["output_tokens"])
            if min(text, image, output) >= 0:
                return Usage(text_tokens=text, image_tokens=image, output_tokens=output)
        except (KeyError, TypeError, ValueError):
            pass
    return estimate_usage(job, delivered)
