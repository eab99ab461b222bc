"""The ``openai`` channel type: OpenAI itself, Azure-style deployments and every OpenAI-compatible relay.

Generations go as JSON, edits as multipart (``image`` / ``image[]`` / ``mask`` and every scalar), streams are
read as SSE and turned into partial and final images. Answers are normalised: b64 with or without a data-URL
prefix, url-only answers downloaded, missing usage estimated from the token tables and marked so.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import orjson

from imagegate.catalog import Size
from imagegate.catalog.tokens import Usage
from imagegate.config import ChannelConfig
from imagegate.engines.answer_scan import HEAD_CHARS, AnswerScanner
from imagegate.engines.base import Event, ImageDone, Job, JobDone, PartialImage, Progress
from imagegate.engines.upstream import (
    Attempt,
    RelayEngine,
    StreamTooLarge,
    UpstreamRequest,
    UpstreamSession,
    conform,
    decode_b64_image,
    sse_data,
    stream_error,
    strip_data_url,
    upstream_call,
    usage_from,
)
from imagegate.imaging import header_size, sniff_format
from imagegate.errors import UpstreamError

# Azure's OpenAI endpoints take their key in an `api-key` header; a relay merely hosted on Azure (an App Service,
# a Container App) is an ordinary OpenAI-compatible one. Told apart by the host's suffix, never a substring.
_AZURE_OPENAI_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
_DEFAULT_DROPS = {
    # Edits take no moderation (seed 001; OpenAI's multipart edit schema has none). Quality goes only to models
    # with a choice of it (see _params): the reverse gpt-4o-image models bundle it.
    "edit": {"moderation"},
    "generate": set(),
}


class OpenAICompatEngine(RelayEngine):
    kind = "openai"

    def __init__(self, channel: ChannelConfig, client: UpstreamSession) -> None:
        super().__init__(channel, client)
        host = (urlsplit(channel.base_url).hostname or "").lower()
        self.azure = host.endswith(_AZURE_OPENAI_SUFFIXES)
        # OpenAI's own API (or Azure's) refuses some parameters, which are then never sent there; relays get all.
        self.official = host == "api.openai.com" or self.azure

    # -- request building --------------------------------------------------------------------------------------

    def _params(self, job: Job) -> dict[str, Any]:
        channel = self.channel
        params: dict[str, Any] = {
            "model": channel.model_map.get(job.model.id, job.model.id),
            "prompt": job.prompt,
            "n": job.n,
            "size": str(job.size),
        }
        if len(job.model.qualities) > 1:
            # Resolved, never 'auto': the upstream renders the quality the request was quoted and is charged at
            # (its own 'auto' may pick a dearer one, which the operator would pay for).
            params["quality"] = job.quality
        params.update(job.client_params)
        send_format = channel.send_response_format
        if send_format is None:
            send_format = not (self.official and job.model.id.startswith(("gpt-image", "chatgpt-image")))
        if send_format:
            params["response_format"] = "b64_json"
        if job.partial_images:
            params["stream"] = True
            params["partial_images"] = job.partial_images
        # Last, so that any parameter can be dropped: an upstream that cannot stream gets no `stream` (its whole
        # answer is then turned into the client's stream).
        drops = set(channel.drop_params) if channel.drop_params is not None else _DEFAULT_DROPS[job.operation]
        for name in drops:
            params.pop(name, None)
        return {channel.rename_params.get(k, k): v for k, v in params.items()}

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.channel.api_key:
            if self.azure:
                headers["api-key"] = self.channel.api_key
            else:
                headers["Authorization"] = f"Bearer {self.channel.api_key}"
        return headers

    def _request(self, job: Job) -> UpstreamRequest:
        base = self.channel.base_url.rstrip("/")
        params = self._params(job)
        if job.operation == "generate":
            return UpstreamRequest("POST", f"{base}/images/generations", self._headers(), json_body=params)

        def form() -> aiohttp.FormData:
            built = aiohttp.FormData()
            for name, value in params.items():
                built.add_field(name, _form_value(value))
            field = "image[]" if len(job.image_files) > 1 else "image"
            for index, (data, fmt) in enumerate(job.image_files):
                built.add_field(field, data, filename=f"image_{index}.{fmt}", content_type=f"image/{fmt}")
            if job.mask_file is not None:
                built.add_field("mask", job.mask_file[0], filename="mask.png", content_type="image/png")
            return built

        return UpstreamRequest("POST", f"{base}/images/edits", self._headers(), form=form)

    # -- running -----------------------------------------------------------------------------------------------

    async def _attempt(self, job: Job, state: Attempt) -> AsyncIterator[Event]:
        async with upstream_call(self.client, self._request(job), self.channel, state) as response:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                async for event in self._read_stream(job, response):
                    yield event
                return
            async for event in self._read_answer(job, response):
                yield event

    async def _read_answer(self, job: Job, response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
        """The JSON answer, read as it arrives. When the client takes it so (and the channel allows), an image whose
        header shows what the client asked for is handed on at once, its base64 still streaming in; the rest
        (another format, a url, the usage) waits for the whole body."""
        scanner = AnswerScanner(max_bytes=self.channel.max_download_bytes)
        hand_over = job.b64_as_it_arrives and self.channel.stream_through
        handed = 0
        try:
            try:
                # With a Content-Length, as the socket delivered them (iter_any() would join whatever is buffered
                # first, a copy of the image); a chunked answer comes an HTTP chunk at a time.
                async for chunk, _ in response.content.iter_chunks():
                    scanner.feed(chunk)
                    while hand_over and handed < min(job.n, len(scanner.images)) and scanner.images[handed].head_ready:
                        done = self._arriving(job, handed, scanner.images[handed])
                        if done is None:
                            hand_over = False  # this one waits for the end; so do those after it, to stay in order
                            break
                        yield done
                        handed += 1
                payload = scanner.finish(handed, job.n)
                items = payload.get("data")
                if not items and isinstance(payload.get("error"), dict):
                    # A relay that answers its failures with 200 and an error body: its code, not "malformed".
                    raise stream_error(payload["error"], self.channel.name, self.channel.failure_policy)
                if not isinstance(items, list) or not items:
                    raise ValueError("no images in 'data'")
            except ValueError as exc:
                raise self.malformed(str(exc)) from None
            asked = items[: job.n]
            delivered = handed
            async for done in self.usable_images(asked[handed:], lambda index, item: self._image(job, index, item),
                                                 first=handed):
                yield done
                delivered += 1
            # The upstream's usage counts every image it made; with some left out, what was delivered is estimated.
            whole = delivered == len(asked)
            yield JobDone(usage_from(payload.get("usage") if whole else None, job, delivered))
        except BaseException as exc:
            # Whoever forwards an image still arriving must stop, and not end its answer as if it were whole.
            scanner.abort(exc if isinstance(exc, UpstreamError) else self.malformed("the answer was cut off"))
            raise

    @staticmethod
    def _arriving(job: Job, index: int, image) -> ImageDone | None:
        """The image as a stream, if its header shows the format the client asked for and its size (if not, it is
        left to the whole-answer path, which converts it or says what is wrong with it)."""
        size = _passable(job, bytes(image.head[: len(image.head) // 4 * 4]))
        return None if size is None else ImageDone(index, None, job.output_format, size, None, b64=image.stream)

    async def _image(self, job: Job, index: int, item: dict[str, Any]) -> ImageDone:
        revised = item.get("revised_prompt")
        if item.get("b64_json"):
            text = strip_data_url(item["b64_json"])
            size = _passable(job, text[:HEAD_CHARS])
            if size is not None:
                return ImageDone(index, None, job.output_format, size, revised, b64=text)
            data = decode_b64_image(text)
            data, fmt, size = await asyncio.to_thread(
                conform, data, job.output_format, job.output_compression, job.transparent
            )
        elif item.get("url"):
            data, fmt, size = await self.fetch_image(item["url"], job)
        else:
            raise ValueError("an image has neither b64_json nor url")
        return ImageDone(index, data, fmt, size, revised)

    async def _read_stream(self, job: Job, response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
        index = 0
        usage = Usage()
        every_usage = True  # every completed event reported its image's usage in full
        try:
            async for data in sse_data(response, self.channel.max_download_bytes):
                if data.strip() == "[DONE]":
                    break
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    event = None
                if not isinstance(event, dict):
                    continue  # a relay's keep-alive or other noise: the image may already be on its way
                if event.get("error"):
                    raise stream_error(event["error"], self.channel.name, self.channel.failure_policy)
                kind = str(event.get("type", ""))
                if kind.endswith(".partial_image"):
                    try:
                        raw = decode_b64_image(event.get("b64_json", ""))
                        partial_index = int(event.get("partial_image_index", 0))
                    except (ValueError, TypeError) as exc:
                        raise self.malformed(f"a partial image: {exc}") from None
                    yield PartialImage(index, partial_index, raw)
                    yield Progress(min(95, int(100 * (index + 0.5) / job.n)))
                elif kind.endswith(".completed"):
                    try:
                        done = await self._image(job, index, event)
                    except (ValueError, aiohttp.ClientError, OSError) as exc:
                        raise self.malformed(str(exc)) from None
                    reported = usage_from(event.get("usage"), job, 1)
                    if reported.estimated:
                        # An estimate is of the whole job's input: summed per image it would count it n times.
                        every_usage = False
                    else:
                        done = replace(done, usage=reported)
                        usage = usage + reported
                    yield done
                    index += 1
        except StreamTooLarge as exc:
            raise self.malformed(str(exc)) from None
        if index == 0:
            raise self.malformed("the stream ended without a completed image")
        yield JobDone(usage if every_usage else usage_from(None, job, index))


def _passable(job: Job, head_b64: str | bytes | memoryview) -> Size | None:
    """The image's size, if the header in its first base64 characters shows the format the client asked for: then
    the upstream's base64 is passed through as it is (the header is all there is to read), else None."""
    try:
        head = decode_b64_image(head_b64)
    except ValueError:
        return None
    return header_size(head) if sniff_format(head) == job.output_format else None


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
