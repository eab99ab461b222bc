"""A relayed b64_json image is forwarded while the upstream still sends it, once its header checks out.

The fault upstream sends the answer's first part, pauses, then the rest (or closes mid-image): the client's
answer must be the same document the buffered path makes, charged exactly; a cut-off must reach the client as a
broken answer, never a whole-looking one, and cost nothing.
"""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.billing.live import assert_books_balance, client, metered_server, new_account, quote, settled
from tests.fault_upstream import Reply
from tests.imaging_helpers import png_bytes
from tests.openapi import validate

BODY = {"model": "gpt-image-1", "prompt": "a stream", "size": "1024x1024", "quality": "low"}
USAGE = {"input_tokens": 2, "input_tokens_details": {"text_tokens": 2, "image_tokens": 0}, "output_tokens": 272,
         "total_tokens": 274}
PRICE = 11_000 + 2 * 5  # the per-image price for low 1024x1024 plus 2 prompt tokens at $5/M, in micro-dollars


def _image() -> bytes:
    """1024x1024, noisy at the top so that its base64 spans many reads (about 130 KB)."""
    pixels = np.full((1024, 1024, 3), (30, 90, 200), np.uint8)
    pixels[:32] = np.random.default_rng(3).integers(0, 256, (32, 1024, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


IMAGE = _image()
B64 = base64.b64encode(IMAGE)
SMALL = png_bytes(1024, 1024, (200, 10, 10, 255))  # a flat picture: a few KB


def _answer(b64: bytes = B64) -> tuple[bytes, int]:
    """The upstream's body, and where its image's base64 starts."""
    head = b'{"created": 1763700000, "data": [{"b64_json": "'
    tail = b'"}], "usage": ' + json.dumps(USAGE).encode() + b"}"
    return head + b64 + tail, len(head)


def _channel(faults, **extra):
    return {"name": "f", "base_url": faults.base_url, "api_key": "k", "models": ["gpt-image-1"], **extra}


def _paused(body: bytes, start: int, **extra) -> Reply:
    # The first 20,000 characters of the image (past the header the relay reads), then a pause the relay must
    # not wait for.
    return Reply(200, body, pause_at=start + 20_000, **{"pause_s": 0.4, **extra})


def test_image_is_forwarded_while_it_arrives(faults, tmp_path):
    body, start = _answer()
    faults.default = _paused(body, start)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        cost = quote(live, key, BODY)
        raw = client(live, key).images.with_raw_response.generate(**BODY)
        # The answer began before the cost was known: the headers carry the quote, as a stream's do.
        assert raw.headers["x-imagegate-quote"] == f"{cost / 1e6:.6f}"
        assert "x-imagegate-cost" not in raw.headers
        assert raw.headers.get("transfer-encoding") == "chunked"
        document = json.loads(raw.content)
        validate(document, "ImagesResponse")
        result = raw.parse()
        assert base64.b64decode(result.data[0].b64_json) == IMAGE
        assert result.size == "1024x1024" and result.output_format == "png" and result.quality == "low"
        assert result.usage.input_tokens == 2 and result.usage.output_tokens == 272
        books = settled(live, "acme")
        assert_books_balance(books)
        assert books["settle"] == PRICE and books["balance"] == 1_000_000 - PRICE


def test_a_compressed_answer_is_forwarded_while_it_arrives_too(faults, tmp_path):
    # Upstreams (OpenAI's among them) may gzip their answers: the relay reads them unpacked, as they arrive.
    import gzip

    body, _ = _answer()
    packed = gzip.compress(body)
    faults.default = Reply(200, packed, headers={"content-encoding": "gzip"}, pause_at=len(packed) // 2, pause_s=0.4)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        raw = client(live, key).images.with_raw_response.generate(**BODY)
        assert "x-imagegate-quote" in raw.headers and "x-imagegate-cost" not in raw.headers  # streamed through
        result = raw.parse()
        assert base64.b64decode(result.data[0].b64_json) == IMAGE
        assert result.usage.output_tokens == 272
        books = settled(live, "acme")
        assert_books_balance(books)
        assert books["settle"] == PRICE


def test_several_images_follow_each_other_in_one_answer(faults, tmp_path):
    head = b'{"created": 1, "data": [{"b64_json": "'
    body = head + B64 + b'"}, {"b64_json": "' + B64 + b'"}], "usage": ' + json.dumps(USAGE).encode() + b"}"
    faults.default = _paused(body, len(head))  # the answer begins mid-first image; the second follows
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        raw = client(live, key).images.with_raw_response.generate(**BODY, n=2)
        assert "x-imagegate-quote" in raw.headers
        result = raw.parse()
        assert [base64.b64decode(item.b64_json) for item in result.data] == [IMAGE, IMAGE]
        books = settled(live, "acme")
        assert_books_balance(books)
        assert books["settle"] == 2 * 11_000 + 2 * 5


def test_an_image_whole_before_the_answer_began_is_not_left_out(faults, tmp_path):
    # The first image is small (whole in the first read); the second is still arriving when the answer begins.
    small = base64.b64encode(SMALL)
    head = b'{"created": 1, "data": [{"b64_json": "' + small + b'"}, {"b64_json": "'
    body = head + B64 + b'"}], "usage": ' + json.dumps(USAGE).encode() + b"}"
    faults.default = Reply(200, body, pause_at=len(head) + 20_000, pause_s=0.4)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        raw = client(live, key).images.with_raw_response.generate(**BODY, n=2)
        assert "x-imagegate-quote" in raw.headers
        assert [base64.b64decode(item.b64_json) for item in raw.parse().data] == [SMALL, IMAGE]


@pytest.mark.parametrize("body, status, code", [
    (b'{"created": 1, "data": []}', 502, "upstream_bad_response"),
    # Relays that answer their failures with a 200: the error they name, as if it had come with its own status.
    (b'{"error": {"message": "blocked", "type": "image_generation_user_error", "code": "moderation_blocked"}}', 400,
     "moderation_blocked"),
    (b'{"error": {"message": "boom", "type": "server_error", "code": "engine_crashed"}}', 502, "engine_crashed"),
    # The operator's own upstream account is empty: not the client's insufficient_quota.
    (b'{"error": {"message": "quota", "type": "insufficient_quota"}}', 503, "upstream_quota_exhausted"),
], ids=["no-images", "moderation", "server-error", "operator-quota"])
def test_a_200_without_images_is_a_failed_upstream_answer(faults, tmp_path, body, status, code):
    faults.default = Reply(200, body)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        with pytest.raises(openai.APIStatusError) as refused:
            client(live, key).images.generate(**BODY)
        assert refused.value.status_code == status and refused.value.code == code
        assert settled(live, "acme")["settle"] == 0


def test_data_url_prefix_and_escaped_characters_are_cleaned_in_flight(faults, tmp_path):
    # A PHP relay escapes every '/' as '\/', a .NET one every '+' as '\u002B'; some relays prefix a data URL.
    dirty = b"data:image/png;base64," + B64.replace(b"/", b"\\/").replace(b"+", b"\\u002B")
    assert dirty.count(b"\\/") > 100 and dirty.count(b"\\u002B") > 100
    body, start = _answer(dirty)
    faults.default = _paused(body, start)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        raw = client(live, key).images.with_raw_response.generate(**BODY)
        assert "x-imagegate-quote" in raw.headers
        assert raw.parse().data[0].b64_json == B64.decode()


def test_upstream_cut_off_mid_image_cuts_off_the_answer_and_costs_nothing(faults, tmp_path):
    body, start = _answer()
    faults.default = _paused(body, start, cut_at=start + 60_000)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        cost = quote(live, key, BODY)
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{live.base_url}/images/generations", json=BODY,
                             headers={"Authorization": f"Bearer {key}"}) as response:
                assert response.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):
                    response.read()  # the chunked answer never ends: no client can take it for whole
        with pytest.raises(openai.APIConnectionError):
            client(live, key).images.generate(**BODY)
        books = settled(live, "acme")
        assert_books_balance(books)
        assert books["settle"] == 0 and books["balance"] == 1_000_000 and books["release"] == 2 * cost


def test_another_format_waits_for_the_whole_answer(faults, tmp_path):
    body, start = _answer()
    faults.default = _paused(body, start)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        raw = client(live, key).images.with_raw_response.generate(**BODY, output_format="webp")
        assert raw.headers["x-imagegate-cost"] == f"{PRICE / 1e6:.6f}"  # answered whole, with the exact cost
        image = Image.open(io.BytesIO(base64.b64decode(raw.parse().data[0].b64_json)))
        assert image.format == "WEBP" and image.size == (1024, 1024)


def test_a_channel_can_turn_stream_through_off(faults, tmp_path):
    body, start = _answer()
    faults.default = _paused(body, start)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults, stream_through=False),)) as live:
        key = new_account(live, "acme", "1")
        raw = client(live, key).images.with_raw_response.generate(**BODY)
        assert raw.headers["x-imagegate-cost"] == f"{PRICE / 1e6:.6f}"
        assert "x-imagegate-quote" not in raw.headers
        assert base64.b64decode(raw.parse().data[0].b64_json) == IMAGE


