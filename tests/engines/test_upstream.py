import orjson
import pytest

from imagegate.engines.upstream import decode_b64_image, loads_images_json, strip_data_url


@pytest.mark.parametrize(
    "body",
    [
        b'{"data":[{"b64_json":"QUJD"},{"b64_json" : "REVG"}],"usage":{"output_tokens":1}}',
        b'{"data":[{"b64_json":"QU\\/J"}]}',  # an escaped slash: the full parser must decode it
        b'{"data":[{"url":"http://x/y.png"}]}',
        b'{"x":{"b64_json":"QUJD"},"data":[]}',  # a b64_json outside data[]: parsed the ordinary way
        b'{"data":[{"b64_json":null}]}',
        b'{"data":[{"revised_prompt":"say \\"b64_json\\": hi","b64_json":"QUJD"}]}',
    ],
)
def test_lifting_parser_agrees_with_the_real_one(body):
    assert loads_images_json(body) == orjson.loads(body)


def test_truncated_answer_is_an_error():
    with pytest.raises(orjson.JSONDecodeError):
        loads_images_json(b'{"created": 1, "data": [{"b64_json": "QUJD')


def test_data_url_prefix_is_stripped():
    assert strip_data_url("data:image/png;base64,QUJD") == "QUJD"
    assert decode_b64_image("data:image/png;base64,QUJD") == b"ABC"
    assert decode_b64_image("QUJD") == b"ABC"


def test_deadline_never_cancels_the_consumer():
    """The relay deadline bounds the upstream's steps, not the caller's own work between them."""
    import asyncio

    from imagegate.engines.upstream import within

    class Late(Exception):
        pass

    async def events():
        yield 1
        await asyncio.sleep(10)  # an upstream that stalls after its first event
        yield 2

    async def main():
        got = []
        consumer_slept = False
        try:
            async for event in within(0.2, events(), Late):
                got.append(event)
                await asyncio.sleep(0.3)  # the consumer is busy past the deadline: it must not be cancelled
                consumer_slept = True
        except Late:
            return got, consumer_slept
        raise AssertionError("no timeout")

    assert asyncio.run(main()) == ([1], True)
