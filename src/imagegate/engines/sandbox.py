"""The sandbox engine: real pictures, no model.

Deterministic compositions rendered from the prompt, for development, demos and tests. It honours every
request parameter as a real model would (size, transparency, format, compression, n, edits with masks and
several inputs, partial images) and reports the usage the real model would bill, but it is not a model: nothing
it draws is "generated" in the machine-learning sense.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from typing import AsyncIterator

from imagegate import imaging
from imagegate.billing.pricing import estimate_usage
from imagegate.catalog.tokens import Usage
from imagegate.engines import sandbox_render
from imagegate.engines.base import Event, ImageDone, Job, JobDone, PartialImage, Progress


def _seed(job: Job, index: int) -> int:
    digest = hashlib.sha256(f"{job.model.id}\n{job.prompt}\n{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def job_usage(job: Job) -> Usage:
    """What the real model bills for this job, from the published token tables (a chat-only model reports none)."""
    if job.model.token_table == "none":
        return Usage()
    return replace(estimate_usage(job, job.n), estimated=False)


class SandboxEngine:
    name = "sandbox"

    def __init__(self, latency_ms: int = 20) -> None:
        self.latency_s = latency_ms / 1000

    # Progress ticks per image while the simulated latency passes: enough for a visible progress bar.
    TICKS = 8

    async def run(self, job: Job) -> AsyncIterator[Event]:
        total_ticks = job.n * self.TICKS
        pause = self.latency_s / total_ticks if self.latency_s else 0
        # Partial images land on evenly spaced ticks before the last one.
        partial_at = {
            round((p + 1) * (self.TICKS - 1) / (job.partial_images + 1)): p for p in range(job.partial_images)
        }
        yield Progress(0, "generating")
        for index in range(job.n):
            final = await asyncio.to_thread(self._render, job, index)
            for tick in range(1, self.TICKS):
                if pause:
                    await asyncio.sleep(pause)
                if tick in partial_at:
                    data = await asyncio.to_thread(self._partial, job, final, partial_at[tick])
                    yield PartialImage(image_index=index, partial_index=partial_at[tick], data=data)
                yield Progress(int(100 * (index * self.TICKS + tick) / total_ticks))
            if pause:
                await asyncio.sleep(pause)
            data = await asyncio.to_thread(
                imaging.encode, final, job.output_format, compression=job.output_compression,
                transparent=job.transparent,
            )
            last = index == job.n - 1
            yield Progress(int(100 * (index + 1) / job.n), "finishing" if last else "generating")
            yield ImageDone(index, data, job.output_format, job.size)
        yield JobDone(job_usage(job))

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