def test_url_answers_and_idempotent_requests_are_not_streamed(faults, tmp_path):
    body, start = _answer()
    faults.default = _paused(body, start)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        raw = client(live, key).images.with_raw_response.generate(
            **BODY, extra_headers={"Idempotency-Key": "stream-through-1"})
        assert raw.headers["x-imagegate-cost"] == f"{PRICE / 1e6:.6f}"
        again = client(live, key).images.with_raw_response.generate(
            **BODY, extra_headers={"Idempotency-Key": "stream-through-1"})
        assert again.headers["idempotent-replayed"] == "true"
        assert base64.b64decode(again.parse().data[0].b64_json) == IMAGE
        linked = client(live, key).images.with_raw_response.generate(**BODY, response_format="url")
        assert "x-imagegate-cost" in linked.headers
        assert httpx.get(linked.parse().data[0].url, timeout=30).content == IMAGE


def test_a_client_that_leaves_mid_image_still_has_it_stored_and_is_charged_once(faults, tmp_path):
    body, start = _answer()
    faults.default = _paused(body, start, pause_s=1.0)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{live.base_url}/images/generations", json=BODY,
                             headers={"Authorization": f"Bearer {key}"}) as response:
                assert response.status_code == 200
                next(response.iter_bytes())  # the answer has begun; the client goes away mid-image
        books = settled(live, "acme")
        assert_books_balance(books)
        assert books["settle"] == PRICE
        deadline = time.monotonic() + 10
        stored: list = []
        while not stored and time.monotonic() < deadline:
            stored = [p for p in (tmp_path / "data").rglob("*.png")]
            time.sleep(0.05)
        assert [p.read_bytes() for p in stored] == [IMAGE]


