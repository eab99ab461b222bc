"""Requests against the model's capabilities, the way OpenAI validates them.

The input is what the API layer parsed off the wire (JSON values, or multipart strings plus file bytes); the
output is a :class:`ImageRequest` holding an engine :class:`Job`. Every refusal is a 400 naming the parameter
and saying what is allowed.
"""

from __future__ import annotations

import asyncio

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from imagegate import imaging
from imagegate.catalog import Catalog, Model, parse_size
from imagegate.engines.base import Job
from imagegate.errors import InvalidRequest, InvalidType, MissingParameter, UnknownParameter

# Parameters any image request may carry; which of them a given model takes is in the catalog.
GENERATION_PARAMS = {
    "prompt", "model", "n", "size", "quality", "background", "output_format", "output_compression",
    "moderation", "stream", "partial_images", "response_format", "style", "user", "safety_identifier",
    "complexity",
}
# The images themselves (multipart files, a JSON body's images/mask, chat messages' parts) arrive apart from the
# fields: a field by one of their names is unknown.
EDIT_PARAMS = GENERATION_PARAMS | {"input_fidelity"}
_IMAGE_NAMES = {"image", "image[]", "images", "mask"}
_IMAGES_GO = ("A multipart edit sends its images as files in 'image' or 'image[]' (and 'mask'); a JSON edit sends "
              "them in 'images': [{image_url}] (and 'mask': {image_url}).")
DEFAULT_MODEL = "gpt-image-1.5"
# Optional parameters a relay forwards as the client sent them (size, n, quality and the rest are sent resolved).
_RELAYED = {
    "background", "output_format", "output_compression", "moderation", "style", "user",
    "safety_identifier", "complexity", "input_fidelity",
}
MAX_PARTIAL_IMAGES = 3
TOTAL_PIXEL_FACTOR = 2.5  # all input images together: this many times the per-image pixel limit
MAX_IDENTIFIER_CHARS = 256


@dataclass
class RawRequest:
    """A request as parsed off the wire, before validation."""

    operation: Literal["generate", "edit"]
    fields: dict[str, Any]
    multipart: bool = False
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (param name, bytes)
    mask: bytes | None = None
    # What refusals name: the images together (a JSON edit's 'images', a chat message's content; else the first
    # image's own field) and the mask (a JSON edit's 'mask.image_url').
    images_param: str | None = None
    mask_param: str = "mask"
    # The id the API answered with (x-request-id), carried into the logs, the holds and the usage log, so that
    # the id a user reports finds the request; None (off the API): a new one.
    request_id: str | None = None


@dataclass(frozen=True)
class ImageRequest:
    job: Job
    response_format: Literal["b64_json", "url"]
    stream: bool
    moderation: Literal["auto", "low"]
    user: str | None
    original_prompt: str | None = None  # set when the prompt guard rewrote the prompt


def _one_of(values: tuple[str, ...] | list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + f" and {quoted[-1]}"


class _Fields:
    """Typed access to request fields with OpenAI-style errors; multipart values arrive as strings."""

    def __init__(self, values: dict[str, Any], multipart: bool) -> None:
        self.values = values
        self.multipart = multipart

    def has(self, name: str) -> bool:
        return self.values.get(name) is not None

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidType(
                f"Invalid type for '{name}': expected a string, but got {_type_name(value)} instead.", param=name
            )
        return value

    def choice(self, name: str, allowed: tuple[str, ...] | list[str], default: str, what: str = "") -> str:
        value = self.string(name, default)
        assert value is not None
        if value not in allowed:
            raise InvalidRequest(
                f"Invalid value for '{name}': '{value}'{what}. Supported values are: {_one_of(allowed)}.", param=name
            )
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.values.get(name)
        if value is None:
            return default
        if self.multipart and isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,9}", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidType(
                f"Invalid type for '{name}': expected an integer, but got {_type_name(value)} instead.", param=name
            )
        if value < low:
            raise InvalidRequest(
                f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
                param=name,
            )
        if value > high:
            raise InvalidRequest(
                f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
                param=name,
            )
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.values.get(name)
        if value is None:
            return default
        if self.multipart and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise InvalidType(
                f"Invalid type for '{name}': expected a boolean, but got {_type_name(value)} instead.", param=name
            )
        return value


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def resolve_model(catalog: Catalog, model_id: Any, operation: str) -> Model:
    if model_id is None:
        model_id = DEFAULT_MODEL
    if not isinstance(model_id, str):
        raise InvalidType(
            f"Invalid type for 'model': expected a string, but got {_type_name(model_id)} instead.", param="model"
        )
    model = catalog.get(model_id)
    if model is None:
        raise InvalidRequest(
            f"Invalid value for 'model': '{model_id}' is not a model this server serves. "
            f"Supported values are: {_one_of(catalog.ids())}. GET /v1/models lists them with their capabilities.",
            param="model",
            code="model_not_found",
        )
    if operation not in model.operations:
        verb = "image edits" if operation == "edit" else "image generation"
        able = [m.id for m in catalog if operation in m.operations]
        raise InvalidRequest(
            f"Model '{model.id}' does not support {verb}. Models that do: {_one_of(able)}.", param="model"
        )
    return model


