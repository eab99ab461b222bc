"""imagegate relaying to real upstreams on loopback: a second imagegate in sandbox mode, and a fault injector."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket

import httpx
import openai
import pytest
from openai import OpenAI

from tests import openapi
from tests.fault_upstream import B64, FaultUpstream, Reply, error_body, ok_body
from tests.imaging_helpers import decode, decode_b64, mask_bytes, png_bytes
from tests.servers import TEST_KEY, start_server

RELAYED = ["gpt-image-1", "gpt-image-1.5", "gpt-image-2", "dall-e-2", "dall-e-3", "gpt-4o-image"]


def channel(name, base_url, models, **extra):
    return {"name": name, "base_url": base_url, "api_key": TEST_KEY, "models": models, **extra}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("upstream"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def front(upstream, tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("front"), channels=(channel("up", upstream.base_url, RELAYED),))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def fclient(front):
    return OpenAI(base_url=front.base_url, api_key=TEST_KEY, max_retries=0, timeout=60)


def _count_upstream_images(upstream_live):
    return len(list(upstream_live.settings.images_dir.iterdir()))


# --- in front of a second imagegate ---------------------------------------------------------------------------


def test_generation_relayed_with_usage(fclient, front):
    assert front.app.state.channels.catalog.get("gpt-image-1").engine == "relay"
    raw = fclient.images.with_raw_response.generate(model="gpt-image-1", prompt="a relay tower", size="1024x1536",
                                                   quality="high")
    body = raw.http_response.json()
    openapi.validate(body, "ImagesResponse")
    assert decode_b64(body["data"][0]["b64_json"]).size == (1024, 1536)
    assert body["usage"]["output_tokens"] == 6240  # the upstream's own usage, carried through
    assert body["size"] == "1024x1536" and body["quality"] == "high"


def test_transparent_webp_relayed(fclient):
    result = fclient.images.generate(model="gpt-image-1.5", prompt="a sticker", background="transparent",
                                     output_format="webp", size="1024x1024", quality="low")
    image = decode_b64(result.data[0].b64_json)
    assert image.format == "WEBP" and image.mode == "RGBA" and image.getchannel("A").getextrema()[0] == 0


def test_every_edit_shape_relayed(fclient, front):
    one = fclient.images.edit(model="gpt-image-1", prompt="a hat", image=("a.png", png_bytes(512, 512, (200, 0, 0, 255)), "image/png"),
                              size="1024x1024", quality="low")
    assert decode_b64(one.data[0].b64_json).size == (1024, 1024)
    assert one.usage.input_tokens_details.image_tokens == 194
    many = fclient.images.edit(
        model="gpt-image-2", prompt="a basket",
        image=[("a.png", png_bytes(1024, 1024, (240, 240, 240, 255)), "image/png"),
               ("b.png", png_bytes(256, 256, (255, 0, 0, 255)), "image/png"),
               ("c.png", png_bytes(256, 256, (0, 0, 255, 255)), "image/png")],
        size="1024x1024", quality="low",
    )
    assert many.usage.input_tokens_details.image_tokens == 3 * (65 + 129 + 4096)
    masked = fclient.images.edit(
        model="gpt-image-1.5", prompt="stars", image=("a.png", png_bytes(1024, 1024, (30, 160, 60, 255)), "image/png"),
        mask=("m.png", mask_bytes(1024, 1024, (0, 0, 512, 1024)), "image/png"), size="1024x1024", quality="low",
    )
    image = decode_b64(masked.data[0].b64_json).convert("RGB")
    assert image.getpixel((900, 500)) == (30, 160, 60)
    assert image.getpixel((100, 500)) != (30, 160, 60)
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(1024, 1024)).decode()
    response = httpx.post(f"{front.base_url}/images/edits", headers={"Authorization": f"Bearer {TEST_KEY}"},
                          json={"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": data_url}],
                                "size": "1024x1024", "quality": "low"}, timeout=60)
    assert response.status_code == 200, response.text


def test_url_answers_both_ways(fclient, front, upstream):
    # The client asks for a url: the front stores the relayed image behind its own signed link.
    result = fclient.images.generate(model="dall-e-3", prompt="an owl", size="1024x1024")
    assert result.data[0].url.startswith(front.root)
    assert decode(httpx.get(result.data[0].url).content).size == (1024, 1024)


def test_url_only_upstream_is_downloaded(upstream, tmp_path):
    live = start_server(tmp_path, channels=(channel("up", upstream.base_url, ["dall-e-2"], send_response_format=False),))
    try:
        client = OpenAI(base_url=live.base_url, api_key=TEST_KEY, max_retries=0)
        result = client.images.generate(model="dall-e-2", prompt="a hill", size="256x256", response_format="b64_json")
        assert decode_b64(result.data[0].b64_json).size == (256, 256)
    finally:
        live.stop()


def test_stream_relayed(fclient):
    events = list(fclient.images.generate(model="gpt-image-1", prompt="a lamp", stream=True, partial_images=2,
                                          size="1024x1024", quality="low"))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert events[-1].usage.output_tokens == 272 + 200
    assert decode_b64(events[-1].b64_json).size == (1024, 1024)


def test_chat_image_upstream_relayed_into_images_response(upstream, tmp_path):
    # The upstream imagegate's /v1/chat/completions speaks the seed 002 stream format.
    live = start_server(tmp_path, channels=(channel("reverse", upstream.base_url, ["gpt-4o-image-vip"], type="chat-image"),))
    try:
        client = OpenAI(base_url=live.base_url, api_key=TEST_KEY, max_retries=0)
        result = client.images.generate(model="gpt-4o-image-vip", prompt="redesign poster of Black Swan", size="1024x1536")
        assert decode_b64(result.data[0].b64_json).size == (1024, 1536)
        assert result.size == "1024x1536"
        streamed = client.chat.completions.create(model="gpt-4o-image-vip", stream=True,
                                                  messages=[{"role": "user", "content": "a cat, 3:2"}])
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert "🏃 Progress" in text and "![gen_" in text
    finally:
        live.stop()


# --- a fault-injecting upstream -------------------------------------------------------------------------------



def _front(tmp_path, *channels):
    live = start_server(tmp_path, channels=tuple(channels))
    return live, OpenAI(base_url=live.base_url, api_key=TEST_KEY, max_retries=0, timeout=30)


@contextlib.contextmanager
def _fronting(tmp_path, *channels):
    """A client of a front server over ``channels``, the server stopped afterwards."""
    live, client = _front(tmp_path, *channels)
    try:
        yield client
    finally:
        live.stop()


@pytest.fixture
def backup():
    """A second fault-injecting upstream, for failover."""
    upstream = FaultUpstream()
    yield upstream
    upstream.close()


def _generate(client, **extra):
    return client.images.generate(model="gpt-image-1", prompt="a fault", size="1024x1024", quality="low", **extra)


def test_429_with_retry_after_is_retried(faults, tmp_path):
    faults.script.append(Reply(429, error_body("slow down", "requests", "rate_limit_exceeded"), {"retry-after": "0.2"}))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        result = _generate(client)
        assert decode_b64(result.data[0].b64_json).size == (1024, 1024)
        assert faults.calls("/images/generations") == 2
        assert result.usage.output_tokens == 272


def test_500_is_returned_with_the_upstreams_code_and_not_retried(faults, tmp_path):
    faults.default = Reply(500, error_body("The server had an error", "server_error", "server_error"))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        with pytest.raises(openai.InternalServerError) as exc:
            _generate(client)
        assert exc.value.status_code == 500 and exc.value.body["code"] == "server_error"
        assert faults.calls() == 1


@pytest.mark.parametrize("reply, max_retries, tries", [
    # Overloaded: retried, then the next channel.
    (Reply(503, error_body("overloaded", "server_error", "overloaded")), 1, 2),
    # Misconfigured (its key is wrong on every try): the next channel at once, whatever max_retries says.
    (Reply(401, error_body("Incorrect API key provided", "invalid_request_error", "invalid_api_key")), 2, 1),
], ids=["503-retried", "401-not-retried"])
def test_a_failing_channel_fails_over_to_the_next(faults, backup, tmp_path, reply, max_retries, tries):
    faults.default = reply
    with _fronting(
        tmp_path,
        channel("primary", faults.base_url, ["gpt-image-1"], priority=10, max_retries=max_retries),
        channel("backup", backup.base_url, ["gpt-image-1"], priority=0),
    ) as client:
        result = _generate(client)
        assert decode_b64(result.data[0].b64_json).size == (1024, 1024)
        assert faults.calls() == tries and backup.calls() == 1


def test_connection_refused_fails_over(faults, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with _fronting(tmp_path, channel("dead", dead, ["gpt-image-1"], priority=5, max_retries=0),
                   channel("alive", faults.base_url, ["gpt-image-1"])) as client:
        assert decode_b64(_generate(client).data[0].b64_json).size == (1024, 1024)
        assert faults.calls() == 1


def test_circuit_opens_after_consecutive_failures(faults, backup, tmp_path):
    faults.default = Reply(503, error_body("down", "server_error", "overloaded"))
    with _fronting(
        tmp_path,
        channel("flaky", faults.base_url, ["gpt-image-1"], priority=5, max_retries=0, circuit_failures=2,
                circuit_cooldown_s=60),
        channel("backup", backup.base_url, ["gpt-image-1"]),
    ) as client:
        for _ in range(4):
            _generate(client)
        assert faults.calls() == 2  # then the circuit is open and the flaky channel is skipped
        assert backup.calls() == 4


@pytest.mark.parametrize(
    "reply, status, code",
    [
        (Reply(200, ok_body(), trickle_s=0.05), 504, "upstream_timeout"),
        (Reply(hang=True), 504, "upstream_timeout"),
        (Reply(200, ok_body(), truncate=True), 502, None),
        (Reply(200, b'{"created": 1, "data": [{"b64_json": "'), 502, "upstream_bad_response"),
    ],
    ids=["slow-body", "hang", "truncated-connection", "truncated-json"],
)
def test_failures_after_sending_are_not_retried(faults, backup, tmp_path, reply, status, code):
    faults.default = reply
    with _fronting(
        tmp_path,
        channel("f", faults.base_url, ["gpt-image-1"], priority=5, timeout_s=1.0),
        channel("backup", backup.base_url, ["gpt-image-1"]),
    ) as client:
        with pytest.raises(openai.APIStatusError) as exc:
            _generate(client)
        assert exc.value.status_code == status
        if code:
            assert exc.value.body["code"] == code
        assert faults.calls() == 1 and backup.calls() == 0  # it may have generated: no second call


def test_data_uri_b64_and_missing_usage_are_normalised(faults, tmp_path):
    faults.default = Reply(200, ok_body(b64="data:image/png;base64," + B64, usage=None))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        result = _generate(client)
        assert not result.data[0].b64_json.startswith("data:")
        assert decode_b64(result.data[0].b64_json).size == (1024, 1024)
        assert result.usage.output_tokens == 272  # estimated from the token table


def test_upstream_stream_with_megabyte_events_and_crlf_lines(faults, tmp_path):
    # A partial image of real size arrives as one SSE line of megabytes; some servers end lines with CRLF.
    big = base64.b64encode(os.urandom(3 * 1024 * 1024)).decode()  # stands in for a partial image's bytes
    partial = {"type": "image_generation.partial_image", "b64_json": B64, "partial_image_index": 0,
               "padding": big}
    done = {"type": "image_generation.completed", "b64_json": B64, "usage": json.loads(ok_body())["usage"]}
    stream = "".join(f"event: {e['type']}\r\ndata: {json.dumps(e)}\r\n\r\n" for e in (partial, done))
    faults.default = Reply(200, stream.encode(), {"content-type": "text/event-stream"})
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        events = list(client.images.generate(model="gpt-image-1", prompt="a fault", size="1024x1024",
                                             quality="low", stream=True, partial_images=1))
        assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
        assert decode_b64(events[0].b64_json).size == decode_b64(events[1].b64_json).size == (1024, 1024)
        assert events[1].usage.output_tokens == 272  # the upstream's own usage, passed on


def test_netrc_credentials_are_never_sent_upstream(faults, tmp_path, monkeypatch):
    # An HTTP client that reads ~/.netrc would add Basic credentials to every host, including image hosts an
    # upstream names (and refuse the channel's own bearer key alongside them).
    netrc = tmp_path / "netrc"
    netrc.write_text("default login ops password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    faults.default = Reply(200, ok_body(url=faults.image_url))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        assert decode_b64(_generate(client).data[0].b64_json).size == (1024, 1024)
        assert all("Basic" not in auth for auth in faults.authorizations)
        assert faults.authorizations == [f"Bearer {TEST_KEY}", ""]  # the call, then the image download


def test_url_only_answer_is_downloaded_and_re_served(faults, tmp_path):
    faults.default = Reply(200, ok_body(url=faults.image_url))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        b64 = _generate(client)
        assert decode_b64(b64.data[0].b64_json).size == (1024, 1024)
        url = _generate(client, response_format="url")
        assert url.data[0].url.startswith(str(client.base_url).removesuffix("/v1/"))  # served by the front
        assert decode(httpx.get(url.data[0].url).content).size == (1024, 1024)


def test_moderation_blocked_keeps_its_code(faults, tmp_path):
    faults.default = Reply(400, error_body("Your request was rejected by the safety system.", "image_generation_user_error",
                                           "moderation_blocked"))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        with pytest.raises(openai.BadRequestError) as exc:
            _generate(client)
        assert exc.value.body["code"] == "moderation_blocked"
        assert exc.value.body["type"] == "image_generation_user_error"
        assert faults.calls() == 1


def test_parameters_forwarded_and_policies_applied(faults, tmp_path):
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1", "gpt-4o-image"],
                                     model_map={"gpt-image-1": "gpt-image-1-upstream"})) as client:
        _generate(client, moderation="low", background="opaque", output_format="png", output_compression=80)
        sent = json.loads(faults.requests[-1][2])
        assert sent["model"] == "gpt-image-1-upstream"
        assert sent["moderation"] == "low" and sent["background"] == "opaque" and sent["output_compression"] == 80
        assert sent["size"] == "1024x1024" and sent["quality"] == "low" and sent["n"] == 1
        client.images.generate(model="gpt-4o-image", prompt="x", size="1024x1024")
        assert "quality" not in json.loads(faults.requests[-1][2])
        # No quality, or 'auto': the upstream is told the quality it is priced at, never left to pick a dearer one.
        for asked in ({}, {"quality": "auto"}):
            client.images.generate(model="gpt-image-1", prompt="x", size="1024x1024", **asked)
            assert json.loads(faults.requests[-1][2])["quality"] == "medium"
        client.images.edit(model="gpt-image-1", prompt="x", image=[("a.png", png_bytes(64, 64), "image/png"),
                                                                  ("b.png", png_bytes(64, 64), "image/png")],
                           mask=("m.png", mask_bytes(64, 64, (0, 0, 32, 32)), "image/png"), size="1024x1024")
        path, content_type, body = faults.requests[-1]
        assert path.endswith("/images/edits") and content_type.startswith("multipart/form-data")
        assert body.count(b'name="image[]"') == 2 and body.count(b'name="mask"') == 1


def test_any_parameter_can_be_dropped_streaming_included(faults, tmp_path):
    """An upstream that cannot stream: `stream` and `partial_images` dropped, its plain answer becomes the client's
    stream; and a drop list of one's own replaces the default, as documented."""
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"], drop_params=["stream", "partial_images",
                                                                                          "response_format"])) as client:
        events = list(client.images.generate(model="gpt-image-1", prompt="x", size="1024x1024", quality="low",
                                             stream=True, partial_images=2))
        sent = json.loads(faults.requests[-1][2])
        assert not {"stream", "partial_images", "response_format"} & set(sent) and sent["quality"] == "low"
        assert [e.type for e in events] == ["image_generation.completed"]
        assert decode_b64(events[0].b64_json).size == (1024, 1024) and events[0].usage.output_tokens == 272