def test_an_upstream_cut_off_before_the_next_image_answers_the_whole_one(faults, tmp_path):
    """n=2: the first image is forwarded while it arrives and arrives whole; the connection drops at the start of
    the second, before anything of it was forwarded. The answer is a whole document with the first image, charged
    as one image."""
    head = b'{"created": 1763700000, "data": [{"b64_json": "'
    between = b'"}, {"b64_json": "'
    body = head + B64 + between + B64 + b'"}], "usage": ' + json.dumps(USAGE).encode() + b"}"
    faults.default = _paused(body, len(head), cut_at=len(head + B64 + between) + 8)
    with metered_server("sqlite", tmp_path, channels=(_channel(faults),)) as live:
        key = new_account(live, "acme", "1")
        one = quote(live, key, BODY)
        raw = client(live, key).images.with_raw_response.generate(**BODY, n=2)
        assert raw.headers.get("transfer-encoding") == "chunked"  # forwarded while it arrived
        validate(json.loads(raw.content), "ImagesResponse")
        result = raw.parse()
        assert [base64.b64decode(item.b64_json) for item in result.data] == [IMAGE]
        assert result.usage.output_tokens == 272  # one low 1024x1024 image by the tables, as billed
        books = settled(live, "acme")
        assert_books_balance(books)
        assert books["settle"] == one and faults.calls() == 1
