"""The data dir's generated API key (``api_key.txt``): the unmetered key a fresh server makes for itself."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from imagegate.config import Settings

KEY_FILE = "api_key.txt"


def ensure_api_keys(settings: Settings) -> tuple[tuple[str, ...], str | None]:
    """The configured keys, or the data dir's generated key (created on first start). Returns the keys and the
    key that was created now, if any, so the caller can print it once."""
    if settings.api_keys:
        return settings.api_keys, None
    made = existing_key(settings.data_dir)
    if made:
        return made, None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = "sk-ig-" + secrets.token_urlsafe(32)
    fd = os.open(settings.data_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return (key,), key


def existing_key(data_dir: Path) -> tuple[str, ...]:
    """The key made earlier in ``data_dir``, if one was."""
    path = data_dir / KEY_FILE
    return (path.read_text().strip(),) if path.exists() else ()