def test_usage_without_output_tokens_is_estimated_not_taken_as_none(faults, tmp_path):
    faults.default = Reply(200, ok_body(usage={"input_tokens": 12, "total_tokens": 12}))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        assert _generate(client).usage.output_tokens == 272  # a low 1024x1024 image, by the table


@pytest.mark.parametrize("kind", ["openai", "chat-image"])
def test_a_stream_line_without_end_is_cut_off_at_the_download_limit(faults, tmp_path, kind):
    """An upstream streaming without line breaks is not kept in memory until its time runs out."""
    faults.default = Reply(200, b"data: " + b"A" * 5_000_000, {"content-type": "text/event-stream"})
    model = "gpt-image-1" if kind == "openai" else "gpt-4o-image"
    with _fronting(tmp_path, channel("f", faults.base_url, [model], type=kind,
                                     max_download_bytes=1_000_000)) as client:
        with pytest.raises(openai.APIStatusError) as exc:
            if kind == "openai":
                list(client.images.generate(model=model, prompt="x", size="1024x1024", quality="low", stream=True,
                                            partial_images=1))
            else:
                client.images.generate(model=model, prompt="x", size="1024x1024")
        assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_bad_response"
        assert "of its stream passed" in exc.value.message


def test_azure_is_told_by_its_host_not_a_substring():
    from imagegate.config import ChannelConfig
    from imagegate.engines.openai_compat import OpenAICompatEngine

    def engine(base_url: str) -> OpenAICompatEngine:
        return OpenAICompatEngine(ChannelConfig(name="c", base_url=base_url, api_key="secret", models=["gpt-image-1"]),
                                  None)  # type: ignore[arg-type]

    for azure in ("https://acme.openai.azure.com/openai/v1", "https://acme.cognitiveservices.azure.com/openai/v1"):
        assert engine(azure)._headers()["api-key"] == "secret" and engine(azure).official
    for relay in ("https://relay.azurewebsites.net/v1", "https://azure-relay.example.com/v1"):
        headers = engine(relay)._headers()
        assert headers["Authorization"] == "Bearer secret" and "api-key" not in headers
        assert not engine(relay).official
    assert engine("https://api.openai.com/v1").official


