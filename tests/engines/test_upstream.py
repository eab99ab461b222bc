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
