"""Images on local disk, served through HMAC-signed URLs that expire.

A URL is ``/files/<name>?expires=<unix>&signature=<hmac>``. The signature covers the name and the expiry, so a
link can be handed to a browser or a chat client without a key and cannot be extended or pointed elsewhere. The
file itself is removed by the janitor once its own expiry has passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from imagegate.config import ConfigError
from imagegate.durable import create_once
from imagegate.errors import NotFound, PermissionDenied

log = logging.getLogger("imagegate.storage")
_NAME_RE = re.compile(r"^[0-9a-f]{32}\.(png|jpeg|webp)$")


@dataclass(frozen=True)
class StoredImage:
    name: str
    expires_at: int


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def signature(self, name: str, expires_at: int) -> str:
        mac = hmac.new(self._secret, f"{name}\n{expires_at}".encode(), hashlib.sha256)
        return mac.hexdigest()[:43]

    def verify(self, name: str, expires_at: int, signature: str, *, now: float | None = None) -> None:
        # As bytes: compare_digest refuses str with non-ASCII characters, and the signature is the client's.
        given = signature.encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(self.signature(name, expires_at).encode(), given):
            raise PermissionDenied("This image link is invalid: its signature does not match.", code="invalid_signature")
        if (time.time() if now is None else now) > expires_at:
            raise PermissionDenied(
                "This image link has expired. Generate the image again, or download images before their link expires.",
                code="url_expired",
            )


class LocalStorage:
    def __init__(self, root: Path, signer: UrlSigner, ttl_seconds: int) -> None:
        self.root = root
        self.signer = signer
        self.ttl_seconds = ttl_seconds
        root.mkdir(parents=True, exist_ok=True)

    async def put(self, data: bytes, fmt: str, *, keep_at_least: int = 0) -> StoredImage:
        """Store an image for ``ttl_seconds``, or ``keep_at_least`` seconds if longer (what an idempotent replay
        needs it for)."""
        name = f"{secrets.token_hex(16)}.{fmt}"
        expires_at = int(time.time()) + max(self.ttl_seconds, keep_at_least)
        await asyncio.to_thread(self._write, name, data, expires_at)
        return StoredImage(name, expires_at)

    def _write(self, name: str, data: bytes, expires_at: int) -> None:
        final = self.root / name
        tmp = final.with_suffix(".part")
        tmp.write_bytes(data)
        # The file's mtime carries its expiry, so the janitor needs no index and survives restarts.
        os.utime(tmp, (expires_at, expires_at))
        tmp.replace(final)

    def url(self, base_url: str, stored: StoredImage) -> str:
        sig = self.signer.signature(stored.name, stored.expires_at)
        return f"{base_url.rstrip('/')}/files/{stored.name}?expires={stored.expires_at}&signature={sig}"

    def open_signed(self, name: str, expires: str, signature: str) -> Path:
        if not _NAME_RE.match(name):
            raise NotFound(f"No image named '{name}'.")
        try:
            expires_at = int(expires)
        except ValueError:
            raise PermissionDenied("This image link is invalid: 'expires' must be a unix time.", code="invalid_signature") from None
        self.signer.verify(name, expires_at, signature)
        path = self.root / name
        if not path.is_file():
            raise NotFound(f"Image '{name}' no longer exists.")
        return path

    def sweep(self, now: float | None = None) -> int:
        """Remove images whose expiry has passed (and stale partial writes); returns how many went."""
        now = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.root):
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue  # not ours (a volume's lost+found, say): left alone
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.name.endswith(".part"):
                # Still being written (its mtime is not the expiry yet) unless it was abandoned an hour ago.
                expired = stat.st_ctime < now - 3600
            else:
                expired = stat.st_mtime < now
            if expired:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:  # one file we may not remove must not stop the sweep of the rest
                    log.warning("janitor could not remove %s: %s", entry.path, exc)
        return removed


def load_or_create_secret(path: Path) -> bytes:
    """The data dir's URL-signing secret, made on first start. One shorter than 32 bytes is refused: signed with
    an empty or truncated key, links could be forged by anyone who knows an image's name."""
    text = create_once(path, secrets.token_bytes(32).hex()).strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ConfigError(f"{path} is not a 32-byte hex secret (damaged?): delete it for a new one to be made; "
                          "links signed before then stop working")
    return secret