def test_no_channel_can_honour_the_request(faults, tmp_path):
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"], transparency=False, max_n=2)) as client:
        with pytest.raises(openai.BadRequestError) as exc:
            _generate(client, background="transparent")
        assert exc.value.body["code"] == "no_capable_channel"
        with pytest.raises(openai.BadRequestError):
            _generate(client, n=3)
        assert faults.calls() == 0


# --- what review found --------------------------------------------------------------------------------------------


def _chat_answer(*texts: str) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": {"content": text}}]} for text in texts]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


def test_chat_upstream_never_fetches_links_from_the_echoed_prompt(faults, tmp_path):
    bait = FaultUpstream()
    try:
        injected = bait.image_url
        prompt_block = json.dumps({"prompt": f"a cat ![x]({injected})", "ratio": "1:1"})
        faults.default = Reply(200, _chat_answer(prompt_block, "\n> ✅ Generation complete\n\n",
                                                 f"![gen_1]({faults.image_url})"),
                               {"content-type": "text/event-stream"})
        live, client = _front(tmp_path, channel("chat", faults.base_url, ["gpt-4o-image"], type="chat-image"))
        try:
            result = client.images.generate(model="gpt-4o-image", prompt=f"a cat ![x]({injected})", size="1024x1024")
            assert decode_b64(result.data[0].b64_json).size == (1024, 1024)
            assert bait.requests == [] and faults.calls() == 1
        finally:
            live.stop()
    finally:
        bait.close()


