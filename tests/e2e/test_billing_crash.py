"""A server killed with SIGKILL in the middle of a paid request: after a restart no hold remains, the balance and
the ledger agree, and the usage log says what happened. Real processes: ``imagegate accounts/keys`` and
``imagegate serve`` from the console script, on SQLite (the data dir's own database) and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.billing.live import ADMIN, assert_books_balance
from tests.db.backends import BACKENDS, fresh_url
from tests.servers import EXE, clean_env, free_port, run_cli, wait_healthy

LOW = {"model": "gpt-image-1", "prompt": "a red fox in snow", "size": "1024x1024", "quality": "low"}


def _env(database_url: str, **extra: str) -> dict[str, str]:
    """The variables the commands get on top of the test's clean environment."""
    extra.update(IMAGEGATE_GUARD_POLICY="off", IMAGEGATE_ADMIN_TOKEN=ADMIN)
    if database_url:
        extra["IMAGEGATE_DATABASE_URL"] = database_url
    return extra


def _cli(env: dict[str, str], data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    done = run_cli(*args, "--data-dir", str(data_dir), env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def _serve(env: dict[str, str], data_dir: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(EXE), "serve", "--port", str(port), "--data-dir", str(data_dir)], env=clean_env(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(port, proc, timeout=30)
    except AssertionError:
        proc.kill()
        raise
    return proc


def _admin(port: int, path: str) -> dict:
    answer = httpx.get(f"http://127.0.0.1:{port}/admin{path}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_request_leaves_no_hold_after_restart(backend, tmp_path):
    url, drop = fresh_url(backend, tmp_path)
    url = "" if backend == "sqlite" else url  # SQLite: the default, imagegate.db in the data dir
    data_dir = tmp_path / "data"
    slow = _env(url, IMAGEGATE_SANDBOX_LATENCY_MS="60000")
    try:
        _cli(slow, data_dir, "accounts", "create", "acme", "--balance", "1")
        key = _cli(slow, data_dir, "keys", "create", "--account", "acme", "--name", "crash").stdout.splitlines()[-1]
        assert key.startswith("sk-ig-")

        port = free_port()
        server = _serve(slow, data_dir, port)
        failures: list[BaseException] = []

        def paid_request():
            try:
                httpx.post(f"http://127.0.0.1:{port}/v1/images/generations", json=LOW, timeout=90,
                           headers={"Authorization": f"Bearer {key}"})
            except httpx.HTTPError as exc:  # the server dies under it
                failures.append(exc)

        client = threading.Thread(target=paid_request)
        client.start()
        deadline = time.monotonic() + 20
        while _admin(port, "/accounts/acme")["held"]["micro_usd"] == 0:
            assert time.monotonic() < deadline, "the hold never appeared"
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)  # reaped: its pid is gone
        client.join(timeout=30)
        assert failures, "the request should have died with the server"

        # The crash left the hold behind; the books still agree while it is open.
        shown = json.loads(_cli(slow, data_dir, "accounts", "show", "acme", "--json").stdout)
        assert shown["held_micro"] == 11_025 and shown["totals"]["open_holds"] == 1
        assert_books_balance(shown["totals"])

        port = free_port()
        fast = _env(url, IMAGEGATE_SANDBOX_LATENCY_MS="0")
        server = _serve(fast, data_dir, port)
        try:
            account = _admin(port, "/accounts/acme")
            assert account["held"]["micro_usd"] == 0
            assert account["balance"]["micro_usd"] == account["available"]["micro_usd"] == 1_000_000
            totals = _admin(port, "/accounts/acme/totals")
            assert totals["open_holds"] == 0 and totals["settle"] == 0 and totals["release"] == totals["hold"]
            assert_books_balance(totals)
            row = _admin(port, "/usage")["data"][0]
            assert (row["status"], row["error_code"], row["cost_micro"]) == ("crashed", "server_lost", 0)

            # And the restarted server bills normally.
            done = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations", json=LOW, timeout=60,
                              headers={"Authorization": f"Bearer {key}"})
            assert done.status_code == 200 and done.headers["x-imagegate-balance"] == "0.988975"
            assert_books_balance(_admin(port, "/accounts/acme/totals"))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        # A clean stop leaves nothing held either.
        shown = json.loads(_cli(fast, data_dir, "accounts", "show", "acme", "--json").stdout)
        assert shown["held_micro"] == 0 and shown["balance_micro"] == 988_975
    finally:
        drop()
