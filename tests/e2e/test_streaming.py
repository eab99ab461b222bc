"""stream=true on the images endpoints, through the official SDK."""

from __future__ import annotations

import asyncio
import base64

import openai
import pytest
from openai import OpenAI

from imagegate.engines.base import PartialImage, Progress
from imagegate.errors import EngineError
from tests import openapi
from tests.imaging_helpers import decode_b64, png_bytes
from tests.servers import TEST_KEY, start_server


def _events(stream):
    return [event.model_dump(exclude_none=False) | {"_obj": event} for event in stream]


def test_generate_stream_with_two_partials(client):
    stream = client.images.generate(model="gpt-image-1", prompt="a lantern", stream=True, partial_images=2,
                                    size="1024x1536", quality="low")
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for event in events:
        body = event.model_dump(exclude_none=True)
        openapi.validate(body, "ImageGenStreamEvent")
        assert decode_b64(event.b64_json).size == (1024, 1536)
        assert (event.size, event.quality, event.background, event.output_format) == ("1024x1536", "low", "opaque", "png")
    # Each partial image costs 100 output tokens on top of the image itself (408 for low 1024x1536).
    assert events[-1].usage.output_tokens == 408 + 2 * 100
    partials = [decode_b64(e.b64_json).convert("RGB") for e in events]
    assert partials[0].tobytes() != partials[-1].tobytes()


def test_partial_images_zero_gives_only_completed(client):
    events = list(client.images.generate(model="gpt-image-2", prompt="a kite", stream=True, partial_images=0,
                                         size="1024x1024", quality="low"))
    assert [e.type for e in events] == ["image_generation.completed"]
    assert events[0].usage.output_tokens == 196


def test_stream_n2_gives_a_completed_event_per_image(client):
    events = list(client.images.generate(model="gpt-image-1", prompt="two moons", stream=True, n=2, partial_images=1,
                                         size="1024x1024", quality="low"))
    types = [e.type for e in events]
    assert types.count("image_generation.partial_image") == 2
    assert types.count("image_generation.completed") == 2
    completed = [e for e in events if e.type.endswith("completed")]
    assert decode_b64(completed[0].b64_json).tobytes() != decode_b64(completed[1].b64_json).tobytes()
    assert sum(e.usage.output_tokens for e in completed) == 2 * (272 + 100)


def test_edit_stream(client):
    stream = client.images.edit(model="gpt-image-1.5", prompt="add snow", image=("a.png", png_bytes(512, 512), "image/png"),
                                stream=True, partial_images=1, size="1024x1024", quality="low")
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    for event in events:
        openapi.validate(event.model_dump(exclude_none=True), "ImageEditStreamEvent")
    assert events[-1].usage.input_tokens_details.image_tokens == 194


def test_errors_before_the_stream_are_plain_json(client):
    with pytest.raises(openai.BadRequestError) as exc:
        list(client.images.generate(model="gpt-image-1", prompt="x", stream=True, size="10x10"))
    assert exc.value.body["param"] == "size"


class _FailingEngine:
    name = "sandbox"

    def __init__(self, partials: int) -> None:
        self.partials = partials

    async def run(self, job):
        yield Progress(10)
        for index in range(self.partials):
            yield PartialImage(0, index, png_bytes(64, 64))
        await asyncio.sleep(0.01)
        raise EngineError("The upstream dropped the connection mid-generation.", code="upstream_disconnected")

    async def aclose(self):
        return None


def _failing_stream(tmp_path, partials: int):
    live = start_server(tmp_path)
    try:
        live.app.state.gateway.engines["sandbox"] = _FailingEngine(partials)
        client = OpenAI(base_url=live.base_url, api_key=TEST_KEY, max_retries=0)
        stream = client.images.generate(model="gpt-image-1", prompt="x", stream=True, partial_images=1,
                                        size="1024x1024", quality="low")
        return [event.type for event in stream]
    finally:
        live.stop()


def test_error_after_the_stream_started_is_raised_by_the_sdk(tmp_path):
    with pytest.raises(openai.APIError) as exc:
        _failing_stream(tmp_path, partials=1)
    assert not isinstance(exc.value, openai.APIStatusError)  # an error event: the stream had begun with a 200
    assert exc.value.code == "upstream_disconnected"
    assert "dropped the connection" in exc.value.message


def test_error_before_the_stream_shows_anything_keeps_its_status(tmp_path):
    # Nothing was shown yet (no partial image): the answer is still a plain error with its status, as OpenAI's.
    with pytest.raises(openai.APIStatusError) as exc:
        _failing_stream(tmp_path, partials=0)
    assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_disconnected"


def test_stream_answers_sse_whatever_accept_says(server):
    import httpx

    with httpx.stream("POST", f"{server.base_url}/images/generations",
                      headers={"Authorization": f"Bearer {TEST_KEY}", "Accept": "application/json"},
                      json={"model": "gpt-image-1", "prompt": "x", "stream": True, "size": "1024x1024", "quality": "low"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert text.startswith("event: image_generation.completed\ndata: {")
    payload = text.split("data: ", 1)[1].strip()
    import json

    assert base64.b64decode(json.loads(payload)["b64_json"])[:4] == b"\x89PNG"