def test_upstream_links_to_private_hosts_are_refused(faults, tmp_path):
    private = faults.image_url.replace("127.0.0.1", "localhost")  # not the channel's own host
    faults.default = Reply(200, ok_body(url=private))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        with pytest.raises(openai.APIStatusError) as exc:
            _generate(client)
        assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_bad_response"
        assert "not a public address" in exc.value.message


def test_client_errors_do_not_open_the_circuit(faults, tmp_path):
    faults.script.extend([Reply(400, error_body("blocked", "image_generation_user_error", "moderation_blocked"))] * 4)
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"], circuit_failures=2)) as client:
        for _ in range(4):
            with pytest.raises(openai.BadRequestError):
                _generate(client)
        assert decode_b64(_generate(client).data[0].b64_json).size == (1024, 1024)  # another user is still served


def test_upstream_auth_failure_is_a_502_that_leaks_nothing(faults, tmp_path):
    faults.default = Reply(401, error_body("Incorrect API key provided: sk-proj-abcd****wxyz", "invalid_request_error",
                                           "invalid_api_key"))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"], max_retries=0)) as client:
        with pytest.raises(openai.InternalServerError) as exc:
            _generate(client)
        assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_misconfigured"
        assert "sk-proj" not in exc.value.message


def test_the_upstreams_retry_after_reaches_the_client_with_its_429(faults, tmp_path):
    faults.default = Reply(429, error_body("slow down", "requests", "rate_limit_exceeded"), {"retry-after": "75"})
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"], max_retries=0)) as client:
        with pytest.raises(openai.RateLimitError) as exc:
            _generate(client)
        assert exc.value.response.headers["retry-after"] == "75"  # too long to wait here: the client decides


