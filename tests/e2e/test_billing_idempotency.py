"""Idempotency-Key on generations and edits: a retry returns the stored result without running or charging
again; the same key with another body is a 409; twins in flight at once are charged once."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from imagegate.errors import EngineError
from tests.billing.live import (  # noqa: F401  (fixtures)
    admin, assert_books_balance, backend, client, metered, metered_server, new_account, settled,
)
from tests.imaging_helpers import png_bytes
from tests.servers import TEST_KEY

LOW = {"model": "gpt-image-1", "prompt": "a red fox in snow", "size": "1024x1024", "quality": "low"}


def _idem(key: str) -> dict:
    return {"extra_headers": {"Idempotency-Key": key}}


def test_a_retry_returns_the_stored_result_and_is_not_charged_again(metered):
    key = new_account(metered, "acme", "1")
    sdk = client(metered, key)
    first = sdk.images.with_raw_response.generate(**LOW, n=2, **_idem("order-1"))
    again = sdk.images.with_raw_response.generate(**LOW, n=2, **_idem("order-1"))
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert [d.b64_json for d in again.parse().data] == [d.b64_json for d in first.parse().data]
    assert again.parse().usage == first.parse().usage and again.parse().created == first.parse().created
    assert again.headers["x-imagegate-cost"] == first.headers["x-imagegate-cost"] == "0.022025"
    assert again.headers["x-imagegate-balance"] == first.headers["x-imagegate-balance"] == "0.977975"
    t = settled(metered, "acme")
    assert t["settle"] == 22_025 and t["hold"] == 22_025
    assert len(admin(metered, "GET", "/usage").json()["data"]) == 1
    # Another key is another request.
    sdk.images.generate(**LOW, **_idem("order-2"))
    assert settled(metered, "acme")["settle"] == 22_025 + 11_025


def test_a_retry_finds_its_images_however_short_lived_image_links_are(backend, tmp_path):  # noqa: F811
    """Image links live url_ttl_seconds (1 s here), idempotency keys a day: the images a key's retry replays are
    kept for as long as the key is, or the retry would be told to generate, and pay, again."""
    with metered_server(backend, tmp_path, url_ttl_seconds=1) as live:
        sdk = client(live, new_account(live, "acme", "1"))
        first = sdk.images.generate(**LOW, **_idem("order-1"))
        time.sleep(2.1)
        again = sdk.images.with_raw_response.generate(**LOW, **_idem("order-1"))
        assert again.headers["idempotent-replayed"] == "true"
        assert again.parse().data[0].b64_json == first.data[0].b64_json
        assert settled(live, "acme")["settle"] == 11_025


def test_the_same_key_with_another_body_is_a_409(metered):
    key = new_account(metered, "acme", "1")
    sdk = client(metered, key)
    sdk.images.generate(**LOW, **_idem("k"))
    with pytest.raises(openai.ConflictError) as exc:
        sdk.images.generate(**{**LOW, "prompt": "a blue fox"}, **_idem("k"))
    assert exc.value.code == "idempotency_key_reused"
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert settled(metered, "acme")["settle"] == 11_025


def test_twins_in_flight_at_once_run_and_charge_once(backend, tmp_path):  # noqa: F811
    with metered_server(backend, tmp_path, sandbox_latency_ms=400) as live:
        key = new_account(live, "acme", "1")

        def call(idem_key):
            answer = httpx.post(f"{live.base_url}/images/generations", json=LOW, timeout=30,
                                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem_key})
            return answer.status_code, answer.json()["data"][0]["b64_json"]

        with ThreadPoolExecutor(8) as pool:
            slow = list(pool.map(call, ["twin-slow"] * 8))
            live.app.state.gateway.engines["sandbox"].latency_s = 0  # and twins that race the claim itself
            fast = list(pool.map(call, ["twin-fast"] * 8))
        for results in (slow, fast):
            assert {status for status, _ in results} == {200}
            assert len({b64 for _, b64 in results}) == 1
        t = settled(live, "acme")
        assert t["hold"] == t["settle"] == 2 * 11_025
        assert_books_balance(t)


def test_a_client_that_timed_out_gets_its_image_on_retry_charged_once(backend, tmp_path):  # noqa: F811
    with metered_server(backend, tmp_path, sandbox_latency_ms=1200) as live:
        key = new_account(live, "acme", "1")
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "slow-1"}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{live.base_url}/images/generations", json=LOW, headers=headers,
                       timeout=httpx.Timeout(30, read=0.3))
        deadline = time.monotonic() + 20
        while admin(live, "GET", "/accounts/acme/totals").json()["hold"] == 0:  # the first claimed the key
            assert time.monotonic() < deadline
            time.sleep(0.02)
        retry = httpx.post(f"{live.base_url}/images/generations", json=LOW, headers=headers, timeout=30)
        assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["data"][0]["b64_json"]
        t = settled(live, "acme")
        assert t["hold"] == t["settle"] == 11_025


class _FailOnce:
    name = "sandbox"

    def __init__(self, inner):
        self.inner, self.failed = inner, False

    async def run(self, job):
        if not self.failed:
            self.failed = True
            await asyncio.sleep(0.01)
            raise EngineError("The engine fell over.", code="engine_crashed")
        async for event in self.inner.run(job):
            yield event

    async def aclose(self):
        return None


def test_a_refunded_failure_is_run_again_on_retry(metered):
    key = new_account(metered, "acme", "1")
    gateway = metered.app.state.gateway
    gateway.engines["sandbox"] = _FailOnce(gateway.engines["sandbox"])
    sdk = client(metered, key)
    with pytest.raises(openai.APIStatusError):
        sdk.images.generate(**LOW, **_idem("retry-me"))
    result = sdk.images.generate(**LOW, **_idem("retry-me"))
    assert len(result.data) == 1
    t = settled(metered, "acme")
    assert t["settle"] == 11_025 and t["hold"] == 2 * 11_025 and t["release"] == 11_025
    assert_books_balance(t)


def test_a_charged_failure_is_replayed_not_charged_again(backend, tmp_path):  # noqa: F811
    prices = tmp_path / "prices.toml"
    prices.write_text('[failure_policy]\nsandbox = "charge"\n')
    with metered_server(backend, tmp_path, price_file=prices) as live:
        key = new_account(live, "acme", "1")
        gateway = live.app.state.gateway
        gateway.engines["sandbox"] = _FailOnce(gateway.engines["sandbox"])
        sdk = client(live, key)
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as exc:
                sdk.images.generate(**LOW, **_idem("charged"))
            assert exc.value.code == "engine_crashed"
        assert exc.value.response.headers["idempotent-replayed"] == "true"
        assert settled(live, "acme")["settle"] == 11_025


def test_edits_hash_the_uploaded_images(metered):
    key = new_account(metered, "acme", "1")
    sdk = client(metered, key)
    edit = {"model": "gpt-image-1.5", "prompt": "add snow", "size": "1024x1024", "quality": "low"}
    one = ("a.png", png_bytes(64, 64, (200, 0, 0, 255)), "image/png")
    other = ("a.png", png_bytes(64, 64, (0, 200, 0, 255)), "image/png")
    first = sdk.images.edit(image=one, **edit, **_idem("edit-1"))
    assert sdk.images.edit(image=one, **edit, **_idem("edit-1")).data[0].b64_json == first.data[0].b64_json
    with pytest.raises(openai.ConflictError):
        sdk.images.edit(image=other, **edit, **_idem("edit-1"))
    t = settled(metered, "acme")
    assert t["hold"] == t["settle"] and len(admin(metered, "GET", "/usage").json()["data"]) == 1


def test_streams_and_urls_replay(metered):
    key = new_account(metered, "acme", "1")
    sdk = client(metered, key)
    stream = {**LOW, "stream": True, "partial_images": 1}
    first = [e for e in sdk.images.generate(**stream, **_idem("s")) if e.type.endswith("completed")]
    again = list(sdk.images.generate(**stream, **_idem("s")))
    assert [e.type for e in again] == ["image_generation.completed"]
    assert again[0].b64_json == first[0].b64_json and again[0].usage == first[0].usage
    dalle = {"model": "dall-e-2", "prompt": "an owl", "size": "256x256"}
    url1 = sdk.images.generate(**dalle, **_idem("u")).data[0].url
    url2 = sdk.images.generate(**dalle, **_idem("u")).data[0].url
    assert url1.split("?")[0] == url2.split("?")[0] and httpx.get(url2).status_code == 200
    assert settled(metered, "acme")["settle"] == 11_025 + 100 * 40 + 16_000


def test_static_keys_get_idempotency_too(metered):
    sdk = client(metered, TEST_KEY)
    first = sdk.images.generate(**LOW, **_idem("static-1"))
    raw = sdk.images.with_raw_response.generate(**LOW, **_idem("static-1"))
    assert raw.headers["idempotent-replayed"] == "true" and raw.parse().data[0].b64_json == first.data[0].b64_json


def test_static_keys_that_look_alike_keep_their_results_apart(backend, tmp_path):  # noqa: F811
    twins = ("sk-team-one-secret-xyz9", "sk-team-two-secret-xyz9")  # both shown as "sk-...xyz9"
    with metered_server(backend, tmp_path, api_keys=twins) as live:
        client(live, twins[0]).images.generate(**LOW, **_idem("job-1"))
        other = client(live, twins[1]).images.with_raw_response.generate(**LOW, **_idem("job-1"))
        assert "idempotent-replayed" not in other.headers  # run for this key, not the other key's answer


def test_a_replay_is_refused_to_a_key_that_may_not_use_the_model(metered):
    allowed = new_account(metered, "acme", "1")
    narrow = admin(metered, "POST", "/keys", json={"account": "acme", "allowed_models": ["dall-e-2"]}).json()["key"]
    client(metered, allowed).images.generate(**LOW, **_idem("shared-1"))
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(metered, narrow).images.generate(**LOW, **_idem("shared-1"))
    assert exc.value.body["code"] == "model_not_allowed"


def test_a_bad_idempotency_key_is_400(metered):
    key = new_account(metered, "acme", "1")
    answer = httpx.post(f"{metered.base_url}/images/generations", json=LOW,
                        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "x" * 300})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "Idempotency-Key"
