"""The engine interface: one job in, a stream of events out.

Engines know nothing about HTTP, keys or money. They turn a validated :class:`Job` into events; the gateway
renders those events as a JSON response, an SSE stream or chat chunks.
"""

from __future__ import annotations

import asyncio
import base64

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal, Protocol

from PIL import Image

from imagegate.catalog import Model, Size
from imagegate.catalog.tokens import Usage


@dataclass(frozen=True)
class Job:
    request_id: str
    operation: Literal["generate", "edit"]
    model: Model
    prompt: str
    n: int
    size: Size
    quality: str  # resolved: never "auto"
    background: Literal["transparent", "opaque"]
    output_format: str
    output_compression: int
    images: tuple[Image.Image, ...] = ()
    mask: Image.Image | None = None
    partial_images: int = 0
    input_fidelity: str = "low"
    style: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # model-specific extras, e.g. complexity
    # For engines that relay to an upstream API: the uploads as sent (bytes, format) and the optional
    # parameters the client set explicitly, under their OpenAI names and already validated.
    image_files: tuple[tuple[bytes, str], ...] = ()
    mask_file: tuple[bytes, str] | None = None
    client_params: dict[str, Any] = field(default_factory=dict)
    # The consumer can take an image's base64 while it still arrives (a JSON answer in b64_json, nothing stored
    # first): a relay may then hand over an ImageDone whose base64 is a Base64Stream.
    b64_as_it_arrives: bool = False

    @property
    def transparent(self) -> bool:
        return self.background == "transparent"


@dataclass(frozen=True)
class Progress:
    """How far the engine is, 0-100, over all n images."""

    percent: int
    stage: Literal["queued", "generating", "finishing"] = "generating"
    queue_position: int | None = None


@dataclass(frozen=True)
class PartialImage:
    image_index: int
    partial_index: int
    data: bytes


class Base64Stream:
    """An image's base64 while an upstream still sends it: pieces of ASCII without control characters, quotes or
    backslashes (a JSON string's content as it is), in order. The relay appends and closes it, or fails it; a
    reader takes the pieces as they come and hears the failure. Readers never wait on the writer's pace: the relay
    reads the upstream whether anyone follows or not."""

    def __init__(self) -> None:
        self._pieces: list[bytes | memoryview] = []
        self._done = False
        self._error: BaseException | None = None
        self._waiters: list[asyncio.Future] = []  # one per waiting reader: cancelling one cancels no other
        self._readers = 0

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def failed(self) -> bool:
        return self._error is not None

    def append(self, piece: bytes | memoryview) -> None:
        if piece:
            self._pieces.append(piece)
            self._wake()

    def close(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._done and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def pieces(self) -> AsyncIterator[bytes | memoryview]:
        index = 0
        self._readers += 1
        try:
            while True:
                while index < len(self._pieces):
                    yield self._pieces[index]
                    index += 1
                if self._error is not None:
                    raise self._error
                if self._done:
                    return
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
        finally:
            self._readers -= 1

    def text(self) -> bytes | memoryview:
        """The whole base64, once it has all arrived."""
        if self._error is not None:
            raise self._error
        if not self._done:
            raise RuntimeError("the image's base64 has not all arrived yet")
        if len(self._pieces) == 1:
            return self._pieces[0]  # a view into the upstream's read, not a copy of it
        joined = b"".join(self._pieces)
        if not self._readers:  # keep one copy, not the joined one and every read the pieces point into
            self._pieces = [joined]
        return joined


@dataclass(frozen=True)
class ImageDone:
    """A finished image. Relays may hand over the upstream's base64 (as text, or as ASCII bytes still inside the
    upstream's answer) instead of bytes: passing it through untouched saves decoding and re-encoding megabytes per
    image; either form is produced on demand."""

    image_index: int
    data: bytes | None
    format: str
    size: Size
    revised_prompt: str | None = None
    b64: str | bytes | memoryview | Base64Stream | None = None
    # The usage the engine reported for this image alone, where it reports one per image (an upstream stream's
    # completed events): what a run that fails after it is charged for. The job's usage comes in JobDone.
    usage: Usage | None = None

    def __post_init__(self) -> None:
        if self.data is None and self.b64 is None:
            raise ValueError("an image needs its bytes or its base64 text")

    @property
    def arriving(self) -> bool:
        """Its base64 is still coming in: read it with ``b64.pieces()``."""
        return isinstance(self.b64, Base64Stream) and not self.b64.complete and not self.b64.failed

    @property
    def whole(self) -> bool:
        """All of it is here: an image handed over while arriving is whole once its base64 has all arrived."""
        return not isinstance(self.b64, Base64Stream) or (self.b64.complete and not self.b64.failed)

    def _settle_stream(self) -> None:
        if isinstance(self.b64, Base64Stream):
            object.__setattr__(self, "b64", self.b64.text())

    def bytes(self) -> bytes:
        if self.data is None:
            self._settle_stream()
            object.__setattr__(self, "data", base64.b64decode(self.b64))  # type: ignore[arg-type]
        return self.data  # type: ignore[return-value]

    def base64(self) -> str:
        self._settle_stream()
        if self.b64 is None:
            object.__setattr__(self, "b64", base64.b64encode(self.data).decode("ascii"))  # type: ignore[arg-type]
        elif not isinstance(self.b64, str):
            object.__setattr__(self, "b64", bytes(self.b64).decode("ascii"))
        return self.b64  # type: ignore[return-value]

    def base64_ascii(self) -> bytes | memoryview:
        """The base64 as ASCII bytes (the alphabet only), without copying what an upstream sent. Not for text
        that came from a JSON parser: that is what ``base64()`` is for."""
        self._settle_stream()
        if self.b64 is None:
            object.__setattr__(self, "b64", base64.b64encode(self.data))  # type: ignore[arg-type]
        if isinstance(self.b64, str):
            return self.b64.encode("ascii")
        return self.b64


@dataclass(frozen=True)
class JobDone:
    usage: Usage


Event = Progress | PartialImage | ImageDone | JobDone


class Engine(Protocol):
    name: str

    def run(self, job: Job) -> AsyncIterator[Event]:
        """Yield progress, partial images and one ImageDone per image, then exactly one JobDone."""
        ...

    async def aclose(self) -> None: ...
