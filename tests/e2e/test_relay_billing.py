"""Relayed requests are charged for what was delivered: nothing when an upstream fails, unless the channel's
policy is `charge` (an upstream that bills failed calls), and once when a retry or failover succeeds."""

from __future__ import annotations

import json

import openai
import pytest

from tests.billing.live import admin, assert_books_balance, client, metered_server, new_account, quote, settled
from tests.cycles import runs_freed_without_the_cyclic_collector
from tests.fault_upstream import B64, USAGE, FaultUpstream, Reply, error_body, ok_body
from tests.imaging_helpers import decode_b64

BODY = {"model": "gpt-image-1", "prompt": "a fault", "size": "1024x1024", "quality": "low"}
SERVER_ERROR = Reply(500, error_body("The server had an error", "server_error", "server_error"))


def _channel(name, upstream, **extra):
    return {"name": name, "base_url": upstream.base_url, "api_key": "k", "models": ["gpt-image-1"], **extra}



def _run(tmp_path, channels, expect_error: bool):
    with metered_server("sqlite", tmp_path, channels=tuple(channels)) as live:
        key = new_account(live, "acme", "1")
        cost = quote(live, key, BODY)
        if expect_error:
            with pytest.raises(openai.APIStatusError) as exc:
                client(live, key).images.generate(**BODY)
            error = exc.value
        else:
            client(live, key).images.generate(**BODY)
            error = None
        books = settled(live, "acme")
        assert_books_balance(books)
        return cost, books, error


@pytest.mark.parametrize(
    "reply, status",
    [
        (SERVER_ERROR, 500),
        (Reply(hang=True), 504),
        (Reply(200, b'{"created": 1, "data": [{"b64_json": "'), 502),
        (Reply(400, error_body("Your request was rejected by the safety system.", "image_generation_user_error",
                               "moderation_blocked")), 400),
    ],
    ids=["500", "hang", "truncated-json", "moderation-blocked"],
)
def test_failed_relay_costs_nothing_by_default(faults, tmp_path, reply, status):
    faults.default = reply
    cost, books, error = _run(tmp_path, [_channel("f", faults, timeout_s=1.0)], expect_error=True)
    assert error.status_code == status
    assert books["settle"] == 0 and books["balance"] == 1_000_000 and books["release"] == cost


def test_failed_relay_is_charged_under_the_channels_charge_policy(faults, tmp_path):
    faults.default = SERVER_ERROR
    cost, books, _ = _run(tmp_path, [_channel("f", faults, failure_policy="charge")], expect_error=True)
    assert books["settle"] == cost and books["balance"] == 1_000_000 - cost


def test_nothing_generated_is_never_charged_even_under_the_charge_policy(faults, tmp_path):
    faults.default = Reply(503, error_body("overloaded", "server_error", "overloaded"))
    cost, books, error = _run(tmp_path, [_channel("f", faults, failure_policy="charge", max_retries=1)],
                              expect_error=True)
    assert error.status_code == 503 and faults.calls() == 2
    assert books["settle"] == 0


def test_retry_and_failover_charge_once(faults, tmp_path):
    backup = FaultUpstream()
    faults.script.append(Reply(429, error_body("slow down", "requests", "rate_limit_exceeded"), {"retry-after": "0"}))
    faults.default = Reply(503, error_body("overloaded", "server_error", "overloaded"))
    try:
        cost, books, _ = _run(tmp_path, [_channel("primary", faults, priority=1, max_retries=1),
                                         _channel("backup", backup)], expect_error=False)
        assert faults.calls() == 2 and backup.calls() == 1
        assert 0 < books["settle"] <= cost and books["hold"] == cost  # one hold, settled once
    finally:
        backup.close()


def test_upstream_usage_is_what_is_charged(faults, tmp_path):
    usage = {"input_tokens": 2, "input_tokens_details": {"text_tokens": 2, "image_tokens": 0}, "output_tokens": 272,
             "total_tokens": 274}
    faults.default = Reply(200, ok_body(usage=usage))
    cost, books, _ = _run(tmp_path, [_channel("f", faults)], expect_error=False)
    assert books["settle"] == 11_000 + 2 * 5  # the per-image price plus the upstream's 2 prompt tokens at $5/M


