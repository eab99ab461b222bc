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
from imagegate.api.references import OUR_LINK_RE, check_before_fetch, load_images
from imagegate.api.wire import base_url, json_body, request_id
from imagegate.catalog.sizes import ratio_label
from imagegate.engines.base import Progress
from imagegate.errors import ImagegateError, InvalidRequest, InvalidType, ModerationBlocked, is_refusal
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
    model = request.app.state.channels.catalog.get(body.get("model"))  # known: chat_completions checked it
    if not refs and "edit" in model.operations and model.max_input_images > 0:
        # A follow-up ("make it bluer") edits the latest image this server drew earlier in the conversation (with a
        # model that edits at all: for the others, every message is a new picture).
        for index in range(last_user - 1, -1, -1):
            message = messages[index]
            if isinstance(message, dict) and message.get("role") == "assistant":
                try:
                    text, _ = _text_of(message.get("content"), f"messages[{index}]")  # a string, or text parts
                except ImagegateError:
                    text = ""  # an earlier message we cannot read is no image to edit
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
    check_before_fetch(request, model, len(refs), refs[0][0])
    images = await load_images(request, refs)
    # Each image keeps its own param, so that a refusal names the message it came from.
    return RawRequest("edit", fields, images=[(param, data) for (param, _), data in zip(refs, images)],
                      images_param=refs[0][0])


class _Chunks:
    """The chunks of one streamed completion."""

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = created
        self.include_usage = include_usage

    def _encode(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> bytes:
        body: dict[str, Any] = {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model, "choices": choices}
        if self.include_usage:
            body["usage"] = usage  # null on every chunk but the last, as OpenAI's
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._encode([{"index": 0, "delta": delta, "finish_reason": finish}], None)

    def say(self, text: str) -> bytes:
        return self.delta({"content": text})

    def end(self, finish: str, usage: dict[str, int], error: ImagegateError | None = None) -> list[bytes]:
        """The finishing chunk, then, as OpenAI does when ``stream_options.include_usage`` is set, a chunk with the
        usage and no choices; then (a failure) the error event the SDKs raise on; then [DONE]."""
        end = [self.delta({}, finish)]
        if self.include_usage:
            end.append(self._encode([], usage))
        if error is not None:
            end.append(f"data: {json.dumps({'error': error.to_dict()}, ensure_ascii=False)}\n\n".encode())
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


def _stored_images(run: Run) -> list:
    return [img.stored for img in sorted(run.result.images, key=lambda i: i.index) if img.stored]


def _image_markdown(request: Request, stored_images: list) -> str:
    storage = request.app.state.storage
    base = base_url(request)
    parts = []
    for stored in stored_images:
        url = storage.url(base, stored)
        parts.append(f"![gen_{stored.name.split('.')[0]}]({url})\n\n[Click to download]({url}&download=1)\n\n")
    return "".join(parts)


def _blocked_text(exc: ImagegateError) -> str:
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
    chunks = _Chunks(f"chatcmpl-{uuid.uuid4().hex}", model_id, int(time.time()), _include_usage(body))
    try:
        image_request = await state.gateway.preflight(image_request, principal, endpoint="chat")
    except ModerationBlocked as exc:
        # A chat client shows assistant messages, not error envelopes: explain the refusal in the conversation.
        return _refusal(chunks, _blocked_text(exc), stream)
    run = await state.gateway.begin(image_request, principal, store=True, endpoint="chat")  # holds the cost first
    if stream:
        return StreamingResponse(
            _stream(request, run, chunks),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **stream_headers(run)},
        )
    try:
        await run.wait()
    except ImagegateError as exc:
        if not is_refusal(exc):
            raise
        # An upstream's refusal, as ours before the run: said in the conversation, with what it cost. (A refusal
        # after whole images ends the run as a success with them: see Gateway._drive.)
        return _refusal(chunks, _blocked_text(exc), stream=False, run=run)
    except BaseException:
        run.abandon()
        raise
    content = _prompt_block(run) + _image_markdown(request, _stored_images(run))
    return JSONResponse(_completion(chunks.completion_id, model_id, chunks.created, content.strip(), "stop",
                                    _chat_usage(run)), headers=cost_headers(run))


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


def _refusal(chunks: _Chunks, text: str, stream: bool, run: Run | None = None) -> Any:
    """A refusal said in the conversation: the prompt guard's before any run (``run`` None), or an upstream's."""
    if not stream:
        return JSONResponse(_completion(chunks.completion_id, chunks.model, chunks.created, text, "content_filter",
                                        _chat_usage(run)), headers=cost_headers(run) if run is not None else None)

    async def body() -> AsyncIterator[bytes]:
        yield chunks.delta({"role": "assistant", "content": ""})
        yield chunks.say(text)
        for chunk in chunks.end("content_filter", _chat_usage(None)):
            yield chunk

    return StreamingResponse(body(), media_type="text/event-stream")


async def _stream(request: Request, run: Run, chunks: _Chunks) -> AsyncIterator[bytes]:
    say = chunks.say
    stored: list = []
    try:
        yield chunks.delta({"role": "assistant", "content": ""})
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
        for chunk in chunks.end("stop", _chat_usage(run)):
            yield chunk
    except ImagegateError as exc:
        # Said in the conversation, where a chat window shows it (an error event alone left the message cut off
        # after its progress line), with any image already kept (one stored before a later one failed to be).
        if stored:
            yield say("\n\n" + _image_markdown(request, stored))
        if is_refusal(exc):
            yield say(f"\n\n{_blocked_text(exc)}")
            for chunk in chunks.end("content_filter", _chat_usage(run)):
                yield chunk
        else:
            yield say(f"\n\n> ❌ Generation failed: {exc.message}")
            for chunk in chunks.end("stop", _chat_usage(run), error=exc):
                yield chunk
    except BaseException:
        run.abandon()
        raise
