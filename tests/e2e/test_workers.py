"""``imagegate serve --workers N``: several processes on one port, sharing the data dir and the ledger."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai import OpenAI

from tests.servers import EXE, clean_env, free_port, run_cli

_cli = run_cli
_env = clean_env


def _wait_up(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "serve exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the workers did not come up")


def test_workers_share_signed_links_and_the_ledger(tmp_path):
    data = tmp_path / "data"
    where = ["--data-dir", str(data)]
    # Ten 256x256 dall-e-2 images at $0.016 each: the balance covers exactly ten.
    assert _cli("accounts", "create", "acme", "--balance", "0.16", *where).returncode == 0
    made = _cli("keys", "create", "--account", "acme", *where)
    key = made.stdout.strip().splitlines()[-1]
    port = free_port()
    proc = subprocess.Popen([str(EXE), "serve", "--port", str(port), "--workers", "2", *where],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        _wait_up(port, proc)
        deadline = time.monotonic() + 60
        while True:  # the first worker may answer before the second has registered
            with sqlite3.connect(data / "imagegate.db") as db:
                pids = {row[0] for row in db.execute("SELECT pid FROM instances")}
            if len(pids) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(pids) == 2 and proc.pid not in pids  # two workers registered, the supervisor did not

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)

        def one(i: int):
            try:
                return client.images.generate(model="dall-e-2", prompt=f"a kite, take {i}", size="256x256",
                                              response_format="url")
            except openai.RateLimitError as exc:
                return exc

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(24)))
        served = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(served) == 10 and len(refused) == 14
        assert all(r.code == "insufficient_quota" for r in refused)
        # Every link verifies on whichever worker takes the fetch: they sign with one secret.
        for result in served:
            for _ in range(3):
                fetched = httpx.get(result.data[0].url, timeout=10)
                assert fetched.status_code == 200 and fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
        shown = json.loads(_cli("accounts", "show", "acme", "--json", *where).stdout)
        assert shown["balance_micro"] == 0 and shown["held_micro"] == 0
        assert shown["totals"]["settle"] == 160_000 == shown["totals"]["usage_cost"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_bad_setting_stops_the_workers_before_they_start(tmp_path):
    config = tmp_path / "imagegate.toml"
    config.write_text('[[channels]]\nname = "x"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["no-such-model"]\n')
    done = run_cli("serve", "--workers", "2", "--config", str(config), "--data-dir", str(tmp_path / "data"),
                   "--port", str(free_port()))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no-such-model" in done.stderr


@pytest.mark.parametrize("workers", ["0", "65"])
def test_worker_count_is_checked(tmp_path, workers):
    done = run_cli("serve", "--workers", workers, "--data-dir", str(tmp_path), timeout=60)
    assert done.returncode == 2 and "workers" in done.stderr