def test_numeric_upstream_codes_become_strings(faults, tmp_path):
    faults.default = Reply(500, json.dumps({"error": {"message": "boom", "type": "server_error", "code": 1234}}).encode())
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        with pytest.raises(openai.InternalServerError) as exc:
            _generate(client)
        assert exc.value.body["code"] == "1234"


# --- what a review of the router found ------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["0.2", "soon", "Mon, 32 Jan 2025 10:00:00 GMT", "nan", "-5"])
def test_a_429_is_retried_whatever_its_retry_after_says(faults, tmp_path, retry_after):
    faults.script.append(Reply(429, error_body("slow down", "requests", "rate_limit_exceeded"),
                               {"retry-after": retry_after}))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        assert decode_b64(_generate(client).data[0].b64_json).size == (1024, 1024)
        assert faults.calls() == 2  # an unreadable Retry-After means the usual back-off, not a failed request


def test_an_upstream_image_the_gateway_cannot_read_is_the_upstreams_fault(faults, tmp_path):
    # Not the asked-for PNG, so it would be converted; it is no image at all.
    faults.default = Reply(200, ok_body(b64=base64.b64encode(b"<html>no image here</html>").decode()))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        with pytest.raises(openai.APIStatusError) as exc:
            _generate(client)
        assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_bad_response"
        assert exc.value.body["param"] is None  # nothing the client sent is to blame


