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
_QUEUED = ("🕐", "Queuing")
_GENERATING = ("⚡", "Generating")
_PROGRESS = ("🏃", "Progress")  # the runner marks its progress line so in every language; the word may be translated
_MARKERS = _QUEUED + _GENERATING + _PROGRESS
# Characters kept from one piece for the next: a marker or a number (and the character before it) cut between them.
_CARRY_CHARS = max(len(marker) for marker in _MARKERS)


class _StatusLines:
    """What the answer's status lines have said so far: queued, generating, and the last progress number after the
    last progress marker (``🏃 Progress 11....19....27...[100](...)``). Read a piece at a time, each once, with the
    few characters before it that a marker or a number cut between pieces needs: reading the whole answer again
    at every chunk took seconds of the event loop for a long one."""

    def __init__(self) -> None:
        self.carry = ""  # the last characters read
        self.queued = False
        self.generating = False
        self.progress = False  # a progress marker was read
        self.settled: int | None = None  # the last progress number that no later text can change
        self.percent: int | None = None

    def read(self, piece: str) -> None:
        window = self.carry + piece
        new = len(self.carry)  # where the piece begins in the window
        self.queued = self.queued or any(marker in window for marker in _QUEUED)
        self.generating = self.generating or any(marker in window for marker in _GENERATING)
        markers = [at for marker in _PROGRESS if (at := window.rfind(marker)) >= 0 and at + len(marker) > new]
        if markers:  # a new progress line: its numbers count, from its marker on
            self.progress, self.settled, numbers_from = True, None, max(markers)
        else:
            # A number of up to three digits, and the dot after it that does not yet tell it (two do), cut between
            # pieces.
            numbers_from = max(0, new - 4)
        if self.progress:
            last = None
            # From a position, not a slice: the look-behind still sees the character before it.
            for match in _NUMBER_RE.finditer(window, numbers_from):
                if int(match.group(1)) > 100:
                    continue
                last = int(match.group(1))
                if match.end() < len(window):  # a number at the very end may go on in the next piece
                    self.settled = last
            self.percent = self.settled if last is None else last
        self.carry = window[-_CARRY_CHARS:]


class _Echo:
    """Where the answer's echo of our prompt ends (its status lines begin there). Looked for each time the answer
    has grown by a quarter of the echo's length, in what came since the last look: looking at every chunk cost a
    prompt's length of reading per chunk when the echo never came. A piece with a status marker is looked at
    at once (a few times at most): an upstream that says it is queued may then send nothing for a while."""

    _URGENT_LOOKS = 8

    def __init__(self, echo: str) -> None:
        self.echo = echo
        self.looked = 0  # the echo does not begin before this
        self.pieces: list[str] = []  # the answer from ``looked`` on
        self.unread = 0
        self.urgent_looks = 0
        self.end: int | None = None

    def read(self, piece: str) -> str | None:
        """None until the echo is found; then the answer after it so far."""
        self.pieces.append(piece)
        self.unread += len(piece)
        if self.unread < len(self.echo):
            return None
        if self.unread < len(self.echo) + len(self.echo) // 4:
            if self.urgent_looks == self._URGENT_LOOKS or not any(marker in piece for marker in _MARKERS):
                return None
            self.urgent_looks += 1
        return self._look()

    def finish(self) -> None:
        """The answer has ended: a last look at what came since the last one."""
        if self.end is None and self.unread >= len(self.echo):
            self._look()

    def _look(self) -> str | None:
        window = "".join(self.pieces)
        at = window.find(self.echo)
        if at >= 0:
            self.end = self.looked + at + len(self.echo)
            self.pieces = []
            return window[at + len(self.echo):]
        keep = len(self.echo) - 1
        self.looked += len(window) - keep
        self.pieces, self.unread = [window[len(window) - keep:]], keep
        return None


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
        sent = body["messages"][0]["content"][0]["text"]
        # Our prompt as the answer's prompt block quotes it. Where that echo ends, the status lines begin; before it
        # is found, all of the answer is read as status.
        echo = _Echo(json.dumps(sent, ensure_ascii=False)[1:-1])
        status = _StatusLines()
        pieces: list[str] = []  # joined once at the end: adding to one string copied it at each chunk
        length = 0
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
                piece = _content(chunk)
                if not piece:
                    continue
                pieces.append(piece)
                length += len(piece)
                if length > MAX_ANSWER_CHARS:
                    raise UpstreamError(
                        f"The upstream '{channel.name}' sent more than {MAX_ANSWER_CHARS:,} characters.",
                        code="upstream_bad_response", failure_policy=channel.failure_policy,
                    )
                if echo.end is None and (after := echo.read(piece)) is not None:
                    status, piece = _StatusLines(), after  # what was read in the echo says nothing
                status.read(piece)
                percent = status.percent
                if last_percent == 0 and status.queued and not status.generating:
                    yield Progress(0, "queued")
                elif percent is not None and percent > last_percent:
                    last_percent = percent
                    yield Progress(min(percent, 99))
        echo.finish()
        text = "".join(pieces)
        urls = image_links(text, sent=sent)
        if not urls:
            said = text[echo.end or 0:].strip()[-300:]
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


def _content(chunk: dict) -> str:
    """The text a chunk adds: its choices' deltas (a whole message, from an upstream that does not stream)."""
    parts = []
    for choice in chunk.get("choices") or []:
        message = (choice.get("delta") or choice.get("message")) if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts.append(message["content"])
    return "".join(parts)


def image_links(text: str, *, sent: str) -> list[str]:
    """The generated images' links in a chat answer. The answer echoes the prompt (the JSON block), so a link
    written into the prompt would otherwise be taken for a result and fetched: only links after the completion
    marker count when there is one, and never a link that was in what we sent."""
    marker = max(text.rfind("Generation complete"), text.rfind("✅"))
    tail = text[marker:] if marker >= 0 else text
    return [url for url in _IMAGE_LINK_RE.findall(tail) if url not in sent]
