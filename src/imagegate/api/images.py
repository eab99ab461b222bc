"""POST /v1/images/generations and /v1/images/edits (JSON, multipart, SSE)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, AsyncIterator

import orjson

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from imagegate.api.auth import Principal, require_principal
from imagegate.api.billing import cost_headers, start_run, stream_headers
from imagegate.api.references import check_before_fetch, load_images
from imagegate.api.wire import base_url, content_type, json_body, request_id
from imagegate.api.render import (
    AnswerCutOff,
    ArrivingResponse,
    FastJSONResponse,
    StreamRenderer,
    images_response,
    images_tail,
    item_extras,
)
from imagegate.engines.base import Base64Stream, ImageDone, PartialImage
from imagegate.errors import ImagegateError, InvalidRequest, InvalidType, UnsupportedMediaType
from imagegate.gateway import Run
from imagegate.validate import RawRequest, image_reference_url, resolve_model, validate_request

router = APIRouter()
log = logging.getLogger("imagegate.api")

MAX_MULTIPART_FILES = 32


async def _multipart(request: Request, settings) -> RawRequest:
    try:
        form = await request.form(
            max_files=MAX_MULTIPART_FILES, max_fields=200, max_part_size=settings.max_image_bytes
        )
    except MultiPartException as exc:
        raise InvalidRequest(f"Malformed multipart body: {exc.message}") from None
    except StarletteHTTPException as exc:  # Starlette reports parse errors this way
        raise InvalidRequest(f"Malformed multipart body: {exc.detail}") from None
    fields: dict[str, Any] = {}
    images: list[tuple[str, bytes]] = []
    mask: bytes | None = None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            if name in ("image", "image[]") or (name.startswith("image[") and name.endswith("]")):
                images.append(("image" if name == "image" else "image[]", data))
            elif name == "mask":
                mask = data
            else:
                # An unknown parameter, as any other (the SDK sends a 2.6 `markup` as a file): its code says so.
                raise InvalidRequest(f"Unknown parameter: '{name}'. Files go in 'image', 'image[]' or 'mask'.",
                                     param=name, code="unknown_parameter")
        else:
            if name in ("image", "image[]", "mask"):
                raise InvalidType(f"Invalid type for '{name}': expected a file upload, but got text.", param=name)
            fields[name] = value
    await form.close()
    return RawRequest("edit", fields, multipart=True, images=images, mask=mask)


async def _json_edit(request: Request, body: dict[str, Any]) -> RawRequest:
    fields = dict(body)
    refs = fields.pop("images", None)
    mask_ref = fields.pop("mask", None)
    for legacy in ("image", "image[]"):
        if legacy in fields:
            raise InvalidRequest(
                f"In a JSON edit body images go in 'images': [{{\"image_url\": \"data:...\"}}], not '{legacy}'.",
                param=legacy,
            )
    if refs is None:
        raise InvalidRequest("Missing required parameter: 'images'.", param="images", code="missing_required_parameter")
    if not isinstance(refs, list):
        raise InvalidType("Invalid type for 'images': expected an array of {image_url} objects.", param="images")
    if not refs:
        raise InvalidRequest("Missing required parameter: 'images' holds no image; send 1 to 16 {image_url} objects.",
                             param="images", code="missing_required_parameter")
    # Before anything is fetched: the model (known, editing, allowed to this key) and the count alone decide.
    model = resolve_model(request.app.state.channels.catalog, fields.get("model"), "edit")
    check_before_fetch(request, model, len(refs), "images")
    # As OpenAI's: each image_url a URL (fetched, public hosts only) or a data URL.
    urls = [(f"images[{i}].image_url", image_reference_url(ref, f"images[{i}]")) for i, ref in enumerate(refs)]
    if mask_ref is not None:
        urls.append(("mask.image_url", image_reference_url(mask_ref, "mask")))
    loaded = await load_images(request, urls)
    mask = loaded.pop() if mask_ref is not None else None
    # Each image keeps its own param, so that a refusal names the one at fault.
    images = [(param, data) for (param, _), data in zip(urls, loaded)]
    return RawRequest("edit", fields, multipart=False, images=images, mask=mask, images_param="images",
                      mask_param="mask.image_url")


async def _respond(request: Request, raw: RawRequest) -> Any:
    state = request.app.state
    settings = state.settings
    raw.request_id = request_id(request)
    image_request = await validate_request(
        raw, state.channels.catalog, max_input_pixels=settings.max_input_pixels, max_image_bytes=settings.max_image_bytes
    )
    image_request = await state.gateway.preflight(image_request, getattr(request.state, "principal", None))
    if not image_request.stream and not image_request.job.model.revises_prompts:
        # This answer can be written while the image arrives (unless the gateway keeps the images, as for a url
        # answer: it then reads them whole first).
        image_request = replace(image_request, job=replace(image_request.job, b64_as_it_arrives=True))
    run = await start_run(request, image_request, raw)  # holds the cost first; or an idempotent replay
    if not isinstance(run, Run):
        return run
    if image_request.stream:
        events = run.events()
        opening = await _stream_opening(run, request, events)
        if opening is None:
            return Response(status_code=499)  # the client left before its stream began; its images are kept
        return StreamingResponse(
            _sse(run, *opening),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **stream_headers(run)},
        )
    events = run.events()
    images: list[ImageDone] = []
    async with _ClientWatch(request, run) as client:
        async for event in events:
            if isinstance(event, ImageDone):
                images.append(event)
                if event.arriving:
                    # Answer now and forward the image as it arrives; the cost is not known before the end, so
                    # the headers carry the quote, as a stream's do. Such an answer writes itself, and hears the
                    # client go on its own.
                    return ArrivingResponse(_arriving_body(run, images, events), headers=stream_headers(run),
                                            on_abandon=run.abandon)
    if client.left:
        # Its images are kept: no answer to build. 499 is nginx's code for it, for the log.
        return Response(status_code=499)
    body = images_response(image_request, run.result, storage=state.storage, base_url=base_url(request))
    return FastJSONResponse(body, headers=cost_headers(run))


class _ClientWatch:
    """While a handler waits for its run before sending anything: a client that leaves has the run keep the images
    it pays for (nothing else tells such a handler; the server would drop the answer unsent). ``left`` says, after
    the block, whether that happened. A block that fails abandons the run too."""

    def __init__(self, request: Request, run: Run) -> None:
        self._request = request
        self._run = run
        self._listener: asyncio.Task | None = None
        self.left = False

    async def __aenter__(self) -> "_ClientWatch":
        self._listener = asyncio.create_task(_abandon_if_gone(self._request, self._run))
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        listener, self._listener = self._listener, None
        assert listener is not None
        listener.cancel()
        self.left = listener.done() and not listener.cancelled()
        if exc_type is not None:
            self._run.abandon()
        # The listener is let go here, and it never refers back to this object: a cancelled task keeps its
        # CancelledError, whose traceback keeps the listener's frame; had that frame referred to this object, the
        # cycle would keep the run, megabytes of image, until the cyclic collector came by (peak memory doubled).


async def _abandon_if_gone(request: Request, run: Run) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    run.abandon()


async def _arriving_body(run: Run, images: list[ImageDone], events: AsyncIterator) -> AsyncIterator[Any]:
    """An images response written while its images arrive (``images``: those handed over so far, the last one
    still arriving; the rest follow in ``events``): the same document ``images_response`` makes.

    Should the upstream fail after this began, the response is cut off rather than ended: the client sees a broken
    answer (the SDK retries it), never a whole-looking one, and it is not charged (unless the channel's failure
    policy is ``charge``).
    """
    image_request = run.request
    pending = list(images)
    try:
        yield b'{"created":%d,"data":[' % int(time.time())
        written = 0
        while pending:
            image = pending.pop(0)
            yield b',{"b64_json":"' if written else b'{"b64_json":"'
            if isinstance(image.b64, Base64Stream):
                async for piece in image.b64.pieces():
                    yield piece
            else:
                yield image.base64_ascii()
            extra = item_extras(image_request, image)
            yield b'"' + (b"," + orjson.dumps(extra)[1:] if extra else b"}")
            written += 1
            if not pending:
                async for event in events:
                    if isinstance(event, ImageDone):
                        pending.append(event)
                        break
        # The run has ended (and is settled): what follows the images.
        tail = images_tail(image_request, run.result)
        yield b"]," + orjson.dumps(tail)[1:] if tail else b"]}"
    except ImagegateError as exc:
        log.warning("request %s: its answer is cut off: %s", image_request.job.request_id, exc.message)
        raise AnswerCutOff() from exc


async def _stream_opening(run: Run, request: Request, events: AsyncIterator) -> tuple | None:
    """What a stream opens with: the events read until the first one it shows (a partial image) or the run's end,
    and the rest of the events (None once they are all read). Until then not a byte is sent, so a failure is
    still a plain error with its status (an upstream's 429, a moderation block, every channel down), as OpenAI
    answers one before its stream. None: the client left meanwhile."""
    opening: list = []
    rest: AsyncIterator | None = None
    async with _ClientWatch(request, run) as client:
        async for event in events:
            if isinstance(event, (PartialImage, ImageDone)):
                opening.append(event)
            if isinstance(event, PartialImage):
                rest = events
                break
    return None if client.left else (opening, rest)


async def _sse(run: Run, opening: list, rest: AsyncIterator | None) -> AsyncIterator[bytes]:
    renderer = StreamRenderer(run.request)
    finished: list[ImageDone] = []

    async def all_events() -> AsyncIterator:
        for event in opening:
            yield event
        if rest is not None:
            async for event in rest:
                yield event

    try:
        async for event in all_events():
            if isinstance(event, PartialImage):
                yield renderer.partial(event.data, event.partial_index)
            elif isinstance(event, ImageDone):
                finished.append(event)
        # Completed events carry usage, which is final only once the engine is done.
        for chunk in renderer.completed_all(finished, run.result.usage):
            yield chunk
    except ImagegateError as exc:
        yield renderer.error(exc)
    except BaseException:
        run.abandon()
        raise


@router.post("/v1/images/generations")
async def generations(request: Request, principal: Principal = Depends(require_principal)) -> Any:
    if content_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType(
            f"Unsupported Content-Type '{content_type(request)}': /v1/images/generations takes application/json."
        )
    body = await json_body(request)
    return await _respond(request, RawRequest("generate", body))


@router.post("/v1/images/edits")
async def edits(request: Request, principal: Principal = Depends(require_principal)) -> Any:
    kind = content_type(request)
    if kind == "multipart/form-data":
        raw = await _multipart(request, request.app.state.settings)
    elif kind == "application/json":
        raw = await _json_edit(request, await json_body(request))
    else:
        raise UnsupportedMediaType(
            f"Unsupported Content-Type '{kind or 'none'}': /v1/images/edits takes multipart/form-data "
            "(image, image[], mask files) or application/json (images: [{image_url}])."
        )
    return await _respond(request, raw)


@router.post("/v1/images/variations")
async def variations(request: Request, principal: Principal = Depends(require_principal)) -> Any:
    raise ImagegateError(
        "The variations endpoint is retired (as upstream). Use POST /v1/images/edits with a GPT image model instead.",
        status=404,
        type="invalid_request_error",
        code="endpoint_retired",
    )
