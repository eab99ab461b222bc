"""The prompt guard inside the pipeline: refused before any engine runs, with the safe wording."""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI

from tests.fault_upstream import FaultUpstream, Reply
from tests.imaging_helpers import decode_b64, png_bytes
from tests.servers import TEST_KEY, start_server


class CountingEngine:
    """Wraps the sandbox and counts what reaches it."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    async def run(self, job):
        self.calls += 1
        async for event in self.inner.run(job):
            yield event

    async def aclose(self):
        await self.inner.aclose()


@pytest.fixture
def counted(tmp_path):
    live = start_server(tmp_path)
    engine = CountingEngine(live.app.state.gateway.engines["sandbox"])
    live.app.state.gateway.engines["sandbox"] = engine
    yield live, engine, OpenAI(base_url=live.base_url, api_key=TEST_KEY, max_retries=0)
    live.stop()


def test_living_artist_is_refused_before_the_engine_with_the_safe_wording(counted):
    live, engine, client = counted
    before = set(live.settings.images_dir.iterdir())
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model="gpt-image-1", prompt="a forest spirit in the style of Hayao Miyazaki",
                               response_format="url")
    body = exc.value.body
    assert body["type"] == "image_generation_user_error" and body["code"] == "moderation_blocked"
    assert body["param"] is None
    assert "use 'Studio Ghibli-inspired, bright modern Japanese anime style' instead of 'Hayao Miyazaki'" in body["message"]
    assert body["moderation_details"] == {"moderation_stage": "input", "categories": ["living_artist"]}
    assert engine.calls == 0
    assert set(live.settings.images_dir.iterdir()) == before


@pytest.mark.parametrize("prompt", ["宫崎骏风格的森林", "un bosque al estilo de Makoto Shinkai", "ＭＩＹＡＺＡＫＩ forest"])
def test_other_languages_and_spellings_are_refused(counted, prompt):
    _, engine, client = counted
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model="gpt-image-2", prompt=prompt, size="1024x1024", quality="low")
    assert exc.value.body["code"] == "moderation_blocked"
    assert engine.calls == 0


def test_styles_and_deceased_artists_pass(counted):
    _, engine, client = counted
    for prompt in ("a forest in Ghibli style", "吉卜力风格的森林", "a Pixar style robot", "starry night like Van Gogh",
                   "Mona Lisa as a cat"):
        client.images.generate(model="gpt-image-1", prompt=prompt, size="1024x1024", quality="low")
    assert engine.calls == 5


def test_moderation_low_relaxes_soft_categories_only(counted):
    _, engine, client = counted
    suggestive = "a model in lingerie on a beach"
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="gpt-image-1", prompt=suggestive, size="1024x1024", quality="low")
    client.images.generate(model="gpt-image-1", prompt=suggestive, moderation="low", size="1024x1024", quality="low")
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="gpt-image-1", prompt="a naked woman", moderation="low", size="1024x1024")
    assert engine.calls == 1


def test_edits_use_the_deployment_policy(counted):
    _, engine, client = counted
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.edit(model="gpt-image-1", prompt="redraw as Makoto Shinkai would",
                           image=("a.png", png_bytes(64, 64), "image/png"))
    assert exc.value.body["code"] == "moderation_blocked"
    assert engine.calls == 0


def test_chat_block_is_an_assistant_message(counted):
    _, engine, client = counted
    result = client.chat.completions.create(model="gpt-4o-image-vip",
                                            messages=[{"role": "user", "content": "宫崎骏 style castle, 2:3"}])
    assert result.choices[0].finish_reason == "content_filter"
    assert "吉卜力" in result.choices[0].message.content or "Ghibli" in result.choices[0].message.content
    stream = client.chat.completions.create(model="gpt-4o-image-vip", stream=True,
                                            messages=[{"role": "user", "content": "Hayao Miyazaki castle"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "instead of 'Hayao Miyazaki'" in text
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert engine.calls == 0


def test_rewrite_policy_goes_on_with_the_suggestion(tmp_path):
    live = start_server(tmp_path, guard_policy="rewrite")
    try:
        client = OpenAI(base_url=live.base_url, api_key=TEST_KEY, max_retries=0)
        result = client.images.generate(model="gpt-image-1", prompt="a castle by Hayao Miyazaki at dusk",
                                        size="1024x1024", quality="low")
        assert decode_b64(result.data[0].b64_json).size == (1024, 1024)
        used = result.data[0].revised_prompt
        assert "Miyazaki" not in used and "Ghibli" in used and used.endswith("at dusk")
        with pytest.raises(openai.BadRequestError):  # nothing safe to say instead: still refused
            client.images.generate(model="gpt-image-1", prompt="explicit sex scene")
    finally:
        live.stop()


def test_second_stage_moderation_endpoint(tmp_path):
    moderation = FaultUpstream()
    flagged = {"id": "modr-1", "model": "omni-moderation-latest",
               "results": [{"flagged": True, "categories": {"violence": True, "hate": False}}]}
    clean = {"id": "modr-2", "model": "omni-moderation-latest", "results": [{"flagged": False, "categories": {}}]}
    moderation.script.extend([Reply(200, json.dumps(flagged).encode()), Reply(200, json.dumps(clean).encode()),
                              Reply(500, b"{}")])
    live = start_server(tmp_path, moderation_url=moderation.base_url, moderation_api_key="mod-key")
    try:
        client = OpenAI(base_url=live.base_url, api_key=TEST_KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError) as exc:
            client.images.generate(model="gpt-image-1", prompt="a quiet street", size="1024x1024", quality="low")
        assert exc.value.body["moderation_details"]["categories"] == ["violence"]
        client.images.generate(model="gpt-image-1", prompt="a quiet street", size="1024x1024", quality="low")
        with pytest.raises(openai.InternalServerError) as down:
            client.images.generate(model="gpt-image-1", prompt="a quiet street", size="1024x1024", quality="low")
        assert down.value.body["code"] == "moderation_unavailable"
        # The rules stage refuses first: the endpoint is not consulted for a prompt the rules already block.
        calls = moderation.calls("/moderations")
        with pytest.raises(openai.BadRequestError):
            client.images.generate(model="gpt-image-1", prompt="Hayao Miyazaki forest")
        assert moderation.calls("/moderations") == calls == 3
        path, _, body = moderation.requests[0]
        assert json.loads(body) == {"input": "a quiet street", "model": "omni-moderation-latest"}
    finally:
        live.stop()
        moderation.close()


def test_blocked_request_costs_nothing_and_is_logged_with_its_category(tmp_path):
    from tests.billing.live import admin, client as metered_client, metered_server, new_account, settled
    
    with metered_server("sqlite", tmp_path, guard_policy="block") as live:
        strict = new_account(live, "acme", "1")
        with pytest.raises(openai.BadRequestError):
            metered_client(live, strict).images.generate(model="gpt-image-1", prompt="Makoto Shinkai skies")
        books = settled(live, "acme")
        assert books["hold"] == 0 and books["settle"] == 0 and books["balance"] == 1_000_000
        rows = admin(live, "GET", "/usage", params={"account": "acme"}).json()["data"]
        assert [(r["status"], r["error_code"], r["cost_micro"]) for r in rows] == [
            ("refused", "moderation_blocked:living_artist", 0)]
        # A key may carry its own policy: this one rewrites instead of refusing.
        made = admin(live, "POST", "/keys", json={"account": "acme", "guard_policy": "rewrite"})
        assert made.status_code == 201 and made.json()["guard_policy"] == "rewrite"
        result = metered_client(live, made.json()["key"]).images.generate(
            model="gpt-image-1", prompt="Makoto Shinkai skies", size="1024x1024", quality="low")
        assert "Shinkai" not in result.data[0].revised_prompt
        assert admin(live, "POST", "/keys", json={"account": "acme", "guard_policy": "maybe"}).status_code == 400
