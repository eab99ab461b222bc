"""POST /v1/chat/completions for image models, for chat front-ends.

The last user message is the prompt; its image_url parts are reference images (an edit). A follow-up such as
"make it bluer" edits the image in the most recent assistant message that holds one of our signed links. The
stream shows what the seeds' users watch: the prompt block, the queue position, generating, progress, then
markdown image links and a download link per image.
"""

from __future__ import annotations


import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from imagegate.api.auth import Principal, require_principal
from imagegate.api.billing import cost_headers, stream_headers
from imagegate.api.references import OUR_LINK_RE, load_images
from imagegate.api.wire import base_url, json_body, request_id
from imagegate.catalog.sizes import ratio_label
from imagegate.engines.base import Progress
from imagegate.errors import ImagegateError, InvalidRequest, InvalidType, ModerationBlocked
from imagegate.gateway import Run, Stored
from imagegate.validate import RawRequest, validate_request

router = APIRouter()

_PROMPT_BLOCK_OPEN = "```json\n"
# Chat fields that shape the image; everything else in a chat body (temperature, tools…) means nothing here.
_IMAGE_FIELDS = ("size", "quality", "background", "output_format", "output_compression", "moderation", "n")


def _text_of(content: Any, where: str) -> tuple[str, list[Any]]:
    """A message's text and its image_url parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InvalidType(f"Invalid type for '{where}.content': expected a string or an array of parts.", param=f"{where}.content")
    texts, images = [], []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise InvalidRequest(f"Invalid '{where}.content[{i}].image_url': expected {{\"url\": ...}}.", param=f"{where}.content[{i}].image_url")
            images.append(url)
        else:
            raise InvalidRequest(
                f"Unsupported content part type {kind!r} in '{where}.content[{i}]'; image models take 'text' and 'image_url'.",
                param=f"{where}.content[{i}].type",
            )
    return "\n".join(t for t in texts if t), images


def _after_prompt_block(answer: str) -> str:
    """An answer of ours past the prompt block it opens with, where a link the user typed is quoted back. The
    block is JSON: its strings hold no line break, so the first one followed by a fence closes it, whatever
    fences the prompt itself held."""
    if not answer.startswith(_PROMPT_BLOCK_OPEN):
        return answer
    end = answer.find("\n```", len(_PROMPT_BLOCK_OPEN))
    return answer[end + 4:] if end >= 0 else ""


async def _raw_request(request: Request, body: dict[str, Any]) -> RawRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("Missing required parameter: 'messages' (a non-empty array).", param="messages",
                             code="missing_required_parameter")
    last_user = None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = index
            break
    if last_user is None:
        raise InvalidRequest("The conversation has no user message to draw from.", param="messages")
    prompt, image_urls = _text_of(messages[last_user].get("content"), f"messages[{last_user}]")
    refs = [(f"messages[{last_user}].content", url) for url in image_urls]
    model = request.app.state.channels.catalog.get(body.get("model"))
    edits = model is None or ("edit" in model.operations and model.max_input_images > 0)
    if not refs and edits:
        # A follow-up ("make it bluer") edits the latest image this server drew earlier in the conversation (with a
        # model that edits at all: for the others, every message is a new picture).
        for index in range(last_user - 1, -1, -1):
            message = messages[index]
            if isinstance(message, dict) and message.get("role") == "assistant":
                text = message.get("content") if isinstance(message.get("content"), str) else ""
                found = OUR_LINK_RE.search(_after_prompt_block(text))
                if found:
                    refs = [(f"messages[{index}].content", found.group(0))]
                    break
    fields: dict[str, Any] = {"model": body.get("model"), "prompt": prompt}
    for name in _IMAGE_FIELDS:
        if body.get(name) is not None:
            fields[name] = body[name]
    if not refs:
        return RawRequest("generate", fields)
    if model is not None and len(refs) > model.max_input_images:
        # Refuse before fetching anything: the count alone decides it.
        raise InvalidRequest(
            f"Too many images: model '{model.id}' takes at most {model.max_input_images} reference image(s), "
            f"but the message has {len(refs)}.",
            param=refs[0][0],
        )
    images = await load_images(request, refs, body.get("model"))
    return RawRequest("edit", fields, images=[("image", data) for data in images])


def _chunk(completion_id: str, model: str, created: int, delta: dict[str, Any] | None, finish: str | None = None,
           usage: dict[str, Any] | None = None) -> bytes:
    """One chunk of a stream; ``delta`` None: the usage chunk (no choices) that ends a stream asked to include it."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def _stream_end(completion_id: str, model: str, created: int, finish: str, usage: dict[str, int],
                include_usage: bool) -> list[bytes]:
    """The finishing chunk, then, as OpenAI does when ``stream_options.include_usage`` is set, a chunk with the
    usage and no choices; then [DONE]."""
    end = [_chunk(completion_id, model, created, {}, finish)]
    if include_usage:
        end.append(_chunk(completion_id, model, created, None, usage=usage))
    return end + [b"data: [DONE]\n\n"]


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _chat_usage(run: Run | None) -> dict[str, int]:
    if run is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    usage = run.result.usage
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens, "total_tokens": usage.total_tokens}


