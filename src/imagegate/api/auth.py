"""Bearer-key authentication for everything under /v1."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request

from imagegate.errors import AuthenticationFailed


@dataclass(frozen=True)
class Principal:
    """Who is calling: an account (metered) or a static key (unmetered)."""

    key_prefix: str
    account: str | None = None
    metered: bool = False
    account_id: int | None = None
    key_id: int | None = None
    group: str = "default"  # the account's price group (multiplier in the price book)
    allowed_models: tuple[str, ...] | None = None  # None: every model
    guard_policy: str | None = None  # the key's own prompt-guard policy; None: the deployment's
    # Whose idempotency keys these are: the account's, or one static key's own (by a digest of the whole key: two
    # keys can share a shown prefix).
    idempotency_scope: str = ""


class KeyStore(Protocol):
    async def authenticate(self, token: str) -> Principal: ...

    def forget(self, prefix: str | None = None) -> None:
        """Drop what is remembered about keys (with ``prefix``, or all): they changed."""


class StaticKeys:
    """Keys from configuration: an explicit, unmetered mode."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    async def authenticate(self, token: str) -> Principal:
        candidate = token.encode()
        # Compare against every key so timing says nothing about which prefix matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise AuthenticationFailed(f"Incorrect API key provided: {redact(token)}.")
        return Principal(key_prefix=redact(token),
                         idempotency_scope=f"static:{hashlib.sha256(candidate).hexdigest()[:32]}")

    def forget(self, prefix: str | None = None) -> None:
        return None  # configured keys change only with the configuration


def redact(token: str) -> str:
    """A key as it may be shown (error messages, the usage log, the channel list): its scheme and last four
    characters, as OpenAI shows keys; nothing at all of a short one, where four characters are much of it."""
    if len(token) < 20:
        return "****"
    return f"{token[:3]}...{token[-4:]}"


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(
            "The Authorization header must be 'Bearer YOUR_KEY'.", code="invalid_authorization_header"
        )
    return token.strip()


async def require_principal(request: Request) -> Principal:
    keys: KeyStore = request.app.state.keys
    principal = await keys.authenticate(bearer_token(request))
    request.state.principal = principal
    return principal
