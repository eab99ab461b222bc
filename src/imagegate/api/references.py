"""Images a request points to rather than uploads: a chat message's image_url parts, a JSON edit's
``images[].image_url``. Our own signed links are read from storage; data URLs are decoded; any other URL is
fetched, from public addresses only (``allow_private_image_urls`` aside), under one deadline for all of a
request's images and a byte budget for their sum."""

from __future__ import annotations

import asyncio
import re
from fastapi import Request

from imagegate.billing.service import check_model_allowed
from imagegate.catalog import Model
from imagegate.errors import InvalidRequest
from imagegate.fetch import ByteBudget, OverBudget, fetch_image
from imagegate.validate import check_image_count, decode_data_url

OUR_LINK_RE = re.compile(r"/files/([0-9a-f]{32}\.(?:png|jpeg|webp))\?expires=(\d+)&signature=([0-9a-f]+)")


async def load_image(request: Request, url: str, param: str, budget: ByteBudget) -> bytes:
    state = request.app.state
    settings = state.settings
    try:
        ours = OUR_LINK_RE.search(url)
        if ours:  # our own signed link: read it from storage, no network round trip
            data = state.storage.open_signed(*ours.groups()).read_bytes()
        elif url.startswith("data:"):
            data = decode_data_url(url, param)
        else:
            return await fetch_image(url, param=param, max_bytes=settings.max_image_bytes,
                                     allow_private=settings.allow_private_image_urls, budget=budget)
        budget.take(len(data))
        return data
    except OverBudget:
        raise InvalidRequest(
            f"The referenced images add up to more than {budget.limit:,} bytes; send fewer or smaller images.",
            param=param, code="image_too_large",
        ) from None


def check_before_fetch(request: Request, model: Model, count: int, param: str) -> None:
    """What refuses a request before any of its ``count`` referenced images is fetched on its behalf: a key that may
    not use ``model``, or more images than the model takes."""
    check_model_allowed(model.id, getattr(request.state, "principal", None))
    check_image_count(model, count, param)


async def load_images(request: Request, refs: list[tuple[str, str]]) -> list[bytes]:
    """Every ``(param, url)`` at once: one ``image_fetch_timeout_seconds`` for them all, the whole of each fetch
    (one after another, 16 slow hosts took 16 times that before the answer began; a per-read timeout is what a
    trickling server evades), and ``max_request_bytes`` for their sum, as for an upload (counted as they arrive).
    Call :func:`check_before_fetch` first."""
    settings = request.app.state.settings
    budget = ByteBudget(settings.max_request_bytes)
    loads = [asyncio.ensure_future(load_image(request, url, param, budget)) for param, url in refs]
    try:
        async with asyncio.timeout(settings.image_fetch_timeout_seconds):
            images = await asyncio.gather(*loads)
    except TimeoutError:
        raise InvalidRequest(
            f"Fetching the referenced images took longer than {settings.image_fetch_timeout_seconds:g} s.",
            param=refs[0][0], code="image_fetch_timeout",
        ) from None
    finally:
        for load in loads:  # one failed: the others are not left running
            load.cancel()
    return images