def _prompt_block(run: Run) -> str:
    job = run.request.job
    block = json.dumps({"prompt": job.prompt, "ratio": ratio_label(job.size)}, ensure_ascii=False, indent=2)
    return f"{_PROMPT_BLOCK_OPEN}{block}\n```\n\n"


def _image_markdown(request: Request, stored_images: list) -> str:
    storage = request.app.state.storage
    base = base_url(request)
    parts = []
    for stored in stored_images:
        url = storage.url(base, stored)
        parts.append(f"![gen_{stored.name.split('.')[0]}]({url})\n\n[Click to download]({url}&download=1)\n\n")
    return "".join(parts)


def _blocked_text(exc: ModerationBlocked) -> str:
    return f"⚠️ {exc.message}"


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, principal: Principal = Depends(require_principal)) -> Any:
    state = request.app.state
    body = await json_body(request)
    model_id = body.get("model")
    if not isinstance(model_id, str) or state.channels.catalog.get(model_id) is None:
        raise InvalidRequest(
            f"Model {model_id!r} is not an image model. This server answers chat completions for image models only "
            f"({', '.join(state.channels.catalog.ids())}); for images use POST /v1/images/generations or /v1/images/edits.",
            param="model",
            code="model_not_found",
        )
    stream = body.get("stream") is True
    raw = await _raw_request(request, body)
    raw.request_id = request_id(request)
    image_request = await validate_request(
        raw, state.channels.catalog, max_input_pixels=state.settings.max_input_pixels,
        max_image_bytes=state.settings.max_image_bytes,
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    try:
        image_request = await state.gateway.preflight(image_request, principal, endpoint="chat")
    except ModerationBlocked as exc:
        # A chat client shows assistant messages, not error envelopes: explain the refusal in the conversation.
        return _refusal(completion_id, model_id, created, _blocked_text(exc), stream, _include_usage(body))
    run = await state.gateway.begin(image_request, principal, store=True, endpoint="chat")  # holds the cost first
    if stream:
        return StreamingResponse(
            _stream(request, run, completion_id, model_id, created, _include_usage(body)),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **stream_headers(run)},
        )
    try:
        await run.wait()
    except BaseException:
        run.abandon()
        raise
    stored = [img.stored for img in sorted(run.result.images, key=lambda i: i.index) if img.stored]
    content = _prompt_block(run) + _image_markdown(request, stored)
    return JSONResponse(_completion(completion_id, model_id, created, content.strip(), "stop", _chat_usage(run)),
                        headers=cost_headers(run))


def _completion(completion_id: str, model: str, created: int, content: str, finish: str, usage: dict) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
             "finish_reason": finish, "logprobs": None}
        ],
        "usage": usage,
    }


def _refusal(completion_id: str, model: str, created: int, text: str, stream: bool, include_usage: bool) -> Any:
    if not stream:
        return JSONResponse(_completion(completion_id, model, created, text, "content_filter", _chat_usage(None)))

    async def chunks() -> AsyncIterator[bytes]:
        yield _chunk(completion_id, model, created, {"role": "assistant", "content": ""})
        yield _chunk(completion_id, model, created, {"content": text})
        for chunk in _stream_end(completion_id, model, created, "content_filter", _chat_usage(None), include_usage):
            yield chunk

    return StreamingResponse(chunks(), media_type="text/event-stream")


async def _stream(
    request: Request, run: Run, completion_id: str, model: str, created: int, include_usage: bool
) -> AsyncIterator[bytes]:
    def say(text: str) -> bytes:
        return _chunk(completion_id, model, created, {"content": text})

    stored: list = []
    try:
        yield _chunk(completion_id, model, created, {"role": "assistant", "content": ""})
        yield say(_prompt_block(run))
        last_position: object = None
        queued = False
        generating = False
        last_percent = -1
        async for event in run.events():
            if isinstance(event, Progress):
                if event.stage == "queued":
                    # Our own queue knows the position; an upstream's queue (a chat relay) only says it queues.
                    if not queued or event.queue_position != last_position:
                        queued, last_position = True, event.queue_position
                        where = f", position {event.queue_position}" if event.queue_position is not None else ""
                        yield say(f"> 🕐 Queuing{where}\n\n")
                    continue
                if not generating:
                    generating = True
                    yield say("> ⚡ Generating\n\n> 🏃 Progress")
                if event.percent > last_percent and event.percent > 0:
                    last_percent = event.percent
                    yield say(f" {event.percent}" + ("" if event.percent < 100 else "\n\n"))
            elif isinstance(event, Stored):
                stored.append(event.stored)
        if last_percent < 100:
            yield say(" 100\n\n" if generating else "")
        yield say("> ✅ Generation complete\n\n")
        yield say(_image_markdown(request, stored))
        for chunk in _stream_end(completion_id, model, created, "stop", _chat_usage(run), include_usage):
            yield chunk
    except ImagegateError as exc:
        yield f"data: {json.dumps({'error': exc.to_dict()})}\n\n".encode()
    except BaseException:
        run.abandon()
        raise
