"""Metered servers for the end-to-end billing tests: a real uvicorn server on loopback with accounts on, on a
fresh SQLite or PostgreSQL database, and small helpers around its admin API."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import httpx
import pytest
from openai import OpenAI

from tests.db.backends import BACKENDS, fresh_url
from tests.servers import LiveServer, start_server

ADMIN = "admin-token-for-tests-0123456789"


def start_metered(tmp_path, database_url: str, **overrides) -> LiveServer:
    values = {"metering": "on", "database_url": database_url, "admin_token": ADMIN, "guard_policy": "off",
              "heartbeat_interval_seconds": 5.0}
    values.update(overrides)
    return start_server(tmp_path / "data", **values)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@contextlib.contextmanager
def metered_server(backend: str, tmp_path, **overrides) -> Iterator[LiveServer]:
    """A metered server on a database of its own, stopped and the database dropped afterwards."""
    url, drop = fresh_url(backend, tmp_path)
    live = start_metered(tmp_path, url, **overrides)
    try:
        yield live
    finally:
        live.stop()
        drop()


@pytest.fixture
def metered(backend, tmp_path):
    with metered_server(backend, tmp_path) as live:
        yield live


def admin(live: LiveServer, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{live.root}/admin{path}", headers={"Authorization": f"Bearer {ADMIN}"},
                         timeout=30, **kw)


def new_account(live: LiveServer, name: str, balance: str = "0", **key_fields: Any) -> str:
    """Creates the account and one key for it; returns the key."""
    made = admin(live, "POST", "/accounts", json={"name": name, "balance": balance})
    assert made.status_code == 201, made.text
    key = admin(live, "POST", "/keys", json={"account": name, **key_fields})
    assert key.status_code == 201, key.text
    return key.json()["key"]


def client(live: LiveServer, key: str, **kw: Any) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key=key, max_retries=0, timeout=60, **kw)


def totals(live: LiveServer, name: str) -> dict[str, int]:
    answer = admin(live, "GET", f"/accounts/{name}/totals")
    assert answer.status_code == 200, answer.text
    return answer.json()


def quote(live: LiveServer, key: str, body: dict[str, Any]) -> int:
    answer = httpx.post(f"{live.base_url}/images/quote", json=body, headers={"Authorization": f"Bearer {key}"},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["cost"]["micro_usd"]


def settled(live: LiveServer, name: str, timeout: float = 20.0) -> dict[str, int]:
    """The account's totals once no hold is open (runs settle in their own task, after the client is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        now = totals(live, name)
        if now["open_holds"] == 0 or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def assert_books_balance(t: dict[str, int]) -> None:
    """Balance and ledger agree, to the micro-dollar, and the ledger agrees with the usage log."""
    assert t["balance"] == t["topup"] - t["settle"]
    assert t["held"] == t["open_held"] == t["hold"] - t["settle"] - t["release"]
    assert t["settle"] == t["usage_cost"]
