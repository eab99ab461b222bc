"""The incremental images-answer scanner: the same answer wherever the body's reads happen to be cut."""

from __future__ import annotations

import asyncio
import base64
import json

import orjson
import pytest

from imagegate.engines.answer_scan import AnswerScanner

A = base64.b64encode(bytes(range(256)) * 3)  # every base64 character, '+' and '/' included
B = base64.b64encode(b"second image" * 40)


def _scan(body: bytes, cuts: list[int], **kw) -> tuple[AnswerScanner, dict]:
    scanner = AnswerScanner(max_bytes=kw.pop("max_bytes", 1 << 20), **kw)
    start = 0
    for cut in [*cuts, len(body)]:
        scanner.feed(body[start:cut])
        start = cut
    return scanner, scanner.finish()


DOC = (
    b'{"created": 1, "note": "a \\"b64_json\\": \\"trap\\" and b64_json: \\\\", "data": ['
    b'{"revised_prompt": "b64_json", "b64_json" : "' + A.replace(b"+", b"\\u002B") + b'"},'
    b'{"b64_json":"data:image/png;base64,' + B.replace(b"/", b"\\/") + b'", "revised_prompt": "x"}'
    b'], "usage": {"input_tokens": 3, "b64_json": null}}'
)


def test_every_cut_of_the_body_gives_the_same_answer():
    expected = json.loads(DOC)
    for cut in range(1, len(DOC)):
        scanner, doc = _scan(DOC, [cut])
        assert [bytes(img.stream.text()) for img in scanner.images] == [A, B], cut
        assert doc["data"][0]["b64_json"] == A and doc["data"][1]["b64_json"] == B
        assert doc["note"] == expected["note"] and doc["usage"] == expected["usage"]
        assert doc["data"][0]["revised_prompt"] == "b64_json" and doc["data"][1]["revised_prompt"] == "x"


def test_one_byte_at_a_time():
    scanner, doc = _scan(DOC, list(range(1, len(DOC))))
    assert doc["data"][1]["b64_json"] == B


def test_handed_over_images_are_not_copied_back():
    scanner, doc = _scan(DOC, [100])
    doc = scanner.finish(handed_over=1)
    assert doc["data"][0]["b64_json"] is None and doc["data"][1]["b64_json"] == B


def test_the_head_is_ready_once_enough_has_arrived():
    body = b'{"data": [{"b64_json": "' + A + b'"}]}'
    scanner = AnswerScanner(max_bytes=1 << 20, head_chars=64)
    scanner.feed(body[:40])
    assert scanner.images and not scanner.images[0].head_ready
    scanner.feed(body[40:100])
    assert scanner.images[0].head_ready and bytes(scanner.images[0].head) == A[:64]


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"data": [{"b64_json": "abc\x01def"}]}', "characters that base64 never has"),
        (b'{"data": [{"b64_json": "abc\\u0022"}]}', "an escape that base64 never needs"),
        (b'{"data": [{"b64_json": "abc\\u00zz"}]}', "an escape that base64 never needs"),
        (b'{"data": [{"b64_json": "abc\\t"}]}', "an escape that base64 never needs"),
        (b'{"data": [{"b64_json": "abc\\u00', "ends inside an image"),
        (b'{"data": [{"b64_json": "abcd', "ends inside an image"),
        (b'{"data": [{"b64_json": "abcd"}], "x": {"b64_json": "abcd"}}', "outside 'data'"),
        (b'{"data": [{"b64_json": "abcd"}', "not JSON"),
        (b'{"data": [{"b64_json": "data:image/png;base64"}]}', "data URL without data"),
    ],
)
def test_answers_that_are_no_images_answer_are_refused(body, message):
    with pytest.raises(ValueError, match=message):
        _scan(body, [len(body) // 2])


def test_the_size_limit_holds_while_it_arrives():
    scanner = AnswerScanner(max_bytes=100)
    scanner.feed(b"x" * 60)
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        scanner.feed(b"x" * 60)


def test_url_answers_and_null_images_pass_through_the_skeleton():
    body = orjson.dumps({"data": [{"url": "http://x/y.png", "b64_json": None}], "usage": {"output_tokens": 1}})
    scanner, doc = _scan(body, [10])
    assert scanner.images == [] and doc["data"][0] == {"url": "http://x/y.png", "b64_json": None}


def test_a_reader_follows_an_arriving_image_and_hears_its_failure():
    asyncio.run(_follow())


async def _follow():
    scanner = AnswerScanner(max_bytes=1 << 20)
    scanner.feed(b'{"data": [{"b64_json": "' + A[:100])
    stream = scanner.images[0].stream
    pieces = stream.pieces()
    assert bytes(await anext(pieces)) == A[:100]
    scanner.feed(A[100:200])
    assert bytes(await anext(pieces)) == A[100:200]
    scanner.abort(RuntimeError("cut off"))
    with pytest.raises(RuntimeError, match="cut off"):
        await anext(pieces)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data":[{"b64_json":"QUJD"},{"b64_json" : "REVG"}],"usage":{"output_tokens":1}}',
        b'{"data":[{"b64_json":"QU\\/J"}]}',
        b'{"data":[{"url":"http://x/y.png"}]}',
        b'{"data":[{"b64_json":null}]}',
        b'{"data":[{"revised_prompt":"say \\"b64_json\\": hi","b64_json":"QUJD"}]}',
        b'{\n "data" : [ {\n  "b64_json" :\t"QUJD" } ] }',
    ],
)
def test_the_scanner_agrees_with_the_real_parser(body):
    assert _text(_scan(body, [])[1]) == orjson.loads(body)