@pytest.mark.parametrize("kind", ["b64_json", "url"])
def test_an_unusable_image_among_several_leaves_the_rest_delivered_and_charged(faults, tmp_path, kind):
    """n=2, one item unusable (base64 that is no image; a link that cannot be fetched): the other is the answer
    (fewer images than asked is one), charged as one image; the upstream's usage counted both, so what was
    delivered is estimated."""
    if kind == "b64_json":
        items = [{"b64_json": "@@@@"}, json.loads(ok_body())["data"][0]]
    else:
        items = [{"url": faults.image_url.replace("/img.png", "/gone")}, {"url": faults.image_url}]
    faults.default = Reply(200, json.dumps({"created": 1, "data": items, "usage": USAGE}).encode())
    two = {**BODY, "n": 2}
    with metered_server("sqlite", tmp_path, channels=(_channel("f", faults),)) as live:
        key = new_account(live, "acme", "1")
        one_image = quote(live, key, BODY)
        result = client(live, key).images.generate(**two)
        assert len(result.data) == 1 and decode_b64(result.data[0].b64_json).size == (1024, 1024)
        assert result.usage.output_tokens == 272  # one low 1024x1024 image by the table, not the upstream's 2 x
        books = settled(live, "acme")
        assert books["settle"] == one_image and faults.calls() == 1
        assert_books_balance(books)


def test_an_answer_whose_every_image_is_unusable_fails_and_costs_nothing(faults, tmp_path):
    faults.default = Reply(200, json.dumps({"created": 1, "data": [{"b64_json": "@@@@"}, {"b64_json": "!!!!"}],
                                            "usage": USAGE}).encode())
    with metered_server("sqlite", tmp_path, channels=(_channel("f", faults),)) as live:
        key = new_account(live, "acme", "1")
        with pytest.raises(openai.APIStatusError) as exc:
            client(live, key).images.generate(**{**BODY, "n": 2})
        assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_bad_response"
        assert settled(live, "acme")["settle"] == 0


def _sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)


PARTIAL = {"type": "image_generation.partial_image", "b64_json": B64, "partial_image_index": 0}
COMPLETED = {"type": "image_generation.completed", "b64_json": B64, "usage": USAGE}
STREAM_ERROR = {"type": "error", "error": {"message": "The server had an error", "type": "server_error",
                                           "code": "server_error"}}


@pytest.mark.parametrize("policy", ["refund", "charge"])
@pytest.mark.parametrize("ending", ["error-event", "connection-lost"])
def test_a_stream_cut_short_after_a_whole_image_answers_that_image(faults, tmp_path, ending, policy):
    """n=2, streamed: the upstream finishes the first image, then fails (an error event, or its connection drops
    inside the second image). The first image is the client's: it is answered, and charged as one image with the
    usage its completed event reported (the whole quote under the `charge` policy, whose upstream bills the call);
    it was thrown away with the error."""
    stream = _sse(PARTIAL, COMPLETED)
    if ending == "error-event":
        faults.default = Reply(200, stream + _sse(STREAM_ERROR), {"content-type": "text/event-stream"})
    else:
        faults.default = Reply(200, stream + _sse(PARTIAL), {"content-type": "text/event-stream"},
                               cut_at=len(stream) + 100)
    asked = {**BODY, "partial_images": 1, "stream": True}
    with metered_server("sqlite", tmp_path, channels=(_channel("f", faults, failure_policy=policy),)) as live:
        key = new_account(live, "acme", "1")
        two = quote(live, key, {**asked, "n": 2})
        events = list(client(live, key).images.generate(**asked, n=2))
        assert [event.type for event in events] == ["image_generation.partial_image", "image_generation.completed"]
        assert decode_b64(events[-1].b64_json).size == (1024, 1024)
        usage = events[-1].usage
        assert (usage.input_tokens, usage.output_tokens) == (12, 272)  # the upstream's, as billed
        books = settled(live, "acme")
        # The low 1024x1024 image, its partial image (100 tokens at $40/M) and the upstream's 12 prompt tokens at $5/M.
        one = 11_000 + 100 * 40 + 12 * 5
        assert books["settle"] == (one if policy == "refund" else two) and faults.calls() == 1
        assert_books_balance(books)
        [row] = admin(live, "GET", "/usage?account=acme").json()["data"]
        assert (row["status"], row["n_delivered"]) == ("ok", 1)  # with the error that cut it short
        assert row["error_code"] == ("server_error" if ending == "error-event" else "upstream_disconnected")


