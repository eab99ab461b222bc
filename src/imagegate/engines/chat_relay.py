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
        self.percent: int | None = None  # the last number of the last progress line

    def read(self, piece: str) -> None:
        window = self.carry + piece
        new = len(self.carry)  # where the piece begins in the window
        self.queued = self.queued or any(marker in window for marker in _QUEUED)
        self.generating = self.generating or any(marker in window for marker in _GENERATING)
        markers = [at for marker in _PROGRESS if (at := window.rfind(marker)) >= 0 and at + len(marker) > new]
        if markers:  # a new progress line: its numbers count, from its marker on
            self.progress, self.percent, numbers_from = True, None, max(markers)
        else:
            # A number of up to three digits, and the dot after it that does not yet tell it (two do), cut between
            # pieces.
            numbers_from = max(0, new - 4)
        if self.progress:
            # From a position, not a slice: the look-behind still sees the character before it. A number at the
            # very end may go on in the next piece (the "1" of "19"): it counts once what follows tells it.
            for match in _NUMBER_RE.finditer(window, numbers_from):
                if int(match.group(1)) <= 100 and match.end() < len(window):
                    self.percent = int(match.group(1))
        self.carry = window[-_CARRY_CHARS:]


class _Echo:
    """Where the answer's echo of our prompt ends: the status lines begin there. The answer is held back from the
    status reader until the echo is found or ruled out, so that the prompt's own words ("⚡", "Progress 80") are
    never taken for the upstream's, however the answer is cut into pieces.

    The echo is in the answer's opening prompt block, before any status line. It is looked for when a piece
    brings a status marker (a few times at most: an upstream that says it is queued may then send nothing for a
    while), and once the answer is long enough to hold it and some text before it. A look that finds a marker
    outside any part of the echo rules it out, as does the last one. Each look reads only what is held, so an
    answer costs a bounded number of them."""

    _URGENT_LOOKS = 8
    _SLACK_CHARS = 256  # what the answer may hold before the echo (the seeds' is "```json\n{\n  \"prompt\": \"")
    _PARTIAL_TRIES = 64  # places tried for an echo begun at the end of what is held; past them, all are kept

    def __init__(self, echo: str) -> None:
        self.echo = echo
        self.held: list[str] = []  # what came since ``released``, not given to the status reader yet
        self.held_chars = 0
        self.released = 0  # characters given out: the echo does not begin among them
        self.urgent_looks = 0
        self.complete_at = 0  # an echo seen beginning cannot be whole before the answer is this long
        self.end: int | None = None  # where the echo ends, once found
        self.settled = False  # found, or ruled out

    def read(self, piece: str) -> tuple[bool, str]:
        """Whether the echo was found just now (the status lines start over), and the text the status reader may
        read now."""
        if self.settled:
            return False, piece
        self.held.append(piece)
        self.held_chars += len(piece)
        length = self.released + self.held_chars
        if length >= len(self.echo) + max(self._SLACK_CHARS, len(self.echo) // 4):
            return self._look(last=True)
        if (self.urgent_looks < self._URGENT_LOOKS and length >= self.complete_at
                and any(marker in piece for marker in _MARKERS)):
            self.urgent_looks += 1
            return self._look(last=False)
        return False, ""

    def finish(self) -> None:
        """The answer has ended: a last look at what is held."""
        if not self.settled:
            self._look(last=True)

    def _look(self, *, last: bool) -> tuple[bool, str]:
        window = "".join(self.held)
        at = window.find(self.echo)
        if at >= 0:
            self.end, self.settled = self.released + at + len(self.echo), True
            self.held, self.held_chars = [], 0
            return True, window[at + len(self.echo):]
        cut = len(window) if last else self._partial_at(window)
        if last or any(marker in window[:cut] for marker in _MARKERS):
            # A status line began with no echo before it: there is none.
            self.settled = True
            self.held, self.held_chars = [], 0
            return False, window
        self.released += cut
        self.held, self.held_chars = [window[cut:]], len(window) - cut
        if self.held_chars:  # an echo begun: markers in it (the prompt's own) are no reason to look again
            self.complete_at = self.released + len(self.echo)
        return False, window[:cut]

    def _partial_at(self, window: str) -> int:
        """Where an echo that has begun but not ended by the end of ``window`` would begin (the window's length if
        none can have)."""
        first = self.echo[:1]
        at = window.find(first, max(0, len(window) - len(self.echo) + 1))
        for _ in range(self._PARTIAL_TRIES):
            if at < 0 or self.echo.startswith(window[at:]):
                break
            at = window.find(first, at + 1)
        return len(window) if at < 0 else at


class _AnswerProgress:
    """What a chat answer says of the work while it streams, as Progress events: queued, then the upstream's
    percentages. Read from the status lines after our prompt's echo, never from the echo itself."""

    def __init__(self, echo: str) -> None:
        self.echo = _Echo(echo)
        self.status = _StatusLines()
        self.last_percent = 0

    def read(self, piece: str) -> Progress | None:
        restart, readable = self.echo.read(piece)
        if restart:
            self.status = _StatusLines()  # what came before the echo says nothing
        if not readable:
            return None
        status = self.status
        status.read(readable)
        if status.percent is not None and status.percent > self.last_percent:  # a percentage: it is generating
            self.last_percent = status.percent
            return Progress(min(status.percent, 99))
        if self.last_percent == 0 and status.queued and not status.generating:
            return Progress(0, "queued")
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
        # Our prompt as the answer's prompt block quotes it.
        progress = _AnswerProgress(json.dumps(sent, ensure_ascii=False)[1:-1])
        pieces: list[str] = []  # joined once at the end: adding to one string copied it at each chunk
        length = 0
        async with upstream_call(self.client, request, channel, state) as response:
            async for data in self._answer_data(response):
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
                    raise self.malformed(f"more than {MAX_ANSWER_CHARS:,} characters")
                event = progress.read(piece)
                if event is not None:
                    yield event
        echo = progress.echo
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

    async def _answer_data(self, response: aiohttp.ClientResponse) -> AsyncIterator[str]:
        """The answer's payloads: an SSE stream's data, or, from an upstream that answers plain JSON whatever
        ``stream`` said (a whole completion, or an error), that body as one."""
        try:
            if response.content_type != "application/json":
                async for data in sse_data(response, 4 * MAX_ANSWER_CHARS):
                    yield data
                return
            body = await read_body(response, 4 * MAX_ANSWER_CHARS)
        except (StreamTooLarge, TooLarge) as exc:
            raise self.malformed(str(exc)) from None
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
