"""The ``chat-image`` channel type: upstreams that serve image models only through /v1/chat/completions.

This is how the reverse gpt-4o-image interfaces of seeds 001/002 work: the prompt (and reference images as
image_url parts) goes in a chat message, and the answer streams back as text — a JSON prompt block, queue and
progress lines, then markdown image links. We read that stream, report its progress, download the images and
hand them on as a normal images result.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import AsyncIterator

import httpx

from imagegate.catalog.sizes import ratio_from_prompt, ratio_label
from imagegate.config import ChannelConfig
from imagegate.engines.base import Event, ImageDone, Job, JobDone, Progress
from imagegate.engines.openai_compat import _sse_data, _usage
from imagegate.engines.upstream import conform, download, error_from_response, transport_error
from imagegate.errors import UpstreamError

_IMAGE_LINK_RE = re.compile(r"!\[[^\]]*\]\((https?://[^)\s]+)\)")
_NUMBER_RE = re.compile(r"(?<![\d/%])(\d{1,3})(?=\.{2,}|\s|$|\])")


class ChatImageEngine:
    def __init__(self, channel: ChannelConfig, client: httpx.AsyncClient) -> None:
        self.channel = channel
        self.client = client
        self.name = f"chat-image:{channel.name}"

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

    async def run(self, job: Job) -> AsyncIterator[Event]:
        channel = self.channel
        headers = {"Authorization": f"Bearer {channel.api_key}"} if channel.api_key else {}
        request = self.client.build_request(
            "POST", f"{channel.base_url.rstrip('/')}/chat/completions", json=self._body(job), headers=headers
        )
        sent = False
        text = ""
        try:
            async with asyncio.timeout(channel.timeout_s):
                response = await self.client.send(request, stream=True)
                sent = True
                try:
                    if response.status_code >= 400:
                        raise error_from_response(response, await response.aread(), channel.name, channel.failure_policy)
                    last_percent = 0
                    async for data in _sse_data(response):
                        if data.strip() == "[DONE]":
                            break
                        try:
                            chunk = json.loads(data)
                        except ValueError:
                            continue  # keep-alive noise
                        if chunk.get("error"):
                            err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
                            raise UpstreamError(
                                str(err.get("message") or "upstream error"), code=err.get("code") or "upstream_error",
                                failure_policy=channel.failure_policy,
                            )
                        for choice in chunk.get("choices") or []:
                            delta = (choice.get("delta") or choice.get("message") or {}).get("content")
                            if delta:
                                text += delta
                        percent = _latest_percent(text)
                        if "Queuing" in text and "Generating" not in text and last_percent == 0:
                            yield Progress(0, "queued")
                        elif percent is not None and percent > last_percent:
                            last_percent = percent
                            yield Progress(min(percent, 99))
                finally:
                    await response.aclose()
                urls = _IMAGE_LINK_RE.findall(text)
                if not urls:
                    raise UpstreamError(
                        f"The upstream '{channel.name}' finished without an image.",
                        code="upstream_no_image", failure_policy=channel.failure_policy,
                    )
                delivered = 0
                for index, url in enumerate(urls[: job.n]):
                    try:
                        raw = await download(self.client, url, max_bytes=channel.max_download_bytes)
                        data_bytes, fmt, size = await asyncio.to_thread(
                            conform, raw, job.output_format, job.output_compression, job.transparent
                        )
                    except (ValueError, httpx.HTTPError, OSError) as exc:
                        raise UpstreamError(
                            f"Downloading image {index} from the upstream '{channel.name}' failed: {exc}.",
                            code="upstream_bad_response", failure_policy=channel.failure_policy,
                        ) from None
                    delivered += 1
                    yield ImageDone(index, data_bytes, fmt, size)
                yield Progress(100, "finishing")
                yield JobDone(_usage(None, job, delivered))
        except UpstreamError:
            raise
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            left = sent or not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            raise transport_error(exc, channel.name, channel.failure_policy, sent=left) from None

    async def aclose(self) -> None:
        return None


def _latest_percent(text: str) -> int | None:
    """The last progress number in lines like ``🏃 Progress 11....19....27...[100](...)``."""
    start = text.rfind("Progress")
    if start < 0:
        return None
    numbers = [int(n) for n in _NUMBER_RE.findall(text[start + len("Progress"):]) if int(n) <= 100]
    if not numbers:
        tail = re.findall(r"\[(\d{1,3})\]", text[start:])
        numbers = [int(n) for n in tail]
    return numbers[-1] if numbers else None
