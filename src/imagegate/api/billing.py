"""Money on the public API: database keys, ``POST /v1/images/quote``, ``GET /v1/balance``, the cost and balance
headers, and idempotent retries (``Idempotency-Key``) of generations and edits."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.responses import Response

from imagegate.api.auth import Principal, StaticKeys, redact, require_principal
from imagegate.api.render import FastJSONResponse, StreamRenderer, images_response
from imagegate.api.wire import base_url, content_type, json_body
from imagegate.billing import Billing, Idempotency
from imagegate.billing.money import amount_dict, usd
from imagegate.billing.service import check_model_allowed
from imagegate.billing.store import KEY_PREFIX, BillingStore, hash_key
from imagegate.catalog import parse_size
from imagegate.catalog.tokens import Usage
from imagegate.engines.base import ImageDone
from imagegate.errors import AuthenticationFailed, Conflict, ImagegateError, InvalidRequest, UnsupportedMediaType
from imagegate.gateway import DeliveredImage, Run, RunResult
from imagegate.storage import StoredImage
from imagegate.validate import ImageRequest, RawRequest, validate_request

router = APIRouter()

MAX_IDEMPOTENCY_KEY = 255


class DbKeys:
    """API keys from the database (metered), with the static keys still accepted as the unmetered mode.

    A key found valid is remembered for ``cache_seconds``: every request needs its key, and a database round
    trip for it cost more than the hold. Money is never decided from the cache (holds check the balance and the
    key's limit in the database), so what it delays is only a revocation made by another process; one made
    through this process's admin API takes effect at once.
    """

    def __init__(self, store: BillingStore, static: StaticKeys | None = None, *, cache_seconds: float = 2.0,
                 cache_size: int = 10_000) -> None:
        self.store = store
        self.static = static
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self._cache: dict[str, tuple[float, Principal, float | None]] = {}  # secret hash -> (until, who, expiry)
        self._generation = 0  # bumped by every forget()

    async def authenticate(self, token: str) -> Principal:
        if self.static is not None:
            try:
                return await self.static.authenticate(token)
            except AuthenticationFailed:
                pass
        if not token.startswith(KEY_PREFIX):
            raise AuthenticationFailed(f"Incorrect API key provided: {redact(token)}.")
        digest = hash_key(token)
        cached = self._cache.get(digest)
        now = time.time()
        if cached is not None and cached[0] > time.monotonic() and (cached[2] is None or cached[2] > now):
            return cached[1]
        generation = self._generation  # a forget() while we read must not be undone by caching what we read
        found = await self.store.key_by_secret(token)
        if found is None:
            raise AuthenticationFailed(f"Incorrect API key provided: {redact(token)}.")
        key, account = found
        state = key.state(now)
        if state == "revoked":
            raise AuthenticationFailed(f"This API key ({key.prefix}...) has been revoked.", code="api_key_revoked")
        if state == "expired":
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(key.expires_at))
            raise AuthenticationFailed(f"This API key ({key.prefix}...) expired on {when}.", code="api_key_expired")
        principal = Principal(
            key_prefix=key.prefix, account=account.name, metered=True, account_id=account.id, key_id=key.id,
            group=account.group, allowed_models=key.allowed_models, guard_policy=key.guard_policy,
        )
        if self.cache_seconds > 0 and generation == self._generation:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            self._cache[digest] = (time.monotonic() + self.cache_seconds, principal, key.expires_at)
        return principal

    def forget(self, prefix: str | None = None) -> None:
        """Drop remembered keys (those with ``prefix``, or all): the key or its account changed here."""
        self._generation += 1
        if prefix is None:
            self._cache.clear()
            return
        for digest in [d for d, (_, who, _) in self._cache.items() if who.key_prefix.startswith(prefix)]:
            del self._cache[digest]


# --- headers ----------------------------------------------------------------------------------------------------


def cost_headers(run: Run) -> dict[str, str]:
    """x-imagegate-cost (USD, what this request cost) and x-imagegate-balance (USD, the account's balance less
    open holds, metered keys only), from the run's settlement."""
    settlement = run.settlement
    headers: dict[str, str] = {}
    if settlement is None:
        return headers
    if settlement.cost_micro is not None:
        headers["x-imagegate-cost"] = usd(settlement.cost_micro)
    if settlement.available_micro is not None:
        headers["x-imagegate-balance"] = usd(settlement.available_micro)
    return headers


def stream_headers(run: Run) -> dict[str, str]:
    """A stream's headers leave before its cost is known: they carry the quote (the most it can cost) and the
    balance after the hold. The settled cost is in the usage log and the next balance."""
    ticket = run.ticket
    headers: dict[str, str] = {}
    if ticket is None:
        return headers
    if ticket.quote is not None:
        headers["x-imagegate-quote"] = usd(ticket.quote.micro)
    if ticket.available_micro is not None:
        headers["x-imagegate-balance"] = usd(ticket.available_micro)
    return headers


# --- idempotency ------------------------------------------------------------------------------------------------


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidRequest(
            f"Invalid Idempotency-Key header: expected 1 to {MAX_IDEMPOTENCY_KEY} printable characters.",
            param="Idempotency-Key",
        )
    return key


def body_hash(raw: RawRequest) -> str:
    """The request as the server understood it: fields (JSON or multipart text) and every uploaded file."""
    digest = hashlib.sha256()
    digest.update(raw.operation.encode())
    digest.update(json.dumps(raw.fields, sort_keys=True, separators=(",", ":"), default=str).encode())
    for name, data in raw.images:
        digest.update(f"\x00{name}\x00".encode() + hashlib.sha256(data).digest())
    if raw.mask is not None:
        digest.update(b"\x00mask\x00" + hashlib.sha256(raw.mask).digest())
    return digest.hexdigest()


def _scope(principal: Principal) -> str:
    return f"acct:{principal.account_id}" if principal.metered else principal.idempotency_scope


async def start_run(request: Request, image_request: ImageRequest, raw: RawRequest) -> Run | Response:
    """Hold and start the request, or, for a retry with an Idempotency-Key already answered, the stored answer."""
    state = request.app.state
    principal: Principal = request.state.principal
    billing: Billing = state.billing
    key = idempotency_key(request)
    if key is None or billing.store is None:
        return await state.gateway.begin(image_request, principal)
    from imagegate.billing.store import IdempotencyTaken

    idem = Idempotency(_scope(principal), key, body_hash(raw))
    for _ in range(3):
        record = await billing.idempotent_result(idem)
        if record is not None:
            # Keys share their account's results: one may get back only what it could have asked for itself.
            check_model_allowed(image_request.job.model.id, principal)
            return await _replay(request, image_request, record.result or {}, principal)
        try:
            return await state.gateway.begin(image_request, principal, idempotency=idem)
        except IdempotencyTaken:
            continue  # a concurrent twin claimed the key first: look again (and wait for it)
    raise Conflict("A request with this Idempotency-Key is still running; retry in a moment.",
                   code="idempotency_in_progress", headers={"retry-after": "1"})


async def _replay(
    request: Request, image_request: ImageRequest, stored: dict[str, Any], principal: Principal
) -> Response:
    state = request.app.state
    headers = {"idempotent-replayed": "true", "x-imagegate-cost": usd(int(stored.get("cost_micro", 0)))}
    if principal.metered and principal.account_id is not None:
        account = await state.billing.store.account_by_id(principal.account_id)
        headers["x-imagegate-balance"] = usd(account.available_micro)
    if stored.get("status") != 200:
        error = stored.get("error", {})
        exc = ImagegateError(error.get("message", "The original request failed."), status=stored.get("status", 500),
                             type=error.get("type"), code=error.get("code"), param=error.get("param"), headers=headers)
        raise exc
    images = []
    for item in stored.get("images", []):
        name, expires_at = item["name"], int(item["expires_at"])
        try:
            path = state.storage.open_signed(name, str(expires_at), state.storage.signer.signature(name, expires_at))
            data = path.read_bytes()
        except (ImagegateError, OSError):
            raise Conflict(
                "The result stored for this Idempotency-Key is no longer available (its images expired). Use a new "
                "key to generate again.",
                code="idempotency_result_expired",
                headers={"x-should-retry": "false"},
            ) from None
        size = parse_size(item.get("size", "")) or image_request.job.size
        done = ImageDone(item["index"], data, item["format"], size, item.get("revised_prompt"))
        images.append(DeliveredImage(done, StoredImage(name, expires_at)))
    text, image_in, out = stored.get("usage", [0, 0, 0])
    result = RunResult(images=images, usage=Usage(text, image_in, out))
    if image_request.stream:
        chunks = StreamRenderer(image_request).completed_all([img.done for img in images], result.usage)

        async def replay_stream():
            for chunk in chunks:
                yield chunk

        return StreamingResponse(replay_stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", **headers})

    body = images_response(image_request, result, storage=state.storage, base_url=base_url(request))
    body["created"] = stored.get("created", body["created"])
    return FastJSONResponse(body, headers=headers)


# --- routes -----------------------------------------------------------------------------------------------------


@router.post("/v1/images/quote")
async def quote(request: Request, principal: Principal = Depends(require_principal)) -> Any:
    """What a generation with this body would cost at most, without running it (same body as generations)."""

    if content_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType("Unsupported Content-Type: /v1/images/quote takes the generations JSON body.")
    state = request.app.state
    body = await json_body(request)
    image_request = await validate_request(
        RawRequest("generate", body), state.channels.catalog, max_input_pixels=state.settings.max_input_pixels,
        max_image_bytes=state.settings.max_image_bytes,
    )
    billing: Billing = state.billing
    price, cost = billing.quote(image_request, principal)
    job = image_request.job
    rate = billing.prices.credits_per_usd
    return {
        "object": "image.quote",
        "model": job.model.id,
        "operation": job.operation,
        "n": job.n,
        "size": str(job.size),
        "quality": job.quality,
        "partial_images": job.partial_images,
        "method": price.method,
        "group": principal.group if principal.metered else None,
        "multiplier": str(cost.multiplier),
        "cost": amount_dict(cost.micro, rate),
        "display_unit": billing.prices.display_unit,
        "usage_estimate": {"text_tokens": cost.usage.text_tokens, "image_tokens": cost.usage.image_tokens,
                           "output_tokens": cost.usage.output_tokens},
        "lines": [line.to_dict() for line in cost.lines],
    }


@router.get("/v1/balance")
async def balance(request: Request, principal: Principal = Depends(require_principal)) -> Any:
    billing: Billing = request.app.state.billing
    rate = billing.prices.credits_per_usd
    if not principal.metered or billing.store is None or principal.account_id is None:
        return {"object": "balance", "metered": False, "account": None,
                "message": "This key is a static, unmetered key: it has no balance."}
    account = await billing.store.account_by_id(principal.account_id)
    key = await billing.store.key(principal.key_prefix)
    return {
        "object": "balance",
        "metered": True,
        "account": account.name,
        "group": account.group,
        "display_unit": billing.prices.display_unit,
        "balance": amount_dict(account.balance_micro, rate),
        "held": amount_dict(account.held_micro, rate),
        "available": amount_dict(account.available_micro, rate),
        "key": {
            "prefix": key.prefix,
            "name": key.name,
            "spent": amount_dict(key.spent_micro, rate),
            "spend_limit": amount_dict(key.spend_limit_micro, rate) if key.spend_limit_micro is not None else None,
            "expires_at": key.expires_at,
            "allowed_models": list(key.allowed_models) if key.allowed_models is not None else None,
        },
    }
