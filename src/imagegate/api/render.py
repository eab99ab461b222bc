"""Pipeline results as OpenAI wire shapes: ImagesResponse and the image stream events."""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any, Callable

import orjson
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from imagegate.catalog.tokens import Usage
from imagegate.engines.base import ImageDone
from imagegate.errors import ImagegateError
from imagegate.gateway import RunResult
from imagegate.storage import LocalStorage
from imagegate.validate import ImageRequest


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"text_tokens": usage.text_tokens, "image_tokens": usage.image_tokens},
        "output_tokens": usage.output_tokens,
        # Every output token of these models is an image token (the detail gpt-image-1.5 added, which the SDK types).
        "output_tokens_details": {"image_tokens": usage.output_tokens, "text_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def images_response(
    request: ImageRequest, result: RunResult, *, storage: LocalStorage, base_url: str
) -> dict[str, Any]:
    data = []
    for image in sorted(result.images, key=lambda i: i.index):
        item: dict[str, Any] = {}
        if request.response_format == "url":
            assert image.stored is not None
            item["url"] = storage.url(base_url, image.stored)
        elif isinstance(image.done.b64, str):
            item["b64_json"] = image.done.b64  # parsed text: orjson escapes whatever it holds
        else:
            item["b64_json"] = JSONText(image.done.base64_ascii())
        item.update(item_extras(request, image.done))
        data.append(item)
    return {"created": int(time.time()), "data": data, **images_tail(request, result)}


def item_extras(request: ImageRequest, image: ImageDone) -> dict[str, Any]:
    """What an image's item carries besides the image."""
    job = request.job
    if job.model.revises_prompts:
        return {"revised_prompt": image.revised_prompt or job.prompt}
    if request.original_prompt is not None:
        return {"revised_prompt": job.prompt}  # the prompt guard's rewrite: the prompt that was used
    return {}


def images_tail(request: ImageRequest, result: RunResult) -> dict[str, Any]:
    """What an images response carries after ``data``."""
    job = request.job
    tail: dict[str, Any] = {}
    if job.model.response in ("gpt", "chat-image"):
        tail["background"] = job.background
        tail["output_format"] = job.output_format
        # What was produced: an upstream may answer a different size than asked (size=auto, chat upstreams).
        tail["size"] = str(result.images[0].size) if result.images else str(job.size)
    if job.model.response == "gpt":
        tail["quality"] = job.quality
        tail["usage"] = usage_dict(result.usage)
    return tail


def _usage_shares(usage: Usage, n: int) -> list[Usage]:
    """Split a job's usage across its n completed events so that they add up to the whole."""
    base, extra = divmod(usage.output_tokens, n)
    shares = []
    for i in range(n):
        shares.append(
            Usage(
                text_tokens=usage.text_tokens if i == 0 else 0,
                image_tokens=usage.image_tokens if i == 0 else 0,
                output_tokens=base + (1 if i < extra else 0),
            )
        )
    return shares


class StreamRenderer:
    """Builds ``image_generation.*`` / ``image_edit.*`` SSE frames for one request."""

    def __init__(self, request: ImageRequest) -> None:
        self.request = request
        self.prefix = "image_edit" if request.job.operation == "edit" else "image_generation"
        self.partial_count = 0

    def _common(self, image: Any) -> dict[str, Any]:
        job = self.request.job
        return {
            "b64_json": image.base64() if hasattr(image, "base64") else base64.b64encode(image).decode("ascii"),
            "created_at": int(time.time()),
            # What was produced, as the non-stream answer says (a completed image knows it; a partial is bytes).
            "size": str(getattr(image, "size", None) or job.size),
            "quality": job.quality,
            "background": job.background,
            "output_format": job.output_format,
        }

    def partial(self, data: bytes, partial_index: int) -> bytes:
        body = {"type": f"{self.prefix}.partial_image", **self._common(data), "partial_image_index": partial_index}
        return frame(body["type"], body)

    def completed(self, data: bytes, usage: Usage) -> bytes:
        body = {"type": f"{self.prefix}.completed", **self._common(data), "usage": usage_dict(usage)}
        return frame(body["type"], body)

    def completed_all(self, images: list, usage: Usage) -> list[bytes]:
        shares = _usage_shares(usage, max(len(images), 1))
        return [self.completed(done, share) for done, share in zip(images, shares)]

    @staticmethod
    def error(exc: ImagegateError) -> bytes:
        return frame("error", {"type": "error", "error": exc.to_dict()})


def frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# Placeholders carry this process's random nonce: no text in an answer can pass for one.
_SPLICE_NONCE = secrets.token_hex(8)


class JSONText:
    """Bytes that already are a JSON string's content (base64: ASCII without control characters, quotes or
    backslashes), spliced into the answer as they are."""

    __slots__ = ("content",)

    def __init__(self, content: bytes | memoryview) -> None:
        self.content = content


def dumps(content: Any) -> bytes:
    """orjson, with JSONText spliced in afterwards: a relayed image's base64 is copied once, into the answer,
    instead of being sliced, decoded to text and scanned by the encoder (and each copy held at once)."""
    spliced: list[bytes | memoryview] = []
    nonce = _SPLICE_NONCE

    def placeholder(value: Any) -> str:
        if isinstance(value, JSONText):
            spliced.append(value.content)
            return f"\x00{nonce}{len(spliced) - 1}"
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    out = orjson.dumps(content, default=placeholder)
    if not spliced:
        return out
    parts: list[bytes | memoryview] = []
    pos = 0
    for index, text in enumerate(spliced):
        marker = b'"\\u0000' + nonce.encode() + str(index).encode() + b'"'
        at = out.index(marker, pos)  # placeholders come out in the order they were made
        parts += [out[pos:at], b'"', text, b'"']
        pos = at + len(marker)
    parts.append(out[pos:])
    return b"".join(parts)


class FastJSONResponse(Response):
    """orjson: image responses carry megabytes of base64, which the stdlib encoder takes milliseconds over."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class AnswerCutOff(Exception):
    """Raised by an arriving answer's body: what it forwards failed after the answer began."""


class ArrivingResponse(StreamingResponse):
    """A JSON answer written while its images arrive. One cut off (:class:`AnswerCutOff`) is left unended, so the
    server closes the connection: a client can never take half an answer for a whole one. An answer that ends
    neither way (the client left: cancelled mid-send, or before the body began) calls ``on_abandon``."""

    media_type = "application/json"

    def __init__(self, content: Any, *, headers: dict[str, str], on_abandon: Callable[[], None]) -> None:
        super().__init__(content, headers=headers)
        self.on_abandon = on_abandon
        self._ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._ended:
                self.on_abandon()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except AnswerCutOff:
            self._ended = True
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._ended = True
