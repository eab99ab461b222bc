"""The engine interface: one job in, a stream of events out.

Engines know nothing about HTTP, keys or money. They turn a validated :class:`Job` into events; the gateway
renders those events as a JSON response, an SSE stream or chat chunks.
"""

from __future__ import annotations

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
    b64: str | bytes | memoryview | None = None

    def __post_init__(self) -> None:
        if self.data is None and self.b64 is None:
            raise ValueError("an image needs its bytes or its base64 text")

    def bytes(self) -> bytes:
        if self.data is None:
            object.__setattr__(self, "data", base64.b64decode(self.b64))  # type: ignore[arg-type]
        return self.data  # type: ignore[return-value]

    def base64(self) -> str:
        if self.b64 is None:
            object.__setattr__(self, "b64", base64.b64encode(self.data).decode("ascii"))  # type: ignore[arg-type]
        elif not isinstance(self.b64, str):
            object.__setattr__(self, "b64", bytes(self.b64).decode("ascii"))
        return self.b64  # type: ignore[return-value]

    def base64_ascii(self) -> bytes | memoryview:
        """The base64 as ASCII bytes (the alphabet only), without copying what an upstream sent. Not for text
        that came from a JSON parser: that is what ``base64()`` is for."""
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