def test_the_operators_upstream_quota_is_not_the_clients(faults, backup, tmp_path):
    faults.default = Reply(429, error_body("You exceeded your current quota.", "insufficient_quota",
                                           "insufficient_quota"))
    with _fronting(tmp_path, channel("empty", faults.base_url, ["gpt-image-1"], priority=5),
                   channel("backup", backup.base_url, ["gpt-image-1"])) as client:
        assert decode_b64(_generate(client).data[0].b64_json).size == (1024, 1024)  # failed over
        assert faults.calls() == 1 and backup.calls() == 1
        backup.default = faults.default
        with pytest.raises(openai.InternalServerError) as exc:
            _generate(client)
        assert exc.value.status_code == 503 and exc.value.body["code"] == "upstream_quota_exhausted"


def test_a_moderation_block_mid_stream_is_the_clients_and_leaves_the_circuit_closed(faults, tmp_path):
    blocked = {"type": "error", "error": {"message": "Your request was rejected by the safety system.",
                                          "type": "image_generation_user_error", "code": "moderation_blocked"}}
    faults.script.append(Reply(200, b"data: " + json.dumps(blocked).encode() + b"\n\n",
                               {"content-type": "text/event-stream"}))
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"], circuit_failures=1)) as client:
        with pytest.raises(openai.APIError) as exc:
            list(client.images.generate(model="gpt-image-1", prompt="a fault", size="1024x1024", quality="low",
                                        stream=True))
        assert exc.value.body["code"] == "moderation_blocked"
        assert decode_b64(_generate(client).data[0].b64_json).size == (1024, 1024)  # the next user is served


def test_noise_in_an_upstream_stream_is_skipped(faults, tmp_path):
    completed = {"type": "image_generation.completed", "b64_json": B64, "usage": {
        "input_tokens": 3, "input_tokens_details": {"text_tokens": 3, "image_tokens": 0}, "output_tokens": 272,
        "total_tokens": 275}}
    faults.default = Reply(200, b"data: keep-alive\n\ndata: 1\n\ndata: " + json.dumps(completed).encode() + b"\n\n"
                           b"data: [DONE]\n\n", {"content-type": "text/event-stream"})
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"])) as client:
        events = list(client.images.generate(model="gpt-image-1", prompt="a fault", size="1024x1024", quality="low",
                                             stream=True))
        assert events[-1].type == "image_generation.completed"
        assert decode_b64(events[-1].b64_json).size == (1024, 1024)


def test_a_circuit_that_opens_mid_request_is_not_retried(faults, backup, tmp_path):
    faults.default = Reply(503, error_body("down", "server_error", "overloaded"))
    with _fronting(
        tmp_path,
        channel("flaky", faults.base_url, ["gpt-image-1"], priority=5, max_retries=2, circuit_failures=1),
        channel("backup", backup.base_url, ["gpt-image-1"]),
    ) as client:
        assert decode_b64(_generate(client).data[0].b64_json).size == (1024, 1024)
        assert faults.calls() == 1 and backup.calls() == 1  # its first failure opened it: no retries into it


