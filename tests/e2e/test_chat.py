"""/v1/chat/completions for image models: the seeds' chat flow through the official SDK."""

from __future__ import annotations

import base64
import json
import re
import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests import openapi
from tests.image_host import image_host
from tests.imaging_helpers import decode, png_bytes
from tests.servers import TEST_KEY, start_server

LINK_RE = re.compile(r"!\[(gen_[0-9a-f]+)\]\((http[^)]+)\)")
SEED_PROMPT = (
    "Redesign [Girl wearing a pearl earring] as an anime-style illustrated cover. Preserve original essence and "
    "composition. Render in refined Kyoto Anime-inspired style. 2:3 portrait"
)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("chat"), sandbox_latency_ms=400, engine_concurrency=1)
    yield live
    live.stop()


def _collect(stream) -> tuple[str, list]:
    text, chunks = "", []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text, chunks


def test_stream_shows_progress_in_order_and_links_real_images(slow_server):
    client = OpenAI(base_url=slow_server.base_url, api_key=TEST_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-image-vip", stream=True,
        messages=[{"role": "user", "content": [{"type": "text", "text": SEED_PROMPT}]}],
    )
    text, chunks = _collect(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert text.startswith("```json\n{\n  \"prompt\": ")
    assert '"ratio": "2:3"' in text
    order = [text.index(marker) for marker in ("```json", "⚡ Generating", "🏃 Progress", " 100", "✅ Generation complete", "![gen_")]
    assert order == sorted(order)
    percents = [int(p) for p in re.findall(r" (\d{1,3})(?=[ \n])", text.split("🏃 Progress", 1)[1].split("✅")[0])]
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) >= 4
    links = LINK_RE.findall(text)
    assert len(links) == 1
    image = decode(httpx.get(links[0][1]).content)
    assert image.size == (1024, 1536)  # the 2:3 the prompt asked for
    download = re.search(r"\[Click to download\]\((http[^)]+)\)", text).group(1)
    response = httpx.get(download)
    assert response.headers["content-disposition"].startswith("attachment")
    assert decode(response.content).size == (1024, 1536)


def test_non_stream_returns_the_same_markdown(client):
    result = client.chat.completions.create(
        model="gpt-4o-image", messages=[{"role": "user", "content": "a wide mountain panorama, 3:2"}],
    )
    message = result.choices[0].message
    assert message.role == "assistant" and result.choices[0].finish_reason == "stop"
    assert result.object == "chat.completion"
    links = LINK_RE.findall(message.content)
    assert len(links) == 1
    assert decode(httpx.get(links[0][1]).content).size == (1536, 1024)
    assert "[Click to download](" in message.content


def test_gpt_image_model_through_chat_reports_usage(client):
    result = client.chat.completions.create(
        model="gpt-image-1", messages=[{"role": "user", "content": "a lighthouse"}], extra_body={"quality": "low"},
    )
    assert result.usage.completion_tokens == 272
    assert result.usage.total_tokens == result.usage.prompt_tokens + 272


def test_a_stream_carries_usage_only_when_asked_as_openai_does(client):
    def chunks(**extra):
        return list(client.chat.completions.create(
            model="gpt-image-1", stream=True, messages=[{"role": "user", "content": "a lighthouse"}],
            extra_body={"quality": "low"}, **extra))

    plain = chunks()
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"
    counted = chunks(stream_options={"include_usage": True})
    *rest, last = counted
    assert last.choices == [] and last.usage.completion_tokens == 272  # after the finishing chunk
    assert rest[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in rest)
    whole = client.chat.completions.with_raw_response.create(
        model="gpt-image-1", messages=[{"role": "user", "content": "x"}], extra_body={"quality": "low"})
    openapi.validate(whole.http_response.json(), "CreateChatCompletionResponse")  # the message's refusal: null
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-image-1", stream=True, messages=[{"role": "user", "content": "a lighthouse"}],
        stream_options={"include_usage": True}, extra_body={"quality": "low"})
    sent = [json.loads(line[6:]) for line in raw.http_response.read().decode().splitlines()
            if line.startswith("data: {")]
    for chunk in sent:
        openapi.validate(chunk, "CreateChatCompletionStreamResponse")
    # "usage": null on every chunk but the last, as the spec says of include_usage.
    assert [c["usage"] is None for c in sent] == [True] * (len(sent) - 1) + [False]


def test_image_url_reference_makes_it_an_edit(client):
    red = base64.b64encode(png_bytes(1024, 1024, (220, 20, 20, 255))).decode()
    result = client.chat.completions.create(
        model="gpt-4o-image-vip",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "put a hat on it"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{red}"}},
        ]}],
    )
    url = LINK_RE.findall(result.choices[0].message.content)[0][1]
    image = decode(httpx.get(url).content).convert("RGB")
    r, g, b = image.resize((1, 1)).getpixel((0, 0))
    assert r > g + 50 and r > b + 50  # built on the red reference


def test_an_unusable_reference_image_is_refused_naming_its_message(client):
    not_an_image = base64.b64encode(b"GIF89a but not really").decode()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-4o-image-vip", messages=[
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "put a hat on it"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{not_an_image}"}}]},
        ])
    assert exc.value.body["param"] == "messages[2].content"  # where the client put it; there is no 'image' field