def validate(
    raw: RawRequest, catalog: Catalog, *, max_input_pixels: int, max_image_bytes: int
) -> ImageRequest:
    known = EDIT_PARAMS if raw.operation == "edit" else GENERATION_PARAMS
    for name in raw.fields:
        if name not in known:
            if name in _IMAGE_NAMES and raw.operation == "edit":  # an image where only a field can be
                raise UnknownParameter(name, hint=_IMAGES_GO)
            raise UnknownParameter(name)
    f = _Fields(raw.fields, raw.multipart)
    model = resolve_model(catalog, raw.fields.get("model"), raw.operation)

    # A parameter this model does not take is refused, as OpenAI does, rather than silently ignored.
    for name, value in raw.fields.items():
        if value is None or name in ("prompt", "model") or name in model.params:
            continue
        if name == "input_fidelity" and model.token_table.startswith("gpt-image-2"):
            raise InvalidRequest(
                f"Model '{model.id}' always reads input images at high fidelity; omit 'input_fidelity'.",
                param=name,
                code="unknown_parameter",
            )
        raise UnknownParameter(name, model.id)

    prompt = f.string("prompt")
    if prompt is None:
        raise MissingParameter("prompt")
    if not prompt.strip():
        raise InvalidRequest("Invalid 'prompt': the prompt must not be empty.", param="prompt")
    if len(prompt) > model.max_prompt_chars:
        raise InvalidRequest(
            f"Invalid 'prompt': string too long. Expected a string with maximum length {model.max_prompt_chars} "
            f"for model '{model.id}', but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )

    n = f.integer("n", 1, 1, model.n_max)

    images: tuple = ()
    mask = None
    files: tuple = ()
    mask_file = None
    fidelity = "high" if model.token_table.startswith("gpt-image-2") else "low"
    if raw.operation == "edit":
        if model.input_fidelity:
            fidelity = f.choice("input_fidelity", model.input_fidelity, "low")
        images, mask, files, mask_file = _edit_inputs(raw, model, max_input_pixels=max_input_pixels, max_image_bytes=max_image_bytes)

    size_text = f.string("size", "auto" if model.size_auto else str(model.default_size))
    assert size_text is not None
    if size_text == "auto" and model.size_auto:
        size = model.auto_size(prompt, images[0].width / images[0].height if images else None)
    else:
        size = parse_size(size_text)
        if size is None and model.sizes is None:
            raise InvalidRequest(
                f"Invalid size '{size_text}'. Expected WIDTHxHEIGHT, for example '1024x1024', or 'auto'.",
                param="size",
            )
        problem = model.supported_sizes() if size is None else model.size_violation(size)
        if problem:
            raise InvalidRequest(f"Invalid size '{size_text}' for model '{model.id}': {problem}.", param="size")

    quality = f.choice("quality", model.qualities, "auto")
    if quality == "auto":
        quality = model.auto_quality

    output_format = f.choice("output_format", model.output_formats, model.output_formats[0])
    background = f.choice("background", model.backgrounds, "auto")
    if background == "transparent":
        if output_format not in ("png", "webp"):
            raise InvalidRequest(
                f"Transparent backgrounds need output_format 'png' or 'webp', not '{output_format}'.",
                param="background",
            )
    resolved_background = "transparent" if background == "transparent" else "opaque"

    # OpenAI documents 0-100 for jpeg/webp; PNG is lossless and accepts the value without effect (seed 004
    # sends output_compression=100 with png).
    compression = f.integer("output_compression", 100, 0, 100)

    moderation = f.choice("moderation", ("low", "auto"), "auto")
    stream = f.boolean("stream", False)
    partial_images = f.integer("partial_images", 0, 0, MAX_PARTIAL_IMAGES)
    if partial_images and not stream:
        partial_images = 0  # partial images only exist in a stream
    response_format = f.choice("response_format", ("url", "b64_json"), model.default_response_format)
    style = f.choice("style", ("vivid", "natural"), "vivid") if f.has("style") else None
    complexity = f.choice("complexity", ("low", "medium", "high"), "high") if f.has("complexity") else None
    user = f.string("safety_identifier") or f.string("user")
    for name in ("user", "safety_identifier"):
        value = f.string(name)
        if value is not None and len(value) > MAX_IDENTIFIER_CHARS:
            raise InvalidRequest(
                f"Invalid '{name}': string too long. Expected at most {MAX_IDENTIFIER_CHARS} characters.", param=name
            )

    job = Job(
        request_id=raw.request_id or f"req_{uuid.uuid4().hex}",
        operation=raw.operation,
        model=model,
        prompt=prompt,
        n=n,
        size=size,
        quality=quality,
        background=resolved_background,
        output_format=output_format,
        output_compression=compression,
        images=images,
        mask=mask,
        partial_images=partial_images,
        input_fidelity=fidelity,
        style=style,
        options={"complexity": complexity} if complexity else {},
        image_files=files,
        mask_file=mask_file,
        client_params={k: v for k, v in raw.fields.items() if k in _RELAYED and v is not None},
    )
    return ImageRequest(
        job=job, response_format=response_format, stream=stream, moderation=moderation, user=user  # type: ignore[arg-type]
    )


async def validate_request(
    raw: RawRequest, catalog: Catalog, *, max_input_pixels: int, max_image_bytes: int
) -> ImageRequest:
    """validate(), on a worker thread when there are uploads: decoding megapixels would stall the event loop."""
    limits = {"max_input_pixels": max_input_pixels, "max_image_bytes": max_image_bytes}
    if raw.images or raw.mask is not None:
        return await asyncio.to_thread(validate, raw, catalog, **limits)
    return validate(raw, catalog, **limits)


def _edit_inputs(raw: RawRequest, model: Model, *, max_input_pixels: int, max_image_bytes: int):
    if not raw.images:
        raise MissingParameter("image")
    together = raw.images_param or raw.images[0][0]
    check_image_count(model, len(raw.images), together)
    # Each image is checked against the per-image limit when decoded; the headers alone bound the whole request
    # first, so sixteen blank 40-megapixel PNGs (a few MB on the wire) can't take gigabytes to decode.
    budget = int(max_input_pixels * TOTAL_PIXEL_FACTOR)
    total = sum(size.pixels for size in map(imaging.header_size, [d for _, d in raw.images]) if size is not None)
    if len(raw.images) > 1 and total > budget:  # one image: its own limit, checked when decoded, says more
        raise InvalidRequest(
            f"The input images hold {total:,} pixels together; a request may carry at most {budget:,}. "
            "Send fewer or smaller images.",
            param=together,
            code="image_too_large",
        )
    uploads = []
    for param, data in raw.images:
        if len(data) > max_image_bytes:
            raise InvalidRequest(
                f"Image for '{param}' is {len(data):,} bytes; each image must be under {max_image_bytes:,} bytes.",
                param=param,
                code="image_too_large",
            )
        uploads.append(imaging.decode_upload(data, param=param, max_pixels=max_input_pixels))
    if model.edit_square_png_only:
        first = uploads[0]
        if first.format != "png" or first.size.width != first.size.height or first.nbytes > 4 * 1024 * 1024:
            raise InvalidRequest(
                f"Model '{model.id}' edits one square PNG image under 4 MB; got a {first.format} of {first.size}.",
                param=raw.images[0][0],
            )
    mask_image = None
    if raw.mask is not None:
        mask = imaging.decode_upload(raw.mask, param=raw.mask_param, max_pixels=max_input_pixels)
        imaging.check_mask(mask, uploads[0], param=raw.mask_param)
        # Read as RGBA whatever its mode: only so does a tRNS chunk's transparent colour become alpha 0.
        mask_image = mask.image.convert("RGBA")
    files = tuple((data, u.format) for (_, data), u in zip(raw.images, uploads))
    mask_file = (raw.mask, "png") if raw.mask is not None else None
    return tuple(u.image for u in uploads), mask_image, files, mask_file


_DATA_URL_RE = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.-]+)*;base64,(.*)$", re.DOTALL)