def test_a_masked_edit_never_goes_to_a_chat_channel(faults, backup, tmp_path):
    with _fronting(
        tmp_path,
        channel("chat", backup.base_url, ["gpt-image-1"], type="chat-image", priority=5),
        channel("images", faults.base_url, ["gpt-image-1"]),
    ) as client:
        client.images.edit(model="gpt-image-1", prompt="stars", quality="low", size="1024x1024",
                           image=("a.png", png_bytes(1024, 1024), "image/png"),
                           mask=("m.png", mask_bytes(1024, 1024, (0, 0, 512, 1024)), "image/png"))
        assert backup.calls() == 0 and faults.calls("/images/edits") == 1
        assert b'name="mask"' in faults.requests[-1][2]


def test_a_channel_that_cannot_be_reached_fails_over_within_its_connect_timeout(faults, tmp_path):
    # A listener that never accepts, its backlog filled: a connection to it hangs in the handshake.
    with socket.socket() as stuck:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)
        fillers = []
        try:
            while len(fillers) < 16:  # until one hangs: the backlog is full
                try:
                    fillers.append(socket.create_connection(stuck.getsockname(), timeout=0.2))
                except TimeoutError:
                    break
            dead = f"http://127.0.0.1:{stuck.getsockname()[1]}/v1"
            with _fronting(
                tmp_path,
                channel("stuck", dead, ["gpt-image-1"], priority=5, connect_timeout_s=0.3, timeout_s=5),
                channel("alive", faults.base_url, ["gpt-image-1"]),
            ) as client:
                assert decode_b64(_generate(client).data[0].b64_json).size == (1024, 1024)
                assert faults.calls() == 1
        finally:
            for filler in fillers:
                filler.close()


def test_a_stream_refused_by_the_upstream_is_a_plain_error_with_its_status(faults, tmp_path):
    faults.default = Reply(429, error_body("slow down", "requests", "rate_limit_exceeded"), {"retry-after": "0"})
    with _fronting(tmp_path, channel("f", faults.base_url, ["gpt-image-1"], max_retries=0)) as client:
        with pytest.raises(openai.RateLimitError) as exc:  # the SDK can retry it, as it would OpenAI's own
            list(client.images.generate(model="gpt-image-1", prompt="a fault", size="1024x1024", quality="low",
                                        stream=True, partial_images=1))
        assert exc.value.status_code == 429 and exc.value.body["code"] == "rate_limit_exceeded"


def test_an_upstreams_queue_shows_in_a_chat_stream(faults, tmp_path):
    faults.default = Reply(200, _chat_answer("```json\n{}\n```\n\n", "> 🕐 Queuing\n\n", "> ⚡ Generating\n\n",
                                             "> 🏃 Progress 50 100\n\n> ✅ Generation complete\n\n",
                                             f"![gen_1]({faults.image_url})"),
                           {"content-type": "text/event-stream"})
    with _fronting(tmp_path, channel("chat", faults.base_url, ["gpt-4o-image"], type="chat-image")) as client:
        streamed = client.chat.completions.create(model="gpt-4o-image", stream=True,
                                                  messages=[{"role": "user", "content": "a cat"}])
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert "> 🕐 Queuing\n\n" in text and "None" not in text  # queued upstream, at no position we know
        assert text.index("Queuing") < text.index("Generating")


def _chat_channel(faults):
    return channel("chat", faults.base_url, ["gpt-4o-image"], type="chat-image", max_n=4)


def test_a_chat_upstreams_image_that_cannot_be_fetched_is_left_out_not_the_answer(faults, tmp_path):
    """Fewer images than asked is an answer (seed 001): one whose download fails does not lose the others."""
    dead = "http://127.0.0.1:9/gone.png"  # the channel's own host, nothing listening
    faults.default = Reply(200, _chat_answer("> ✅ Generation complete\n\n", f"![gen_1]({dead})\n\n",
                                             f"![gen_2]({faults.image_url})"), {"content-type": "text/event-stream"})
    with _fronting(tmp_path, _chat_channel(faults)) as client:
        result = client.images.generate(model="gpt-4o-image", prompt="two cats", size="1024x1024", n=2)
        assert len(result.data) == 1 and decode_b64(result.data[0].b64_json).size == (1024, 1024)
        faults.default = Reply(200, _chat_answer("> ✅ Generation complete\n\n", f"![gen_1]({dead})"),
                               {"content-type": "text/event-stream"})
        with pytest.raises(openai.APIStatusError) as exc:  # none could be fetched: the request fails
            client.images.generate(model="gpt-4o-image", prompt="a cat", size="1024x1024")
        assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_bad_response"