def test_follow_up_edits_the_previous_image(client):
    first = client.chat.completions.create(model="gpt-4o-image", messages=[{"role": "user", "content": "a red car, 2:3"}])
    answer = first.choices[0].message.content
    second = client.chat.completions.create(model="gpt-4o-image", messages=[
        {"role": "user", "content": "a red car, 2:3"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "make it bluer"},
    ])
    url = LINK_RE.findall(second.choices[0].message.content)[0][1]
    assert decode(httpx.get(url).content).size == (1024, 1536)  # kept the previous image's shape
    assert '"prompt": "make it bluer"' in second.choices[0].message.content


TYPED = "https://elsewhere.example/files/" + "0" * 32 + ".png?expires=1&signature=00"  # looks like ours


@pytest.mark.parametrize("prompt", [f"like this one: {TYPED}, 2:3", f"```\nlike this one: {TYPED}, 2:3"],
                         ids=["plain", "with a code fence"])
def test_follow_up_edits_our_image_not_a_link_the_user_typed(client, prompt):
    first = client.chat.completions.create(model="gpt-4o-image", messages=[{"role": "user", "content": prompt}])
    answer = first.choices[0].message.content
    assert TYPED in answer  # quoted back in the prompt block, before the image we made
    second = client.chat.completions.create(model="gpt-4o-image", messages=[
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "make it bluer"},
    ])
    url = LINK_RE.findall(second.choices[0].message.content)[0][1]
    assert decode(httpx.get(url).content).size == (1024, 1536)  # the image we made, not the typed link


def test_a_follow_up_finds_the_image_in_an_answer_sent_back_as_text_parts(client):
    first = client.chat.completions.create(model="gpt-4o-image", messages=[{"role": "user", "content": "a red car, 2:3"}])
    parts = [{"type": "text", "text": first.choices[0].message.content}]  # as many chat clients send history
    second = client.chat.completions.create(model="gpt-4o-image", messages=[
        {"role": "user", "content": "a red car, 2:3"},
        {"role": "assistant", "content": parts},
        {"role": "user", "content": "make it bluer"},
    ])
    url = LINK_RE.findall(second.choices[0].message.content)[0][1]
    assert decode(httpx.get(url).content).size == (1024, 1536)  # an edit of the previous image, not a new square


def test_a_follow_up_with_a_model_that_cannot_edit_draws_anew(client):
    first = client.chat.completions.create(model="dall-e-3", messages=[{"role": "user", "content": "a red car"}])
    second = client.chat.completions.create(model="dall-e-3", messages=[
        {"role": "user", "content": "a red car"},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "now a blue boat"},
    ])
    assert second.choices[0].finish_reason == "stop" and LINK_RE.findall(second.choices[0].message.content)


def test_remote_image_urls_private_refused_unless_allowed(client, tmp_path):
    with image_host() as host:
        messages = [{"role": "user", "content": [{"type": "text", "text": "restyle"},
                                                 {"type": "image_url", "image_url": {"url": host.url}}]}]
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="gpt-image-1", messages=messages)
        assert "private or loopback" in exc.value.message
        live = start_server(tmp_path, allow_private_image_urls=True)
        try:
            allowed = OpenAI(base_url=live.base_url, api_key=TEST_KEY, max_retries=0)
            result = allowed.chat.completions.create(model="gpt-image-1", messages=messages, extra_body={"quality": "low"})
            link = LINK_RE.findall(result.choices[0].message.content)[0][1]
            assert decode(httpx.get(link).content).size == (1536, 1024)  # the 3:2 reference's shape
        finally:
            live.stop()


def test_text_only_model_points_to_the_image_endpoints(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])
    assert exc.value.body["param"] == "model"
    assert "/v1/images/generations" in exc.value.message


def test_queue_position_is_shown_while_waiting(slow_server):
    client = OpenAI(base_url=slow_server.base_url, api_key=TEST_KEY, max_retries=0)
    texts = {}

    def ask(name):
        stream = client.chat.completions.create(model="gpt-4o-image", stream=True,
                                                messages=[{"role": "user", "content": f"picture {name}"}])
        texts[name] = _collect(stream)[0]

    first = threading.Thread(target=ask, args=("one",))
    first.start()
    time.sleep(0.15)
    ask("two")
    first.join()
    assert "Queuing" not in texts["one"]
    assert "> 🕐 Queuing, position 1" in texts["two"]
    assert texts["two"].index("Queuing") < texts["two"].index("Generating")


def test_client_disconnect_mid_stream_keeps_the_image(slow_server):
    images_dir = slow_server.settings.images_dir
    before = set(images_dir.iterdir())
    with httpx.stream("POST", f"{slow_server.base_url}/chat/completions",
                      headers={"Authorization": f"Bearer {TEST_KEY}"},
                      json={"model": "gpt-4o-image", "stream": True, "messages": [{"role": "user", "content": "a boat"}]},
                      timeout=30) as response:
        for line in response.iter_lines():
            if "Generating" in line:
                break  # leave mid-generation
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(set(images_dir.iterdir()) - before) < 1:
        time.sleep(0.1)
    new = set(images_dir.iterdir()) - before
    assert len(new) == 1
    assert decode(next(iter(new)).read_bytes()).size == (1024, 1024)


def test_too_many_reference_urls_are_refused_before_any_fetch(client):
    with image_host() as host:
        parts = [{"type": "text", "text": "combine"}] + [{"type": "image_url", "image_url": {"url": host.url}}] * 20
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="gpt-image-1", messages=[{"role": "user", "content": parts}])
        assert "at most 16" in exc.value.message
        assert host.hits == []


