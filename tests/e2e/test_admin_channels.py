"""Channels through the admin API: added, changed and removed at run time, kept in the database, followed by every
server on it, and never able to touch the config file's channels."""

from __future__ import annotations

import time

import pytest

from tests.billing.live import admin, backend, client, metered_server, new_account, start_metered  # noqa: F401
from tests.db.backends import fresh_url
from tests.fault_upstream import FaultUpstream
from tests.imaging_helpers import decode_b64

LOW = {"model": "gpt-image-1", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}


def _generations(faults: FaultUpstream) -> int:
    return faults.calls("/images/generations")


def test_a_channel_added_through_the_api_routes_at_once_and_on_every_server(backend, faults, tmp_path):
    url, drop = fresh_url(backend, tmp_path)
    first = start_metered(tmp_path / "a", url, heartbeat_interval_seconds=0.3)
    second = start_metered(tmp_path / "b", url, heartbeat_interval_seconds=0.3)
    try:
        key = new_account(first, "acme", "5")
        assert admin(first, "GET", "/channels").json() == {"object": "list", "data": []}
        client(first, key).images.generate(**LOW)
        assert _generations(faults) == 0  # no channel yet: the sandbox answers

        made = admin(first, "POST", "/channels", json={
            "name": "up", "base_url": faults.base_url, "api_key": "sk-upstream-secret-1234", "models": ["gpt-image-1"],
        })
        assert made.status_code == 201, made.text
        shown = made.json()
        assert shown["api_key"] == "sk-...1234" and shown["source"] == "admin" and shown["circuit"] == "closed"
        assert shown["weight"] == 1 and shown["models"] == ["gpt-image-1"]

        result = client(first, key).images.generate(**LOW)
        assert decode_b64(result.data[0].b64_json).size == (1024, 1024)
        assert _generations(faults) == 1 and faults.authorizations[-1] == "Bearer sk-upstream-secret-1234"

        deadline = time.monotonic() + 10  # the other server follows within its heartbeat
        while not admin(second, "GET", "/channels").json()["data"] and time.monotonic() < deadline:
            time.sleep(0.1)
        client(second, key).images.generate(**LOW)
        assert _generations(faults) == 2

        changed = admin(first, "PATCH", "/channels/up", json={"weight": 5, "priority": 2})
        assert changed.status_code == 200 and (changed.json()["weight"], changed.json()["priority"]) == (5, 2)
        assert changed.json()["api_key"] == "sk-...1234"  # the stored key is kept, never shown
        client(first, key).images.generate(**LOW)
        assert faults.authorizations[-1] == "Bearer sk-upstream-secret-1234"

        gone = admin(first, "DELETE", "/channels/up")
        assert gone.status_code == 200 and gone.json() == {"name": "up", "deleted": True}
        client(first, key).images.generate(**LOW)
        assert _generations(faults) == 3  # back on the sandbox
        assert admin(first, "DELETE", "/channels/up").json()["error"]["code"] == "channel_not_found"
    finally:
        first.stop()
        second.stop()
        drop()


def test_stored_channels_survive_a_restart(backend, faults, tmp_path, monkeypatch):
    monkeypatch.setenv("UPSTREAM_TEST_API_KEY", "sk-from-the-environment")
    url, drop = fresh_url(backend, tmp_path)
    live = start_metered(tmp_path / "a", url)
    try:
        key = new_account(live, "acme", "5")
        assert admin(live, "POST", "/channels", json={
            "name": "up", "base_url": faults.base_url, "models": ["gpt-image-1"], "timeout_s": 60,
            "api_key": "env:UPSTREAM_TEST_API_KEY",
        }).status_code == 201
    finally:
        live.stop()
    again = start_metered(tmp_path / "b", url)
    try:
        listed = admin(again, "GET", "/channels").json()["data"]
        assert [(c["name"], c["timeout_s"], c["source"], c["api_key"]) for c in listed] == [
            ("up", 60.0, "admin", "env:UPSTREAM_TEST_API_KEY")]  # a reference is shown as written
        client(again, key).images.generate(**LOW)
        assert _generations(faults) == 1 and faults.authorizations == ["Bearer sk-from-the-environment"]
    finally:
        again.stop()
        drop()


