"""A client that leaves after its run has ended, while its answer is still being written, keeps its images: the
run was charged for them, so they are stored as for a client that left earlier. Shutdown finishes such work (a
charge being committed, images being kept) instead of cancelling it."""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import replace

from imagegate.catalog import Size, load_catalog
from imagegate.catalog.tokens import Usage
from imagegate.engines.base import Base64Stream, ImageDone, JobDone
from imagegate.gateway import Gateway
from imagegate.storage import LocalStorage, UrlSigner
from imagegate.validate import RawRequest, validate_request
from tests.imaging_helpers import png_bytes

IMAGE = png_bytes(1024, 1024, (10, 20, 30, 255))


class HandsOverAStream:
    """An engine that hands its image over while it arrives, as a relay does."""

    name = "relay"
    concurrency = 1

    async def run(self, job):
        stream = Base64Stream()
        encoded = base64.b64encode(IMAGE)
        stream.append(encoded[:100])
        yield ImageDone(0, None, "png", Size(1024, 1024), None, b64=stream)
        stream.append(encoded[100:])
        stream.close()
        yield JobDone(Usage(1, 0, 272))

    async def aclose(self):
        return None


async def _relay_request(prompt: str):
    """A validated generation for the stand-in relay engine."""
    request = await validate_request(
        RawRequest("generate", {"model": "gpt-image-1", "prompt": prompt, "size": "1024x1024"}), load_catalog(),
        max_input_pixels=10**8, max_image_bytes=10**8)
    job = request.job
    return replace(request, job=replace(job, model=replace(job.model, engine="relay")))


def _storage(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "images", UrlSigner(b"k" * 32), ttl_seconds=60)


def test_images_handed_over_as_streams_are_stored_when_the_client_leaves_late(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imagegate.gateway")

    async def main():
        request = await _relay_request("late")
        storage = _storage(tmp_path)
        gateway = Gateway(engines={"relay": HandsOverAStream()}, storage=storage)
        run = gateway.start(request)
        result = await run.wait()  # the run ends: nothing stored, the answer is still being written
        assert result.images[0].stored is None
        run.abandon()  # now the client goes
        for _ in range(100):
            if result.images[0].stored is not None:
                break
            await asyncio.sleep(0.01)
        stored = result.images[0].stored
        assert stored is not None and (storage.root / stored.name).read_bytes() == IMAGE
        run.abandon()  # once is enough
        await gateway.aclose()
        assert sorted(p.name for p in storage.root.iterdir()) == [stored.name]
        # The operator can find what the client paid for and never received.
        assert f"request {request.job.request_id} left after its run ended, before its answer was delivered; " \
               f"1 image(s) kept: {stored.name}" in caplog.messages

    asyncio.run(main())


class SlowToSettle:
    """Billing whose settlement is still being committed when the client leaves."""

    def __init__(self) -> None:
        self.settling = asyncio.Event()
        self.release = asyncio.Event()
        self.settled = False

    def keep_images_for(self, ticket) -> int:
        return 0

    async def settle(self, ticket, result, error, *, engine, cancelled=False):
        self.settling.set()
        await self.release.wait()
        self.settled = True
        return None


def test_a_client_that_leaves_while_its_run_settles_keeps_its_images(tmp_path):
    async def main():
        request = await _relay_request("settling")
        storage = _storage(tmp_path)
        billing = SlowToSettle()
        gateway = Gateway(engines={"relay": HandsOverAStream()}, storage=storage, billing=billing)  # type: ignore[arg-type]
        run = gateway.start(request, ticket=object())  # type: ignore[arg-type]
        await billing.settling.wait()  # the work is over, its charge is being committed
        assert not run.task.done() and run.result.images[0].stored is None
        run.abandon()  # the client goes now, while its answer could still be on its way
        billing.release.set()
        await run.task
        for _ in range(100):
            if run.result.images[0].stored is not None:
                break
            await asyncio.sleep(0.01)
        stored = run.result.images[0].stored
        assert stored is not None and (storage.root / stored.name).read_bytes() == IMAGE
        await gateway.aclose()

    asyncio.run(main())


def test_shutdown_waits_for_a_charge_being_committed(tmp_path):
    async def main():
        billing = SlowToSettle()
        gateway = Gateway(engines={"relay": HandsOverAStream()}, storage=_storage(tmp_path), billing=billing)  # type: ignore[arg-type]
        gateway.start(await _relay_request("shutdown"), ticket=object())  # type: ignore[arg-type]
        await billing.settling.wait()  # the work is over, its charge is being committed
        closing = asyncio.create_task(gateway.aclose())
        await asyncio.sleep(0.1)
        assert not closing.done()  # the database must stay open until the charge is in
        billing.release.set()
        await asyncio.wait_for(closing, 5)
        assert billing.settled

    asyncio.run(main())


def test_shutdown_keeps_the_images_of_a_client_that_just_left(tmp_path):
    async def main():
        storage = _storage(tmp_path)
        gateway = Gateway(engines={"relay": HandsOverAStream()}, storage=storage)
        run = gateway.start(await _relay_request("left, then shutdown"))
        result = await run.wait()
        run.abandon()  # its images are to be kept: the server stops before that is done
        await gateway.aclose()
        stored = result.images[0].stored
        assert stored is not None and (storage.root / stored.name).read_bytes() == IMAGE

    asyncio.run(main())
