"""``imagegate serve --workers N``: several processes on one port, sharing the data dir and the ledger."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.servers import free_port, run_cli, serve_process, wait_healthy

def test_workers_share_signed_links_and_the_ledger(tmp_path):
    data = tmp_path / "data"
    where = ["--data-dir", str(data)]
    # Ten 256x256 dall-e-2 images at $0.016 each: the balance covers exactly ten.
    assert run_cli("accounts", "create", "acme", "--balance", "0.16", *where).returncode == 0
    made = run_cli("keys", "create", "--account", "acme", *where)
    key = made.stdout.strip().splitlines()[-1]
    port = free_port()
    with serve_process("--port", str(port), "--workers", "2", *where) as proc:
        wait_healthy(port, proc)
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
        shown = json.loads(run_cli("accounts", "show", "acme", "--json", *where).stdout)
        assert shown["balance_micro"] == 0 and shown["held_micro"] == 0
        assert shown["totals"]["settle"] == 160_000 == shown["totals"]["usage_cost"]


def test_workers_on_a_fresh_database_migrate_it_one_at_a_time(tmp_path):
    from imagegate.db import head_revision

    config = tmp_path / "imagegate.toml"
    config.write_text('admin_token = "admin-token-for-tests"\n')  # metering on, no database yet
    data = tmp_path / "data"
    port = free_port()
    with serve_process("--port", str(port), "--workers", "2", "--config", str(config), "--data-dir", str(data)) \
            as proc:
        wait_healthy(port, proc)
        made = httpx.post(f"http://127.0.0.1:{port}/admin/accounts", json={"name": "acme", "balance": "1"},
                          headers={"Authorization": "Bearer admin-token-for-tests"}, timeout=30)
        assert made.status_code == 201, made.text
    current = run_cli("db", "current", "--data-dir", str(data))
    assert f"schema revision: {head_revision()} (newest: {head_revision()})" in current.stdout


def test_a_bad_setting_stops_the_workers_before_they_start(tmp_path):
    config = tmp_path / "imagegate.toml"
    config.write_text('[[channels]]\nname = "x"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["no-such-model"]\n')
    done = run_cli("serve", "--workers", "2", "--config", str(config), "--data-dir", str(tmp_path / "data"),
                   "--port", str(free_port()))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no-such-model" in done.stderr


def test_workers_that_cannot_start_stop_the_server_with_a_failing_status(tmp_path):
    """The start-up check passes (the app builds), the workers then fail to start (their database is away): the
    supervisor stops them all, and says so in its exit status, for systemd's Restart=on-failure to act on."""
    done = run_cli("serve", "--workers", "2", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()),
                   env={"IMAGEGATE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}, timeout=90)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "a worker failed to start: every worker was stopped" in done.stderr


@pytest.mark.parametrize("workers", ["0", "65"])
def test_worker_count_is_checked(tmp_path, workers):
    done = run_cli("serve", "--workers", workers, "--data-dir", str(tmp_path), timeout=60)
    assert done.returncode == 2 and "workers" in done.stderr


def test_a_restarted_worker_serves_the_settings_the_server_started_with(tmp_path):
    """An edited config file takes effect when the server is restarted, never in one worker that died and was
    started again: the workers of one server agree."""
    config = tmp_path / "imagegate.toml"
    config.write_text('api_keys = ["sk-as-started-0123456789"]\nguard_policy = "off"\n')
    port = free_port()
    with serve_process("--port", str(port), "--workers", "2", "--config", str(config),
                       "--data-dir", str(tmp_path / "data")) as proc:
        wait_healthy(port, proc)
        workers = _children(proc.pid, 2)
        config.write_text('api_keys = ["sk-edited-since-0123456789"]\nguard_policy = "off"\n')
        os.kill(workers[0], signal.SIGKILL)
        restarted = _children(proc.pid, 2, without=workers[0])
        assert workers[0] not in restarted
        survivor, new = workers[1], next(p for p in restarted if p != workers[1])
        deadline = time.monotonic() + 60
        while _rss_kb(new) < 0.8 * _rss_kb(survivor) and time.monotonic() < deadline:
            time.sleep(0.2)  # until the new worker has built its app (then it serves within moments)
        time.sleep(1)
        statuses = set()
        written = _bytes_written(new)
        for _ in range(40):  # a fresh connection each time: both workers take some
            statuses.add(httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10, headers={
                "Authorization": "Bearer sk-as-started-0123456789", "Connection": "close"}).status_code)
        assert _bytes_written(new) > written + 1000, "the restarted worker answered none of the requests"
        assert statuses == {200}


def _bytes_written(pid: int) -> int:
    """What the process has written so far, sockets included (/proc/PID/io)."""
    io = Path(f"/proc/{pid}/io").read_text()
    return int(re.search(r"^wchar: (\d+)", io, re.M).group(1))


def _children(pid: int, count: int, without: int | None = None) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker), oldest first."""
    deadline = time.monotonic() + 60
    while True:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids = [int(p) for p in found if int(p) != without and b"spawn_main" in _cmdline(int(p))]
        if len(pids) >= count or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return b""


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    except (FileNotFoundError, StopIteration):
        return 0
