"""The ``chat-image`` channel type: upstreams that serve image models only through /v1/chat/completions.

This is how the reverse gpt-4o-image interfaces of seeds 001/002 work: the prompt (and reference images as
image_url parts) goes in a chat message, and the answer streams back as text — a JSON prompt block, queue and
progress lines, then markdown image links. We read that stream, report its progress, download the images and
hand them on as a normal images result.
"""

from __future__ import annotations

import base64
import json
import re
from typing import AsyncIterator

import aiohttp

from imagegate.catalog.sizes import ratio_from_prompt, ratio_label
from imagegate.engines.base import Event, ImageDone, Job, JobDone, Progress
from imagegate.engines.upstream import (
    Attempt,
    RelayEngine,
    StreamTooLarge,
    UpstreamRequest,
    sse_data,
    stream_error,
    upstream_call,
    usage_from,
)
from imagegate.config import ChannelConfig
from imagegate.errors import UpstreamError
from imagegate.fetch import TooLarge, read_body


MAX_ANSWER_CHARS = 1_000_000  # a chat answer with a few links; more is not an image answer
# ![alt](url), ![alt](<url>) and ![alt](url "title"); the alt may hold [brackets] and the URL (parentheses). Not a
# bracket within those brackets: allowing one let each "![" of a run like "![![![..." scan to the text's end.
_IMAGE_LINK_RE = re.compile(
    r"!\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?(https?://(?:[^()\s<>]|\([^()\s<>]*\))+)>?(?:\s+\"[^\"]*\")?\s*\)")
_NUMBER_RE = re.compile(r"(?<![\d/%])(\d{1,3})(?=\.{2,}|\s|$|\])")
# The answer's latest progress is read from its last characters only: a progress line is a few dozen, and reading
# the whole answer again at every chunk took seconds of the event loop for a long one.
_PROGRESS_WINDOW = 4096
_QUEUED = ("🕐", "Queuing")
_GENERATING = ("⚡", "Generating")
_MARKER_CHARS = max(len(marker) for marker in _QUEUED + _GENERATING)


class _StatusLines:
    """Whether the answer's status lines (from ``start`` on) have said it is queued, and that it is generating;
    each part of the answer is looked at once, plus a marker's length before it (a marker cut by a chunk)."""

    def __init__(self, start: int = 0) -> None:
        self.start = self.read_to = start
        self.queued = False
        self.generating = False

    def read(self, text: str) -> None:
        piece = text[max(self.start, self.read_to - _MARKER_CHARS + 1):]
        self.queued = self.queued or any(marker in piece for marker in _QUEUED)
        self.generating = self.generating or any(marker in piece for marker in _GENERATING)
        self.read_to = len(text)


