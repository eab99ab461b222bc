import orjson
import pytest

from imagegate.engines.answer_scan import AnswerScanner
from imagegate.engines.upstream import decode_b64_image, strip_data_url


def test_data_url_prefix_is_stripped():
    assert strip_data_url("data:image/png;base64,QUJD") == "QUJD"
    assert bytes(strip_data_url(memoryview(b"data:image/png;base64,QUJD"))) == b"QUJD"
    assert bytes(strip_data_url(b"QUJD")) == b"QUJD"
    assert decode_b64_image(memoryview(b"data:image/png;base64,QUJD")) == b"ABC"
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


def test_the_consumers_time_does_not_count_against_the_upstream():
    """Images already received are not lost to a deadline that ran out while the gateway stored the first."""
    import asyncio

    from imagegate.engines.upstream import within

    async def events():
        yield 1
        yield 2  # already here: the upstream sent the whole answer at once

    async def main():
        got = []
        async for event in within(0.2, events(), lambda: AssertionError("timed out")):
            got.append(event)
            await asyncio.sleep(0.3)  # storing the first image takes longer than the whole deadline
        return got

    assert asyncio.run(main()) == [1, 2]


def test_retry_after_that_cannot_be_read_is_none():
    from imagegate.engines.upstream import retry_after_seconds

    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    for unreadable in ("soon", "30s", "Mon, 32 Jan 2025 10:00:00 GMT", "Mon, 01 Jan 99999 10:00:00 GMT"):
        assert retry_after_seconds({"retry-after": unreadable}) is None
    assert retry_after_seconds({"retry-after": "Mon, 01 Jan 2024 10:00:00 GMT"}) == 0.0  # in the past: now
    for unreadable in ("nan", "inf", "-inf"):
        assert retry_after_seconds({"retry-after": unreadable}) is None
        assert retry_after_seconds({"retry-after-ms": unreadable}) is None
    assert retry_after_seconds({"retry-after-ms": "-100000"}) == 0.0  # never a wait into the past
    assert retry_after_seconds({"retry-after": "-5"}) == 0.0


def test_a_retry_after_date_in_minus_zero_is_utc_whatever_the_machines_zone(monkeypatch):
    import time
    from datetime import datetime, timezone
    from email.utils import format_datetime

    from imagegate.engines.upstream import retry_after_seconds

    header = format_datetime(datetime.fromtimestamp(time.time() + 30, timezone.utc)).replace("+0000", "-0000")
    monkeypatch.setenv("TZ", "America/New_York")  # hours off UTC: read as local time, the wait would be too
    time.tzset()
    try:
        assert 28 <= retry_after_seconds({"retry-after": header}) <= 31
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_spliced_answer_is_the_json_the_encoder_would_write():
    from imagegate.api.render import JSONText, dumps

    body = b'{"data":[{"b64_json":"QUJD"},{"b64_json":"REVG"}]}'
    scanner = AnswerScanner(max_bytes=1024)
    scanner.feed(body)
    items = scanner.finish()["data"]
    doc = {"created": 1, "data": [{"b64_json": JSONText(i["b64_json"])} for i in items],
           "note": "\x00 looks like a placeholder \x00 1", "more": [JSONText(b"R0hJ")] * 11}
    expected = {"created": 1, "data": [{"b64_json": "QUJD"}, {"b64_json": "REVG"}],
                "note": "\x00 looks like a placeholder \x00 1", "more": ["R0hJ"] * 11}
    assert orjson.loads(dumps(doc)) == expected
    assert dumps({"plain": 1}) == orjson.dumps({"plain": 1})


class _Chunks:
    def __init__(self, chunks):
        self.chunks = chunks

    async def iter_any(self):
        for chunk in self.chunks:
            yield chunk


def _split(chunks, max_bytes=1 << 20):
    import asyncio

    from imagegate.engines.upstream import _lines

    async def collect():
        return [line async for line in _lines(_Chunks(chunks), max_bytes)]

    return asyncio.run(collect())


@pytest.mark.parametrize("text,expected", [
    (b"a\r\nb\rc\nd", ["a", "b", "c", "d"]),
    (b"a\r\r\nb\n\nc", ["a", "", "b", "", "c"]),
    (b"data: \xc3\xa9t\xc3\xa9\r\n\r\n", ["data: été", ""]),
])
def test_sse_lines_end_at_lf_crlf_or_cr_wherever_the_chunks_are_cut(text, expected):
    assert _split([text]) == expected
    for cut in range(1, len(text)):
        assert _split([text[:cut], text[cut:]]) == expected, cut
    assert _split([text[i:i + 1] for i in range(len(text))]) == expected


def test_a_stream_line_past_the_limit_is_refused_wherever_the_chunks_are_cut():
    from imagegate.engines.upstream import StreamTooLarge

    text = b"12345\n" + b"x" * 10 + b"\nyz"
    assert _split([text], max_bytes=10) == ["12345", "x" * 10, "yz"]  # at the limit: fine
    for cut in range(1, len(text)):
        assert _split([text[:cut], text[cut:]], max_bytes=10) == ["12345", "x" * 10, "yz"], cut
        with pytest.raises(StreamTooLarge):
            _split([text[:cut], text[cut:]], max_bytes=9)
    with pytest.raises(StreamTooLarge):
        _split([b"y" * 4] * 5, max_bytes=12)  # never a line break: refused once 12 bytes are passed
