"""The data dir's generated API key (``api_key.txt``): the unmetered key a fresh server makes for itself."""

from __future__ import annotations

import secrets
from pathlib import Path

from imagegate.config import ConfigError, Settings
from imagegate.durable import create_once

KEY_FILE = "api_key.txt"


def ensure_api_keys(settings: Settings) -> tuple[tuple[str, ...], str | None]:
    """The configured keys, or the data dir's generated key (created on first start). Returns the keys and the
    key that was created now, if any, so the caller can print it once."""
    if settings.api_keys:
        return settings.api_keys, None
    made = existing_key(settings.data_dir)
    if made:
        return made, None
    key = "sk-ig-" + secrets.token_urlsafe(32)
    kept = create_once(settings.data_dir / KEY_FILE, key + "\n").strip()
    return (kept,), key if kept == key else None


def existing_key(data_dir: Path) -> tuple[str, ...]:
    """The key made earlier in ``data_dir``, if one was."""
    path = data_dir / KEY_FILE
    if not path.exists():
        return ()
    key = path.read_text().strip()
    if not key:
        # A key no client can send: every request would be refused by a server that started fine.
        raise ConfigError(f"{path} is empty: delete it for a new key to be made, or set api_keys")
    return (key,)
