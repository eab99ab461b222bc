"""The data dir's made-once files: the generated API key and the URL-signing secret."""

from __future__ import annotations

import threading

import pytest

from imagegate.config import ConfigError, Settings
from imagegate.durable import create_once
from imagegate.keyfile import KEY_FILE, ensure_api_keys
from imagegate.storage.local import load_or_create_secret


def test_processes_starting_together_adopt_one_file(tmp_path):
    path = tmp_path / "data" / "secret"
    start = threading.Barrier(8)
    seen: list[str] = []

    def make(i: int) -> None:
        start.wait()
        seen.append(create_once(path, f"text {i}"))

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1 and path.read_text() == seen[0]  # never an empty or half-written one
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary file left behind


def test_a_damaged_signing_secret_is_refused_not_used(tmp_path):
    path = tmp_path / "url_secret.key"
    made = load_or_create_secret(path)
    assert len(made) == 32 and load_or_create_secret(path) == made
    for damaged in ("", "abc", "zz" * 32):  # an empty key would let anyone sign links
        path.write_text(damaged)
        with pytest.raises(ConfigError, match="not a 32-byte hex secret"):
            load_or_create_secret(path)


def test_an_empty_key_file_is_refused_not_served_with(tmp_path):
    settings = Settings(data_dir=tmp_path)
    keys, created = ensure_api_keys(settings)
    assert created == keys[0] and ensure_api_keys(settings) == (keys, None)
    (tmp_path / KEY_FILE).write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        ensure_api_keys(settings)
