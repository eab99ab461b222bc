"""What the images API's stream events say about the image they carry."""

from __future__ import annotations

import orjson

from imagegate.api.render import StreamRenderer, images_tail
from imagegate.catalog import Size, load_catalog
from imagegate.catalog.tokens import Usage
from imagegate.engines.base import ImageDone
from imagegate.gateway import DeliveredImage, RunResult
from imagegate.validate import RawRequest, validate
from tests.imaging_helpers import png_bytes


def test_a_completed_event_states_the_size_produced_as_the_plain_answer_does():
    """An upstream may answer another size than asked (a chat upstream, size=auto): the stream and the plain
    answer both say what the image is."""
    request = validate(RawRequest("generate", {"model": "gpt-image-1", "prompt": "a cat", "size": "1024x1024",
                                               "stream": True}), load_catalog(), max_input_pixels=1 << 26,
                       max_image_bytes=1 << 26)
    done = ImageDone(0, png_bytes(64, 96), "png", Size(1024, 1536))
    event = StreamRenderer(request).completed(done, Usage(3, 0, 272))
    body = orjson.loads(event.split(b"data: ", 1)[1])
    assert body["type"] == "image_generation.completed" and body["size"] == "1024x1536"
    assert images_tail(request, RunResult(images=[DeliveredImage(done)]))["size"] == "1024x1536"
