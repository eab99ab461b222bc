"""The sandbox engine: real pictures, no model.

Deterministic compositions rendered from the prompt, for development, demos and tests. It honours every
request parameter as a real model would (size, transparency, format, compression, n, edits with masks and
several inputs, partial images) and reports the usage the real model would bill, but it is not a model: nothing
it draws is "generated" in the machine-learning sense.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import AsyncIterator

from imagegate import imaging
from imagegate.catalog import Size
from imagegate.catalog.tokens import PARTIAL_IMAGE_TOKENS, Usage, input_image_tokens, output_tokens, text_tokens
from imagegate.engines import sandbox_render
from imagegate.engines.base import Event, ImageDone, Job, JobDone, PartialImage, Progress


def _seed(job: Job, index: int) -> int:
    digest = hashlib.sha256(f"{job.model.id}\n{job.prompt}\n{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def job_usage(job: Job) -> Usage:
    """What the real model bills for this job, from the published token tables."""
    table = job.model.token_table
    if table == "none":
        return Usage()
    image_in = sum(
        input_image_tokens(table, Size(*img.size), job.input_fidelity) for img in job.images
    )
    out = output_tokens(table, job.quality, job.size) * job.n
    out += PARTIAL_IMAGE_TOKENS * job.partial_images * job.n
    return Usage(text_tokens=text_tokens(job.prompt), image_tokens=image_in, output_tokens=out)


class SandboxEngine:
    name = "sandbox"

    def __init__(self, latency_ms: int = 20) -> None:
        self.latency_s = latency_ms / 1000

    async def run(self, job: Job) -> AsyncIterator[Event]:
        steps = max(job.partial_images, 1) + 1
        pause = self.latency_s / (job.n * steps) if self.latency_s else 0
        yield Progress(0, "generating")
        for index in range(job.n):
            final = await asyncio.to_thread(self._render, job, index)
            for partial in range(job.partial_images):
                await asyncio.sleep(pause)
                data = await asyncio.to_thread(self._partial, job, final, partial)
                yield PartialImage(image_index=index, partial_index=partial, data=data)
                yield Progress(self._percent(job, index, partial + 1, steps))
            await asyncio.sleep(pause)
            data = await asyncio.to_thread(
                imaging.encode, final, job.output_format, compression=job.output_compression,
                transparent=job.transparent,
            )
            yield Progress(self._percent(job, index, steps, steps), "finishing" if index == job.n - 1 else "generating")
            yield ImageDone(index, data, job.output_format, job.size)
        yield JobDone(job_usage(job))

    @staticmethod
    def _percent(job: Job, index: int, step: int, steps: int) -> int:
        return min(100, int(100 * (index * steps + step) / (job.n * steps)))

    @staticmethod
    def _render(job: Job, index: int):
        width, height = job.size
        seed = _seed(job, index)
        if job.operation == "edit":
            return sandbox_render.render_edit(
                job.prompt, width, height, seed=seed, images=list(job.images), mask=job.mask,
                transparent=job.transparent,
            )
        return sandbox_render.render_generation(job.prompt, width, height, seed=seed, transparent=job.transparent)

    @staticmethod
    def _partial(job: Job, final, partial: int) -> bytes:
        preview = sandbox_render.render_partial(final, partial, job.partial_images)
        return imaging.encode(preview, job.output_format, compression=job.output_compression, transparent=job.transparent)

    async def aclose(self) -> None:
        return None