def check_image_count(model: Model, count: int, param: str) -> None:
    """Refuse more input images than ``model`` takes; for images given by URL, before any is fetched."""
    if count > model.max_input_images:
        raise InvalidRequest(
            f"Too many images: model '{model.id}' takes at most {model.max_input_images} input image"
            f"{'s' if model.max_input_images != 1 else ''}, but got {count}.",
            param=param,
        )


def image_reference_url(ref: Any, param: str) -> str:
    """The URL of a JSON edit body's ``{"image_url": ...}`` (a ``file_id`` is refused: there is no Files API)."""
    if not isinstance(ref, dict):
        raise InvalidType(f"Invalid type for '{param}': expected an object with 'image_url'.", param=param)
    if ref.get("file_id") is not None:  # generated clients send every unset field as null
        raise InvalidRequest(
            f"Invalid '{param}': file_id references are not supported by this server (it has no Files API); send "
            "the image's URL or a base64 data URL in 'image_url', or use a multipart request.",
            param=param,
        )
    url = ref.get("image_url")
    if not isinstance(url, str):
        raise MissingParameter(f"{param}.image_url")
    return url


def decode_data_url(url: str, param: str) -> bytes:
    """A ``data:image/...;base64,...`` URL (in ``param``) to bytes."""
    match = _DATA_URL_RE.match(url)
    if not match:
        raise InvalidRequest(
            f"Invalid '{param}': expected an http(s) URL or a base64 data URL such as 'data:image/png;base64,...'.",
            param=param,
        )
    data = match.group(3)
    try:
        # Strictly: a lenient decode drops what is not base64, and '!!!!' came out as an empty file.
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:  # base64 wrapped in lines (as MIME writes it) is still base64
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            f"Invalid '{param}': the data URL's base64 is invalid ({exc}). Send the image's bytes in standard base64.",
            param=param,
        ) from None