def test_a_run_cut_short_leaves_no_run_for_the_cyclic_collector(faults, tmp_path):
    """The error a run was cut short by is kept with the run; its traceback held the run's own frame, a cycle that
    kept the run and its images until the cyclic collector came by."""
    faults.default = Reply(200, _sse(COMPLETED, STREAM_ERROR), {"content-type": "text/event-stream"})
    with metered_server("sqlite", tmp_path, channels=(_channel("f", faults),)) as live:
        key = new_account(live, "acme", "1")
        with runs_freed_without_the_cyclic_collector():
            for _ in range(2):
                events = list(client(live, key).images.generate(**BODY, n=2, stream=True, partial_images=1))
                assert [event.type for event in events] == ["image_generation.completed"]


def test_a_stream_whose_usage_lacks_output_tokens_is_estimated_once_for_the_job(faults, tmp_path):
    """Each completed event's usage without output tokens is no usage: the job's is taken from the tables, its
    prompt counted once. Summed per image, an estimate of the whole job's input counted it n times in the answer's
    usage (and in the charge, up to the hold)."""
    partial_usage = {"input_tokens": 9, "input_tokens_details": {"text_tokens": 9, "image_tokens": 0}}
    completed = {**COMPLETED, "usage": partial_usage}
    faults.default = Reply(200, _sse(completed, completed), {"content-type": "text/event-stream"})
    with metered_server("sqlite", tmp_path, channels=(_channel("f", faults),)) as live:
        key = new_account(live, "acme", "1")
        one = quote(live, key, BODY)  # one low 1024x1024 image and the prompt's estimated tokens
        events = list(client(live, key).images.generate(**BODY, n=2, stream=True))
        assert [event.type for event in events] == ["image_generation.completed"] * 2
        # The answer's usage counts the prompt once, at $5/M: what the quote of one image priced besides the image.
        assert sum(event.usage.input_tokens for event in events) * 5 == one - 11_000
        books = settled(live, "acme")
        assert books["settle"] == one + 11_000  # the second image adds its price, not the prompt again
        assert_books_balance(books)


def test_a_chat_refusal_billed_under_charge_says_its_cost(faults, tmp_path):
    """An upstream's refusal in a chat answered whole (not streamed) carries the cost it was charged, as any
    answer does; under `charge` it is not free, and it said nothing."""
    refusal = json.dumps({"error": {"message": "Your prompt was flagged.", "type": "upstream_error",
                                    "code": "input_moderation"}})
    faults.default = Reply(200, f"data: {refusal}\n\n".encode(), {"content-type": "text/event-stream"})
    chat = {"name": "chat", "base_url": faults.base_url, "api_key": "k", "models": ["gpt-4o-image"],
            "type": "chat-image", "failure_policy": "charge"}
    with metered_server("sqlite", tmp_path, channels=(chat,)) as live:
        key = new_account(live, "acme", "1")
        raw = client(live, key).chat.completions.with_raw_response.create(
            model="gpt-4o-image", messages=[{"role": "user", "content": "a cat"}])
        assert raw.parse().choices[0].finish_reason == "content_filter"
        books = settled(live, "acme")
        assert books["settle"] > 0 and raw.headers["x-imagegate-cost"] == f"{books['settle'] / 1e6:.6f}"
        assert_books_balance(books)