def _text(value):
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return bytes(value).decode("ascii") if isinstance(value, (bytes, memoryview)) else value


@pytest.mark.parametrize("bad", [b"QU\nJD", "QUJ\u00e9".encode(), b"QU\x00JD", b"QU\x1fJD", b"QU\x80JD",
                                 b"QU\xffJD"])
def test_base64_with_raw_control_or_non_ascii_bytes_is_refused(bad):
    # Such bytes would be spliced into our own answer as they are and break its JSON.
    with pytest.raises(ValueError, match="base64 never has"):
        _scan(b'{"data":[{"b64_json":"' + bad + b'"}]}', [])


def test_printable_ascii_that_is_no_base64_passes_as_the_upstream_sent_it():
    # Spliced as it is, it keeps our answer valid JSON (DEL included: JSON forbids only U+0000-U+001F raw); what
    # the image decodes to stays the upstream's business, as with any other corrupt base64.
    doc = _scan(b'{"data":[{"b64_json":"QU !\x7fJD"}]}', [])[1]
    assert _text(doc) == {"data": [{"b64_json": "QU !\x7fJD"}]}


def test_escaped_base64_comes_out_one_piece_a_chunk():
    # PHP escapes every '/', .NET every '+': tens of thousands of escapes in an image, each of which used to
    # become a piece of its own (and a chunk of its own in the answer).
    image = base64.b64encode(bytes(range(256)) * 400)
    escaped = image.replace(b"/", b"\\/").replace(b"+", b"\\u002B")
    body = b'{"data":[{"b64_json":"' + escaped + b'"}]}'
    cuts = list(range(4096, len(body), 4096))
    scanner = AnswerScanner(max_bytes=1 << 20)
    for start in [0, *cuts]:
        scanner.feed(body[start:start + 4096])
    assert len(scanner.images[0].stream._pieces) <= len(cuts) + 1  # before text() joins them
    assert bytes(scanner.images[0].stream.text()) == image


@pytest.mark.parametrize("escape", [b"\\\\/", b"\\u0x2b", b"\\u 02b", b"\\u+02b", b"\\u0_2b", b"\\u0041\\u0022",
                                    b"\\t"])
def test_escapes_base64_never_needs_are_refused(escape):
    # An escaped backslash, a \u whose four characters are not hex digits (int() would take these), a quote.
    for cut in ([], [22], [23], [25]):
        with pytest.raises(ValueError):
            _scan(b'{"data":[{"b64_json":"QU' + escape + b'JD"}]}', cut)