class ChatImageEngine(RelayEngine):
    kind = "chat-image"

    def _body(self, job: Job) -> dict:
        prompt = job.prompt
        if ratio_from_prompt(prompt) is None:
            # Chat upstreams take the shape only from the prompt's words.
            prompt = f"{prompt}\n{ratio_label(job.size)}"
        content: list[dict] = [{"type": "text", "text": prompt}]
        for data, fmt in job.image_files:
            url = f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"
            content.append({"type": "image_url", "image_url": {"url": url}})
        return {
            "model": self.channel.model_map.get(job.model.id, job.model.id),
            "stream": True,
            "messages": [{"role": "user", "content": content}],
        }

    async def _attempt(self, job: Job, state: Attempt) -> AsyncIterator[Event]:
        channel = self.channel
        headers = {"Authorization": f"Bearer {channel.api_key}"} if channel.api_key else {}
        body = self._body(job)
        request = UpstreamRequest("POST", f"{channel.base_url.rstrip('/')}/chat/completions", headers, json_body=body)
        text = ""
        sent = body["messages"][0]["content"][0]["text"]
        echo = json.dumps(sent, ensure_ascii=False)[1:-1]  # our prompt as the answer's prompt block quotes it
        past: int | None = None  # where the answer's status lines begin, once found
        searched = 0  # the echo is not in the text before this
        status = _StatusLines()
        async with upstream_call(self.client, request, channel, state) as response:
            last_percent = 0
            async for data in _answer_data(response, channel):
                if data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue  # keep-alive noise
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    raise stream_error(chunk["error"], channel.name, channel.failure_policy)
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or choice.get("message") or {}).get("content")
                    if isinstance(delta, str):
                        text += delta
                if len(text) > MAX_ANSWER_CHARS:
                    raise UpstreamError(
                        f"The upstream '{channel.name}' sent more than {MAX_ANSWER_CHARS:,} characters.",
                        code="upstream_bad_response", failure_policy=channel.failure_policy,
                    )
                if past is None:  # the status lines start after the echo of our prompt, which never moves
                    at = text.find(echo, searched) if echo else -1
                    searched = max(0, len(text) - len(echo))
                    if at >= 0:
                        past = at + len(echo)
                        status = _StatusLines(past)  # what was read in the echo says nothing
                status.read(text)
                percent = _latest_percent(text[max(past or 0, len(text) - _PROGRESS_WINDOW):])
                if last_percent == 0 and status.queued and not status.generating:
                    yield Progress(0, "queued")
                elif percent is not None and percent > last_percent:
                    last_percent = percent
                    yield Progress(min(percent, 99))
        urls = image_links(text, sent=sent)
        if not urls:
            said = text[past or 0:].strip()[-300:]
            raise UpstreamError(
                f"The upstream '{channel.name}' finished without an image" + (f": {said}" if said else "."),
                code="upstream_no_image", failure_policy=channel.failure_policy,
            )

        async def fetched(index: int, url: str) -> ImageDone:
            return ImageDone(index, *await self.fetch_image(url, job))

        delivered = 0
        async for done in self.usable_images(urls[: job.n], fetched):
            yield done
            delivered += 1
        yield Progress(100, "finishing")
        yield JobDone(usage_from(None, job, delivered))


async def _answer_data(response: aiohttp.ClientResponse, channel: ChannelConfig) -> AsyncIterator[str]:
    """The answer's payloads: an SSE stream's data, or, from an upstream that answers plain JSON whatever
    ``stream`` said (a whole completion, or an error), that body as one."""
    if response.content_type != "application/json":
        try:
            async for data in sse_data(response, 4 * MAX_ANSWER_CHARS):
                yield data
        except StreamTooLarge as exc:
            raise UpstreamError(f"The upstream '{channel.name}' returned a malformed answer: {exc}.",
                                code="upstream_bad_response", failure_policy=channel.failure_policy) from None
        return
    try:
        body = await read_body(response, 4 * MAX_ANSWER_CHARS)
    except TooLarge:
        body = b"{}"  # no image answer is that long: read as one with no image
    yield body.decode("utf-8", "replace")


def image_links(text: str, *, sent: str) -> list[str]:
    """The generated images' links in a chat answer. The answer echoes the prompt (the JSON block), so a link
    written into the prompt would otherwise be taken for a result and fetched: only links after the completion
    marker count when there is one, and never a link that was in what we sent."""
    marker = max(text.rfind("Generation complete"), text.rfind("✅"))
    tail = text[marker:] if marker >= 0 else text
    return [url for url in _IMAGE_LINK_RE.findall(tail) if url not in sent]


def _latest_percent(text: str) -> int | None:
    """The last progress number in lines like ``🏃 Progress 11....19....27...[100](...)`` (the runner marks the
    line in every language; the word may be translated)."""
    start = max(text.rfind("🏃"), text.rfind("Progress"))
    if start < 0:
        return None
    numbers = [int(n) for n in _NUMBER_RE.findall(text[start:]) if int(n) <= 100]
    if not numbers:
        tail = re.findall(r"\[(\d{1,3})\]", text[start:])
        numbers = [int(n) for n in tail]
    return numbers[-1] if numbers else None