def test_a_chat_upstream_that_answers_plain_json_is_read(faults, tmp_path):
    answer = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                   "content": f"> ✅ Generation complete\n\n![gen_1]({faults.image_url})"}}]}
    faults.default = Reply(200, json.dumps(answer).encode())  # stream=true ignored
    with _fronting(tmp_path, _chat_channel(faults)) as client:
        result = client.images.generate(model="gpt-4o-image", prompt="a cat", size="1024x1024")
        assert decode_b64(result.data[0].b64_json).size == (1024, 1024)
        faults.default = Reply(200, json.dumps({"error": {"message": "Your prompt was flagged.", "type": "upstream_error",
                                                          "code": "input_moderation"}}).encode())
        with pytest.raises(openai.BadRequestError) as exc:  # a refusal, as seeds 000/002 show it: the client's 400
            client.images.generate(model="gpt-4o-image", prompt="a cat", size="1024x1024")
        assert exc.value.body["code"] == "input_moderation"
        # Past any chat answer's size, plain JSON is malformed, as an oversized stream is (not "no image").
        faults.default = Reply(200, json.dumps({"choices": [], "padding": "x" * 4_100_000}).encode())
        with pytest.raises(openai.InternalServerError) as exc:
            client.images.generate(model="gpt-4o-image", prompt="a cat", size="1024x1024")
        assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_bad_response"


def test_words_in_the_prompt_are_not_read_as_the_upstreams_progress(faults, tmp_path):
    prompt = "a poster saying Progress 80 percent"
    echo = json.dumps({"prompt": f"{prompt}\n1:1", "ratio": "1:1"}, ensure_ascii=False)
    # The echo streams in small pieces, as tokens do: none of them may be read before it is known to be the echo.
    pieces = [echo[i:i + 5] for i in range(0, len(echo), 5)]
    faults.default = Reply(200, _chat_answer(*pieces, "\n\n", "> 🏃 Progreso 11....", "64....\n\n",
                                             "> ✅ Generation complete\n\n", f"![gen_1]({faults.image_url})"),
                           {"content-type": "text/event-stream"})
    with _fronting(tmp_path, _chat_channel(faults)) as client:
        streamed = client.chat.completions.create(model="gpt-4o-image", stream=True,
                                                  messages=[{"role": "user", "content": prompt}])
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert "Progress 11 64 100" in text  # the upstream's own line (in Spanish), not the 80 of the prompt


def test_a_chat_stream_that_fails_says_so_in_the_conversation(faults, tmp_path):
    """A chat window shows content, not error events: a failure after the stream began is written into the
    message (the SDK still raises on the error event that follows)."""
    faults.default = Reply(200, _chat_answer("> 🏃 Progress 11....", "64....\n\n", "Sorry, something broke."),
                           {"content-type": "text/event-stream"})
    with _fronting(tmp_path, _chat_channel(faults)) as client:
        text = ""
        with pytest.raises(openai.APIError) as exc:
            for chunk in client.chat.completions.create(model="gpt-4o-image", stream=True,
                                                         messages=[{"role": "user", "content": "a cat"}]):
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        assert "Progress 11 64" in text and "> ❌ Generation failed: " in text and "Sorry, something broke." in text
        assert "finished without an image" in exc.value.message


def test_an_upstreams_refusal_is_a_refusal_in_chat(faults, tmp_path):
    refusal = json.dumps({"error": {"message": "Your prompt was flagged.", "type": "upstream_error",
                                    "code": "input_moderation"}})
    faults.default = Reply(200, f"data: {refusal}\n\n".encode(), {"content-type": "text/event-stream"})
    with _fronting(tmp_path, _chat_channel(faults)) as client:
        whole = client.chat.completions.create(model="gpt-4o-image", messages=[{"role": "user", "content": "a cat"}])
        assert whole.choices[0].finish_reason == "content_filter"
        assert whole.choices[0].message.content == "⚠️ Your prompt was flagged."
        chunks = list(client.chat.completions.create(model="gpt-4o-image", stream=True,
                                                     messages=[{"role": "user", "content": "a cat"}]))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "⚠️ Your prompt was flagged." in text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
