"""Accounts, keys and charges through the official SDK against a metered server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import openai
import pytest
from PIL import Image

from imagegate.engines.base import ImageDone, JobDone
from imagegate.errors import EngineError
from tests.billing.live import (  # noqa: F401  (fixtures)
    ADMIN, admin, assert_books_balance, backend, client, metered, metered_server, new_account, quote, settled,
    totals,
)
from tests.servers import TEST_KEY

LOW = {"model": "gpt-image-1", "prompt": "a red fox in snow", "size": "1024x1024", "quality": "low"}


def test_a_generation_is_charged_exactly_its_price(metered):
    key = new_account(metered, "acme", "1")
    expected = quote(metered, key, LOW)
    assert expected == 11_000 + 5 * 5  # $0.011 per image + 5 prompt tokens at $5/M
    raw = client(metered, key).images.with_raw_response.generate(**LOW)
    assert raw.headers["x-imagegate-cost"] == "0.011025"
    assert raw.headers["x-imagegate-balance"] == "0.988975"
    assert len(raw.parse().data) == 1
    balance = httpx.get(f"{metered.base_url}/balance", headers={"Authorization": f"Bearer {key}"}).json()
    assert balance["metered"] is True and balance["account"] == "acme"
    assert balance["available"] == {"usd": "0.988975", "micro_usd": 988_975, "credits": 70217.23}
    assert balance["key"]["spent"]["micro_usd"] == expected
    rows = admin(metered, "GET", "/usage", params={"account": "acme"}).json()["data"]
    assert len(rows) == 1
    row = rows[0]
    assert {k: row[k] for k in ("model", "engine", "operation", "size", "quality", "n_asked", "n_delivered",
                                "text_tokens", "output_tokens", "cost_micro", "quote_micro", "status", "error_code",
                                "metered", "account")} == {
        "model": "gpt-image-1", "engine": "sandbox", "operation": "generate", "size": "1024x1024", "quality": "low",
        "n_asked": 1, "n_delivered": 1, "text_tokens": 5, "output_tokens": 272, "cost_micro": expected,
        "quote_micro": expected, "status": "ok", "error_code": None, "metered": True, "account": "acme"}
    assert row["key_prefix"] == key[:12] and row["latency_ms"] >= 0
    assert len(json.dumps(rows)) < 2000  # no image bytes or base64 in the usage log
    assert_books_balance(totals(metered, "acme"))


def test_insufficient_balance_is_429_insufficient_quota_and_nothing_runs(metered):
    key = new_account(metered, "poor", "0.011")  # one image costs 0.011025 with its prompt
    with pytest.raises(openai.RateLimitError) as exc:
        client(metered, key).images.generate(**LOW)
    assert exc.value.status_code == 429
    assert exc.value.code == "insufficient_quota" and exc.value.type == "insufficient_quota"
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert list((metered.settings.data_dir / "images").iterdir()) == []
    t = totals(metered, "poor")
    assert t["balance"] == 11_000 and t["hold"] == 0 and t["settle"] == 0
    rows = admin(metered, "GET", "/usage", params={"account": "poor"}).json()["data"]
    assert [(r["status"], r["error_code"], r["cost_micro"]) for r in rows] == [("refused", "insufficient_quota", 0)]


def test_a_full_engine_queue_is_503_engine_overloaded_and_holds_nothing(backend, tmp_path):  # noqa: F811
    with metered_server(backend, tmp_path, sandbox_latency_ms=1500, engine_concurrency=1,
                        engine_queue_limit=1) as live:
        key = new_account(live, "busy", "1")
        sdk = client(live, key)
        limiter = live.app.state.gateway.limiters["sandbox"]
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(sdk.images.generate, **LOW)
            deadline = time.monotonic() + 10
            while limiter.active < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            second = pool.submit(sdk.images.generate, **LOW)  # waits in the one place in line
            while limiter.waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (limiter.active, limiter.waiting) == (1, 1)
            with pytest.raises(openai.InternalServerError) as refused:
                sdk.images.generate(**LOW)
            held = totals(live, "busy")
            images = [len(first.result().data), len(second.result().data)]
        assert images == [1, 1]
        error = refused.value
        assert error.status_code == 503 and error.code == "engine_overloaded" and error.type == "server_error"
        assert "Nothing was charged" in error.message and error.response.headers["retry-after"] == "2"
        assert held["open_holds"] == 2 and held["hold"] == 2 * quote(live, key, LOW)  # none for the refused one
        after = settled(live, "busy")
        assert after["settle"] == 2 * quote(live, key, LOW) and after["balance"] == 1_000_000 - after["settle"]
        assert_books_balance(after)
        rows = admin(live, "GET", "/usage", params={"account": "busy"}).json()["data"]
        assert sorted(r["status"] for r in rows) == ["ok", "ok"]


def test_quote_runs_nothing_and_matches_the_charge(metered):
    key = new_account(metered, "acme", "5")
    body = {"model": "gpt-image-2", "prompt": "a city at night", "size": "2048x1152", "quality": "medium", "n": 2}
    answer = httpx.post(f"{metered.base_url}/images/quote", json=body,
                        headers={"Authorization": f"Bearer {key}"}).json()
    assert answer["method"] == "tokens" and answer["n"] == 2
    assert answer["usage_estimate"]["output_tokens"] == 2 * 1413
    assert {line["item"] for line in answer["lines"]} == {"text_in", "image_out"}
    assert answer["cost"]["credits"] == round(answer["cost"]["micro_usd"] * 0.071, 2)
    assert totals(metered, "acme")["hold"] == 0
    raw = client(metered, key).images.with_raw_response.generate(**body)
    assert raw.headers["x-imagegate-cost"] == answer["cost"]["usd"]


def test_a_revocation_made_elsewhere_applies_within_the_key_cache_time(backend, tmp_path):
    from imagegate.cli import main

    with metered_server(backend, tmp_path, key_cache_seconds=0.5) as live:
        key = new_account(live, "acme", "1")
        client(live, key).images.generate(**LOW)
        where = ["--data-dir", str(live.settings.data_dir), "--database-url", live.settings.database_url]
        assert main(["keys", "revoke", key[:12], *where]) == 0  # another process: the CLI
        time.sleep(0.7)
        with pytest.raises(openai.AuthenticationError) as exc:
            client(live, key).images.generate(**LOW)
        assert exc.value.code == "api_key_revoked"
        assert totals(live, "acme")["settle"] == 11_025  # the one request before the revocation


def test_keys_revoked_expired_unknown_are_401_saying_so(metered):
    key = new_account(metered, "acme", "1")
    past = admin(metered, "POST", "/keys", json={"account": "acme", "expires_at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 400 and past.json()["error"]["param"] == "expires_at"
    assert "2020-01-01T00:00:00+00:00 is not in the future" in past.json()["error"]["message"]
    assert admin(metered, "POST", "/keys", json={"account": "acme", "expires_at": "0d"}).status_code == 400
    soon = time.time() + 1
    expired = admin(metered, "POST", "/keys", json={"account": "acme", "expires_at": soon}).json()
    client(metered, expired["key"]).models.list()  # good until then
    time.sleep(max(0.0, soon - time.time()) + 0.05)
    with pytest.raises(openai.AuthenticationError) as exc:
        client(metered, expired["key"]).images.generate(**LOW)
    day = datetime.fromtimestamp(soon, timezone.utc).strftime("%Y-%m-%d")
    assert exc.value.code == "api_key_expired" and f"expired on {day}" in exc.value.message
    client(metered, key).images.generate(**LOW)  # the server remembers the key now
    assert admin(metered, "POST", f"/keys/{key[:12]}/revoke").json()["state"] == "revoked"
    with pytest.raises(openai.AuthenticationError) as exc:
        client(metered, key).images.generate(**LOW)
    assert exc.value.code == "api_key_revoked" and "revoked" in exc.value.message
    with pytest.raises(openai.AuthenticationError) as exc:
        client(metered, "sk-ig-" + "x" * 43).images.generate(**LOW)
    assert exc.value.code == "invalid_api_key"
    assert totals(metered, "acme")["hold"] == 11_025  # only the request made before the revocation


def test_allowed_models_and_the_keys_own_limit(metered):
    key = new_account(metered, "acme", "10", allowed_models=["gpt-image-1"], spend_limit="0.02")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(metered, key).images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
    assert exc.value.code == "model_not_allowed"
    # Told before anything is fetched for it (the link is loopback: a fetch would be refused as private first).
    link = [{"image_url": "http://127.0.0.1:9/ref.png"}]
    edit = httpx.post(f"{metered.base_url}/images/edits", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "gpt-image-2", "prompt": "x", "images": link})
    assert (edit.status_code, edit.json()["error"]["code"]) == (403, "model_not_allowed")
    chat = httpx.post(f"{metered.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "gpt-image-2", "messages": [{"role": "user", "content": [
                          {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": link[0]["image_url"]}}]}]})
    assert (chat.status_code, chat.json()["error"]["code"]) == (403, "model_not_allowed"), chat.text
    client(metered, key).images.generate(**LOW)
    with pytest.raises(openai.RateLimitError) as exc:
        client(metered, key).images.generate(**LOW)  # 0.011025 spent; another does not fit in 0.02
    assert exc.value.code == "insufficient_quota" and "spend limit" in exc.value.message


class _Partial:
    """Delivers fewer images than asked, as an upstream whose moderation dropped some (seed 000)."""

    name = "sandbox"

    def __init__(self, inner, deliver: int):
        self.inner, self.deliver = inner, deliver

    async def run(self, job):
        async for event in self.inner.run(job):
            if isinstance(event, ImageDone) and event.image_index >= self.deliver:
                continue
            if isinstance(event, JobDone):
                continue  # no usage reported: billing falls back to the tables for what was delivered
            yield event

    async def aclose(self):
        return None


class _Failing:
    name = "sandbox"

    async def run(self, job):
        await asyncio.sleep(0.01)
        raise EngineError("The engine fell over before drawing anything.", code="engine_crashed")
        yield  # pragma: no cover

    async def aclose(self):
        return None


def test_four_asked_three_delivered_pays_for_three(metered):
    key = new_account(metered, "acme", "1")
    gateway = metered.app.state.gateway
    gateway.engines["sandbox"] = _Partial(gateway.engines["sandbox"], deliver=3)
    raw = client(metered, key).images.with_raw_response.generate(**{**LOW, "quality": "medium", "n": 4})
    assert len(raw.parse().data) == 3
    assert raw.headers["x-imagegate-cost"] == "0.126025"  # 3 x $0.042 + 5 prompt tokens
    row = admin(metered, "GET", "/usage").json()["data"][0]
    assert (row["n_asked"], row["n_delivered"], row["quote_micro"], row["cost_micro"]) == (4, 3, 168_025, 126_025)
    assert_books_balance(settled(metered, "acme"))


def test_engine_failure_is_refunded_by_default(metered):
    key = new_account(metered, "acme", "1")
    metered.app.state.gateway.engines["sandbox"] = _Failing()
    with pytest.raises(openai.APIStatusError) as exc:
        client(metered, key).images.generate(**LOW)
    assert exc.value.status_code == 502 and exc.value.code == "engine_crashed"
    t = settled(metered, "acme")
    assert t["balance"] == 1_000_000 and t["settle"] == 0 and t["release"] == t["hold"] == 11_025
    row = admin(metered, "GET", "/usage").json()["data"][0]
    assert (row["status"], row["error_code"], row["n_delivered"], row["cost_micro"]) == (
        "error", "engine_crashed", 0, 0)


def test_engine_failure_is_charged_under_the_charge_policy(backend, tmp_path):  # noqa: F811
    prices = tmp_path / "prices.toml"
    prices.write_text('[failure_policy]\nsandbox = "charge"\n')
    with metered_server(backend, tmp_path, price_file=prices) as live:
        key = new_account(live, "acme", "1")
        live.app.state.gateway.engines["sandbox"] = _Failing()
        with pytest.raises(openai.APIStatusError):
            client(live, key).images.generate(**LOW)
        t = settled(live, "acme")
        assert t["settle"] == 11_025 and t["balance"] == 1_000_000 - 11_025
        assert_books_balance(t)


def test_a_stream_settles_once_with_its_partial_images(metered):
    key = new_account(metered, "acme", "1")
    body = {**LOW, "stream": True, "partial_images": 2}
    expected = quote(metered, key, body)
    assert expected == 11_025 + 200 * 40  # two partial images, 100 output tokens each at $40/M
    with client(metered, key).images.with_streaming_response.generate(**body) as response:
        assert response.headers["x-imagegate-quote"] == f"0.{expected:06d}"
        assert response.headers["x-imagegate-balance"] == f"0.{1_000_000 - expected:06d}"
        events = [line for line in response.iter_lines() if line.startswith("event:")]
    assert events.count("event: image_generation.partial_image") == 2
    t = settled(metered, "acme")
    assert t["settle"] == expected and t["balance"] == 1_000_000 - expected
    assert_books_balance(t)


def test_chat_image_models_are_charged_per_call(metered):
    key = new_account(metered, "acme", "1")
    raw = client(metered, key).chat.completions.with_raw_response.create(
        model="gpt-4o-image-vip", messages=[{"role": "user", "content": "a poster, 2:3"}])
    assert raw.headers["x-imagegate-cost"] == "0.009000"
    assert "![gen_" in raw.parse().choices[0].message.content
    assert settled(metered, "acme")["settle"] == 9000


def test_a_client_that_leaves_is_charged_once_for_the_delivered_image(backend, tmp_path):  # noqa: F811
    with metered_server(backend, tmp_path, sandbox_latency_ms=800) as live:
        key = new_account(live, "acme", "1")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{live.base_url}/images/generations", json=LOW, headers={"Authorization": f"Bearer {key}"},
                       timeout=httpx.Timeout(30, read=0.3))
        deadline = time.monotonic() + 30
        while True:  # the work goes on without the client; its task settles when it is done
            rows = admin(live, "GET", "/usage").json()["data"]
            if rows and rows[0]["status"] != "running":
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.05)
        assert (rows[0]["status"], rows[0]["n_delivered"], rows[0]["cost_micro"]) == ("ok", 1, 11_025)
        t = totals(live, "acme")
        assert t["settle"] == 11_025 and t["open_holds"] == 0
        assert_books_balance(t)
        # What it paid for is kept, though it asked for b64_json (nothing is stored for a client that stays).
        (kept,) = live.settings.images_dir.glob("*.png")
        with Image.open(kept) as image:
            assert image.size == (1024, 1024)


def test_a_shutdown_lets_a_run_whose_client_left_finish_and_charge(backend, tmp_path, capsys):  # noqa: F811
    """SIGTERM while a stream's client has gone: its run is no handler's, yet it is paid work; within
    shutdown_grace_seconds it finishes, keeps its image and is charged (it was cancelled and refunded at once)."""
    with metered_server(backend, tmp_path, sandbox_latency_ms=1500, shutdown_grace_seconds=20) as live:
        key = new_account(live, "acme", "1")
        with httpx.stream("POST", f"{live.base_url}/images/generations", headers={"Authorization": f"Bearer {key}"},
                          json={**LOW, "stream": True, "partial_images": 1}, timeout=30) as answer:
            for line in answer.iter_lines():
                if "partial_image" in line:
                    break  # and go
        live.stop()
        assert not live.thread.is_alive()
        from imagegate.cli import main

        capsys.readouterr()
        assert main(["usage", "--json", "--data-dir", str(live.settings.data_dir), "--database-url",
                     live.settings.database_url]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert (row["status"], row["n_delivered"], row["cost_micro"]) == ("ok", 1, row["quote_micro"])
    (kept,) = live.settings.images_dir.glob("*.png")
    with Image.open(kept) as image:
        assert image.size == (1024, 1024)


def test_the_request_id_a_client_sees_finds_its_usage_row(metered):
    key = new_account(metered, "acme", "1")
    image = client(metered, key).images.with_raw_response.generate(**LOW)
    chat = client(metered, key).chat.completions.with_raw_response.create(
        model="gpt-4o-image-vip", messages=[{"role": "user", "content": "a poster"}])
    rows = admin(metered, "GET", "/usage").json()["data"]
    assert {row["request_id"]: row["endpoint"] for row in rows} == {
        image.headers["x-request-id"]: "images", chat.headers["x-request-id"]: "chat"}


def test_static_keys_stay_unmetered_beside_accounts(metered):
    raw = client(metered, TEST_KEY).images.with_raw_response.generate(**LOW)
    assert raw.headers["x-imagegate-cost"] == "0.011025"  # what it would cost; nobody is charged
    assert "x-imagegate-balance" not in raw.headers
    balance = httpx.get(f"{metered.base_url}/balance", headers={"Authorization": f"Bearer {TEST_KEY}"}).json()
    assert balance["metered"] is False
    row = admin(metered, "GET", "/usage").json()["data"][0]
    assert (row["metered"], row["account"], row["status"]) == (False, None, "ok")


def test_price_groups_multiply_an_accounts_prices(backend, tmp_path):  # noqa: F811
    prices = tmp_path / "prices.toml"
    prices.write_text("[groups]\nhalf = 0.5\n")
    with metered_server(backend, tmp_path, price_file=prices) as live:
        key = new_account(live, "acme", "1")
        assert admin(live, "PATCH", "/accounts/acme", json={"group": "gold"}).status_code == 400
        assert admin(live, "PATCH", "/accounts/acme", json={"group": "half"}).json()["group"] == "half"
        raw = client(live, key).images.with_raw_response.generate(**LOW)
        assert raw.headers["x-imagegate-cost"] == "0.005513"  # 11,025 / 2 = 5,512.5, rounded half up once


def test_a_server_follows_edits_to_its_price_file_without_a_reload(backend, tmp_path):  # noqa: F811
    """Each process watches the file itself (as every worker of `serve --workers N` does, the others included
    when one reloads through its admin API); a broken edit leaves the prices in use."""
    prices = tmp_path / "prices.toml"
    prices.write_text("[groups]\nhalf = 0.5\n")
    with metered_server(backend, tmp_path, price_file=prices, heartbeat_interval_seconds=0.2) as live:
        key = new_account(live, "acme", "1")
        before = quote(live, key, LOW)
        # Edited, and reloaded nowhere: this process follows the file within a heartbeat.
        prices.write_text("[groups]\nhalf = 0.5\ndouble = 2\n")
        deadline = time.monotonic() + 10
        while admin(live, "PATCH", "/accounts/acme", json={"group": "double"}).status_code != 200:
            assert time.monotonic() < deadline, "the new group never arrived"
            time.sleep(0.1)
        assert quote(live, key, LOW) == 2 * before
        prices.write_text("[groups\n")  # a broken edit: the prices in use stay
        time.sleep(0.6)
        assert quote(live, key, LOW) == 2 * before


def test_an_unmetered_server_follows_the_price_file_too(tmp_path):
    """Quotes and cost headers price by the book with or without a database: every process follows the file."""
    from tests.servers import start_server

    prices = tmp_path / "prices.toml"
    prices.write_text('[models."gpt-4o-image"]\nmethod = "per_call"\nper_call = 0.02\n')
    live = start_server(tmp_path / "data", price_file=prices, heartbeat_interval_seconds=0.2)
    try:
        body = {"model": "gpt-4o-image", "prompt": "a red car"}
        assert quote(live, TEST_KEY, body) == 20_000
        prices.write_text('[models."gpt-4o-image"]\nmethod = "per_call"\nper_call = 0.04\n')
        deadline = time.monotonic() + 10
        while quote(live, TEST_KEY, body) != 40_000:
            assert time.monotonic() < deadline, "the new price never arrived"
            time.sleep(0.1)
    finally:
        live.stop()


def test_the_admin_api_of_a_server_without_accounts_says_so_and_not_to_retry(tmp_path):
    from tests.servers import start_server

    live = start_server(tmp_path / "data", metering="off", admin_token="t0ken")
    try:
        channel = {"name": "x", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-image-1"]}
        for method, path, body in (("GET", "/admin/accounts", None), ("POST", "/admin/channels", channel)):
            answer = httpx.request(method, f"{live.root}{path}", json=body, headers={"Authorization": "Bearer t0ken"})
            assert (answer.status_code, answer.json()["error"]["code"]) == (503, "metering_off")
            assert answer.headers["x-should-retry"] == "false"  # a setting: the SDK's retries would not change it
    finally:
        live.stop()


def test_admin_api_guards_and_validates(metered):
    no_token = httpx.get(f"{metered.root}/admin/accounts")
    assert no_token.status_code == 401 and no_token.json()["error"]["code"] == "missing_api_key"
    wrong = httpx.get(f"{metered.root}/admin/accounts", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_admin_token"
    # An API key is not an admin token.
    key = new_account(metered, "acme", "1")
    assert httpx.get(f"{metered.root}/admin/accounts", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    for amount, why in [(-5, "negative"), (0, "more than 0"), ("1e12", "allowed at once"), ("abc", "expected"),
                        (True, "expected"), ("0.0000001", "decimal places"), (None, "expected")]:
        answer = admin(metered, "POST", "/accounts/acme/topups", json={"amount": amount})
        assert answer.status_code == 400 and why in answer.json()["error"]["message"], (amount, answer.text)
        assert answer.json()["error"]["param"] == "amount"
    assert admin(metered, "POST", "/accounts/nobody/topups", json={"amount": 1}).status_code == 404
    assert admin(metered, "POST", "/accounts", json={"name": "acme"}).status_code == 409
    assert admin(metered, "POST", "/accounts", json={"name": "bad name!"}).status_code == 400
    assert admin(metered, "POST", "/accounts", json={"name": "neg", "balance": "-1"}).status_code == 400
    assert admin(metered, "POST", "/keys", json={"account": "nobody"}).status_code == 404
    assert admin(metered, "POST", "/keys", json={"account": "acme", "allowed_models": ["nope"]}).status_code == 400
    assert admin(metered, "POST", "/keys", json={"account": "acme", "expires_at": "soon"}).status_code == 400
    for never in ("NaN", "Infinity", "1" + "0" * 400):  # JSON as Python's parser takes it: NaN never compares
        answer = httpx.post(f"{metered.root}/admin/keys", content='{"account": "acme", "expires_at": %s}' % never,
                            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "expires_at", answer.text
    assert admin(metered, "POST", "/keys/sk-ig-nother/revoke").status_code == 404
    for limit in ("0", "x", "²", "1001"):  # "²" is a digit to str.isdigit, not to int()
        answer = admin(metered, "GET", "/usage", params={"limit": limit})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "limit", (limit, answer.text)
    topped = admin(metered, "POST", "/accounts/acme/topups", json={"amount": "2.5", "note": "invoice 7"}).json()
    assert topped["balance"]["usd"] == "3.500000" and topped["balance"]["credits"] == 248_500.0
    shown = admin(metered, "GET", "/accounts/acme").json()
    assert [k["prefix"] for k in shown["keys"]] == [key[:12]] and "key" not in shown["keys"][0]
    assert admin(metered, "GET", "/keys").json()["data"][0]["prefix"] == key[:12]
    ledger = admin(metered, "GET", "/accounts/acme/ledger").json()["data"]
    assert [(e["kind"], e["amount_micro"], e["note"]) for e in ledger] == [
        ("topup", 2_500_000, "invoice 7"), ("topup", 1_000_000, "opening balance")]
    prices = admin(metered, "GET", "/prices").json()
    assert prices["models"]["gpt-image-1"]["per_image_usd"]["low"]["1024x1024"] == "0.011"
    assert prices["models"]["gpt-4o-image"]["per_call_usd"] == "0.005"
    assert admin(metered, "POST", "/prices/reload").status_code == 200


def test_a_top_up_retried_with_its_idempotency_key_is_credited_once(metered):
    new_account(metered, "acme", "1")

    def top_up(amount: str, key: str, note: str = "invoice 8") -> httpx.Response:
        return httpx.post(f"{metered.root}/admin/accounts/acme/topups", json={"amount": amount, "note": note},
                          headers={"Authorization": f"Bearer {ADMIN}", "Idempotency-Key": key}, timeout=30)

    first = top_up("2.5", "inv-8")
    assert first.status_code == 200 and first.json()["balance"]["usd"] == "3.500000"
    again = top_up("2.5", "inv-8")  # the answer was lost: the operator's script retries
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["balance"]["usd"] == "3.500000"
    other = top_up("25", "inv-8")
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert top_up("2.5", "inv-8", note="invoice 9").status_code == 409
    assert top_up("2.5", "inv-9", note="invoice 9").json()["balance"]["usd"] == "6.000000"
    ledger = admin(metered, "GET", "/accounts/acme/ledger").json()["data"]
    assert [(e["kind"], e["amount_micro"]) for e in ledger] == [
        ("topup", 2_500_000), ("topup", 2_500_000), ("topup", 1_000_000)]
    assert_books_balance(totals(metered, "acme"))


def test_admin_api_is_off_without_a_token(backend, tmp_path):  # noqa: F811
    with metered_server(backend, tmp_path, admin_token="") as live:
        answer = httpx.get(f"{live.root}/admin/accounts", headers={"Authorization": "Bearer x"})
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "admin_disabled"


def test_unmetered_server_has_no_database(tmp_path):
    from tests.servers import start_server

    live = start_server(tmp_path / "data", guard_policy="off")
    try:
        raw = client(live, TEST_KEY).images.with_raw_response.generate(**LOW)
        assert raw.headers["x-imagegate-cost"] == "0.011025" and "x-imagegate-balance" not in raw.headers
        assert not (tmp_path / "data" / "imagegate.db").exists()
        assert httpx.get(f"{live.root}/admin/accounts", headers={"Authorization": "Bearer x"}).status_code == 403
    finally:
        live.stop()


def test_images_never_reach_the_usage_log(metered):
    key = new_account(metered, "acme", "5")
    result = client(metered, key).images.generate(**{**LOW, "n": 2})
    b64 = result.data[0].b64_json
    dump = json.dumps(admin(metered, "GET", "/usage").json())
    assert b64[:64] not in dump and base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_settlement_that_fails_through_an_outage_is_charged_later(metered):
    """The database is away when the run settles (longer than the quick retries): the delivered image is still
    charged once it is back, and the hold, the usage row and the idempotency claim all close."""
    from sqlalchemy.exc import OperationalError

    key = new_account(metered, "acme", "1")
    billing = metered.app.state.billing
    billing.settle_retry_delays = (0.1,) * 5
    store, real, calls = billing.store, billing.store.settle, {"n": 0}

    async def settle(**kw):
        calls["n"] += 1
        if calls["n"] <= 4:  # the three quick tries and the first later one
            raise OperationalError("UPDATE holds", {}, ConnectionResetError("connection reset"))
        return await real(**kw)

    store.settle = settle
    try:
        raw = client(metered, key).images.with_raw_response.generate(
            **LOW, extra_headers={"Idempotency-Key": "outage-1"})
        assert len(raw.parse().data) == 1 and "x-imagegate-cost" not in raw.headers  # not settled yet
        t = settled(metered, "acme")
    finally:
        store.settle = real
    assert t["open_holds"] == 0 and t["settle"] == 11_025 and calls["n"] == 5
    assert_books_balance(t)
    row = admin(metered, "GET", "/usage").json()["data"][0]
    assert (row["status"], row["cost_micro"]) == ("ok", 11_025)
    again = client(metered, key).images.with_raw_response.generate(**LOW, extra_headers={"Idempotency-Key": "outage-1"})
    assert again.headers["idempotent-replayed"] == "true" and again.headers["x-imagegate-cost"] == "0.011025"


def test_no_turn_to_write_in_time_is_503_database_unavailable_and_charges_nothing(tmp_path):
    """SQLite: another process hangs holding the writers' lock file. A request waits database_write_timeout_seconds
    for its hold, then hears 503 database_unavailable (retryable); nothing runs, nothing is charged, and the hold
    given up on is never placed afterwards."""
    import fcntl
    import os

    from imagegate.db import LOCK_SUFFIX

    with metered_server("sqlite", tmp_path, database_write_timeout_seconds=0.5) as live:
        key = new_account(live, "acme", "1")
        fd = os.open(tmp_path / f"test-imagegate.db{LOCK_SUFFIX}", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as exc:
                client(live, key).images.generate(**LOW)
            assert time.monotonic() - started < 10
        finally:
            os.close(fd)  # the hung process goes, and its lock with it
        error = exc.value
        assert error.status_code == 503 and error.code == "database_unavailable" and error.type == "server_error"
        assert error.response.headers["retry-after"] == "1"
        raw = client(live, key).images.with_raw_response.generate(**LOW)  # the same request, now that it can
        assert raw.headers["x-imagegate-cost"] == "0.011025"
        t = settled(live, "acme")
        # The request given up on left no trace: the hold's transaction (with its usage row) never ran.
        rows = admin(live, "GET", "/usage", params={"account": "acme"}).json()["data"]
        assert [(row["status"], row["cost_micro"]) for row in rows] == [("ok", 11_025)]
        assert t["open_holds"] == 0 and t["settle"] == 11_025 and t["balance"] == 1_000_000 - 11_025
        assert_books_balance(t)