@pytest.mark.parametrize("body,param,says", [
    ({"name": "x", "base_url": "http://127.0.0.1:9/v1", "models": ["no-such-model"]}, "models", "unknown model"),
    ({"name": "x", "models": ["gpt-image-1"]}, "base_url", "Field required"),
    ({"name": "x", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-image-1"], "weight": 0}, "weight",
     "greater than or equal to 1"),
    ({"name": "x", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-image-1"],
      "api_key": "env:UPSTREAM_UNSET_API_KEY"}, "api_key", "UPSTREAM_UNSET_API_KEY is not set"),
    # Not a provider key's variable: a leaked admin token must not send the server's secrets to a host it names.
    ({"name": "x", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-image-1"],
      "api_key": "env:PATH"}, "api_key", "ending in _API_KEY"),
    ({"name": "x", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-image-1"],
      "api_key": "env:IMAGEGATE_MODERATION_API_KEY"}, "api_key", "not IMAGEGATE_MODERATION_API_KEY"),
    ({"name": "x", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-image-1"], "colour": "red"}, "colour",
     "Extra inputs are not permitted"),
])
def test_a_bad_channel_is_refused_naming_the_field(backend, tmp_path, body, param, says):
    with metered_server(backend, tmp_path) as live:
        answer = admin(live, "POST", "/channels", json=body)
        error = answer.json()["error"]
        assert answer.status_code == 400 and error["param"] == param and says in error["message"]
        assert error["type"] == "invalid_request_error"
        assert admin(live, "GET", "/channels").json()["data"] == []


def test_config_file_channels_are_listed_but_changed_only_in_the_file(backend, faults, tmp_path):
    fixed = {"name": "file", "base_url": faults.base_url, "api_key": "sk-file-key-0123498765", "models": ["dall-e-2"]}
    with metered_server(backend, tmp_path, channels=(fixed,)) as live:
        listed = admin(live, "GET", "/channels").json()["data"]
        assert [(c["name"], c["source"], c["api_key"]) for c in listed] == [("file", "config", "sk-...8765")]
        for method, path, body in (("PATCH", "/channels/file", {"weight": 2}), ("DELETE", "/channels/file", None),
                                   ("POST", "/channels", {**fixed, "models": ["gpt-image-1"]})):
            answer = admin(live, method, path, json=body)
            assert answer.status_code == 409 and answer.json()["error"]["code"] == "channel_in_config_file"
        assert admin(live, "POST", "/channels", json={**fixed, "name": "other"}).status_code == 201
        duplicate = admin(live, "POST", "/channels", json={**fixed, "name": "other"})
        assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "channel_exists"
        renamed = admin(live, "PATCH", "/channels/other", json={"name": "third"})
        assert renamed.status_code == 400 and renamed.json()["error"]["param"] == "name"


def test_changes_go_by_the_database_not_by_what_this_server_has_loaded(backend, faults, tmp_path):
    """Another server's channel, not yet followed here (long heartbeat): adding its name again is refused, and it
    can be changed and removed from here; a change never brings back a channel removed meanwhile."""
    url, drop = fresh_url(backend, tmp_path)
    first = start_metered(tmp_path / "a", url, heartbeat_interval_seconds=120)
    second = start_metered(tmp_path / "b", url, heartbeat_interval_seconds=120)
    body = {"name": "up", "base_url": faults.base_url, "api_key": "sk-upstream-secret-1234", "models": ["gpt-image-1"]}
    try:
        assert admin(first, "POST", "/channels", json=body).status_code == 201
        assert admin(second, "GET", "/channels").json()["data"] == []  # not followed yet
        again = admin(second, "POST", "/channels", json=body)
        assert again.status_code == 409 and again.json()["error"]["code"] == "channel_exists"
        changed = admin(second, "PATCH", "/channels/up", json={"weight": 3})
        assert changed.status_code == 200 and changed.json()["weight"] == 3
        assert changed.json()["api_key"] == "sk-...1234"  # merged with what is stored, not with nothing
        assert admin(first, "DELETE", "/channels/up").status_code == 200
        late = admin(second, "PATCH", "/channels/up", json={"weight": 4})
        assert late.status_code == 404 and late.json()["error"]["code"] == "channel_not_found"
        assert admin(first, "GET", "/channels").json()["data"] == []
    finally:
        first.stop()
        second.stop()
        drop()
