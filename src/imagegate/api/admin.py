"""The admin API under /admin: accounts, keys, top-ups, prices, usage. Guarded by ``admin_token``.

Amounts are USD (numbers or decimal strings) in requests and ``{usd, micro_usd, credits}`` in answers.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from imagegate.api.auth import bearer_token
from imagegate.api.billing import idempotency_key
from imagegate.api.wire import json_body
from imagegate.billing import Billing, load_price_book
from imagegate.billing.prices import PriceBook, PriceBookError, price_file_stamp
from imagegate.billing.inputs import check_name, money, parse_expiry
from imagegate.billing.money import amount_dict
from imagegate.billing.store import Account, ApiKey, BillingStore
from imagegate.config import ConfigError
from imagegate.errors import AuthenticationFailed, ImagegateError, InvalidRequest, InvalidType, PermissionDenied

router = APIRouter(prefix="/admin")

MAX_LIST = 1000


async def require_admin(request: Request) -> None:
    expected = request.app.state.settings.admin_token
    if not expected:
        raise PermissionDenied("The admin API is off: set IMAGEGATE_ADMIN_TOKEN to use it.", code="admin_disabled")
    if not hmac.compare_digest(bearer_token(request).encode(), expected.encode()):
        raise AuthenticationFailed("Incorrect admin token.", code="invalid_admin_token")


def _store(request: Request) -> BillingStore:
    store = request.app.state.billing.store
    if store is None:
        raise ImagegateError("Accounts are off on this server (metering = off).", status=503, code="metering_off",
                             headers={"x-should-retry": "false"})  # a setting, not a passing state
    return store


def check_group(billing: Billing, group: Any) -> str:
    if not isinstance(group, str) or billing.prices.multiplier(group) is None:
        raise InvalidRequest(
            f"Invalid 'group': {group!r} is not a price group; the price book has: "
            f"{', '.join(sorted(billing.prices.groups))}.",
            param="group",
        )
    return group


def account_dict(account: Account, billing: Billing) -> dict[str, Any]:
    rate = billing.prices.credits_per_usd
    return {
        "object": "account",
        "name": account.name,
        "group": account.group,
        "balance": amount_dict(account.balance_micro, rate),
        "held": amount_dict(account.held_micro, rate),
        "available": amount_dict(account.available_micro, rate),
        "created_at": account.created_at,
    }


def key_dict(key: ApiKey, billing: Billing) -> dict[str, Any]:
    rate = billing.prices.credits_per_usd
    return {
        "object": "api_key",
        "prefix": key.prefix,
        "account": key.account_name,
        "name": key.name,
        "state": key.state(time.time()),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
        "allowed_models": list(key.allowed_models) if key.allowed_models is not None else None,
        "guard_policy": key.guard_policy,
        "spend_limit": amount_dict(key.spend_limit_micro, rate) if key.spend_limit_micro is not None else None,
        "spent": amount_dict(key.spent_micro, rate),
    }


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIST:  # "²" is a digit to isdigit
        raise InvalidRequest(f"Invalid 'limit': expected 1 to {MAX_LIST}.", param="limit")
    return int(raw)


guard = [Depends(require_admin)]


@router.get("/accounts", dependencies=guard)
async def list_accounts(request: Request) -> Any:
    billing = request.app.state.billing
    return {"object": "list", "data": [account_dict(a, billing) for a in await _store(request).accounts()]}


@router.post("/accounts", dependencies=guard, status_code=201)
async def create_account(request: Request) -> Any:
    billing = request.app.state.billing
    body = await json_body(request)
    name = check_name(body.get("name"))
    group = check_group(billing, body.get("group", "default"))
    balance = money(body.get("balance", 0), "balance", allow_zero=True)
    account = await _store(request).create_account(name, group=group, balance_micro=balance)
    return account_dict(account, billing)


@router.get("/accounts/{name}", dependencies=guard)
async def get_account(name: str, request: Request) -> Any:
    store = _store(request)
    billing = request.app.state.billing
    account = await store.account(name)
    return {**account_dict(account, billing), "keys": [key_dict(k, billing) for k in await store.keys(name)]}


@router.patch("/accounts/{name}", dependencies=guard)
async def update_account(name: str, request: Request) -> Any:
    billing = request.app.state.billing
    body = await json_body(request)
    unknown = set(body) - {"group"}
    if unknown:
        raise InvalidRequest(f"Unknown field '{sorted(unknown)[0]}': an account's group can be changed.",
                             param=sorted(unknown)[0])
    account = await _store(request).set_group(name, check_group(billing, body.get("group")))
    request.app.state.keys.forget()  # remembered keys carry the old group
    return account_dict(account, billing)


@router.post("/accounts/{name}/topups", dependencies=guard)
async def topup(name: str, request: Request) -> Any:
    body = await json_body(request)
    amount = money(body.get("amount"), "amount")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 200:
        raise InvalidRequest("Invalid 'note': a string of at most 200 characters.", param="note")
    account, replayed = await _store(request).topup(name, amount, note,
                                                    idempotency_key=idempotency_key(request))
    body = account_dict(account, request.app.state.billing)
    return JSONResponse(body, headers={"idempotent-replayed": "true"}) if replayed else body


@router.get("/accounts/{name}/ledger", dependencies=guard)
async def account_ledger(name: str, request: Request) -> Any:
    return {"object": "list", "data": await _store(request).ledger(name, _limit(request))}


@router.get("/accounts/{name}/totals", dependencies=guard)
async def account_totals(name: str, request: Request) -> Any:
    return await _store(request).totals(name)


@router.get("/keys", dependencies=guard)
async def list_keys(request: Request) -> Any:
    billing = request.app.state.billing
    keys = await _store(request).keys(request.query_params.get("account"))
    return {"object": "list", "data": [key_dict(k, billing) for k in keys]}


@router.post("/keys", dependencies=guard, status_code=201)
async def create_key(request: Request) -> Any:
    billing = request.app.state.billing
    body = await json_body(request)
    account = check_name(body.get("account"), "account")
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 100:
        raise InvalidRequest("Invalid 'name': a string of at most 100 characters.", param="name")
    models = body.get("allowed_models")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise InvalidType("Invalid 'allowed_models': expected an array of model ids.", param="allowed_models")
        unknown = [m for m in models if request.app.state.channels.catalog.get(m) is None]
        if unknown:
            raise InvalidRequest(f"Invalid 'allowed_models': unknown model '{unknown[0]}'.", param="allowed_models")
    guard_policy = body.get("guard_policy")
    if guard_policy not in (None, "block", "rewrite", "off"):
        raise InvalidRequest("Invalid 'guard_policy': expected 'block', 'rewrite' or 'off'.", param="guard_policy")
    limit = body.get("spend_limit")
    key, secret = await _store(request).create_key(
        account, name=name, expires_at=parse_expiry(body.get("expires_at")), allowed_models=models,
        spend_limit_micro=money(limit, "spend_limit", allow_zero=True) if limit is not None else None,
        guard_policy=guard_policy,
    )
    return {**key_dict(key, billing), "key": secret}


@router.post("/keys/{prefix}/revoke", dependencies=guard)
async def revoke_key(prefix: str, request: Request) -> Any:
    key = await _store(request).revoke_key(prefix)
    request.app.state.keys.forget(key.prefix)
    return key_dict(key, request.app.state.billing)


@router.get("/usage", dependencies=guard)
async def usage(request: Request) -> Any:
    rows = await _store(request).usage(request.query_params.get("account"), _limit(request))
    return {"object": "list", "data": rows}


@router.get("/prices", dependencies=guard)
async def prices(request: Request) -> Any:
    return request.app.state.billing.prices.to_dict()


@router.post("/prices/reload", dependencies=guard)
async def reload_prices(request: Request) -> Any:
    """Read the price file again; a bad file is refused (400 naming the entry) and the old prices stay."""
    try:
        book = apply_price_file(request.app.state)
    except ConfigError as exc:
        raise InvalidRequest(str(exc), param="price_file") from None
    return book.to_dict()


def apply_price_file(state: Any) -> PriceBook:
    """Read the price file again and price with it from now on, in this process (the others follow the file
    within a heartbeat); a bad file raises ConfigError and the old prices stay."""
    stamp = price_file_stamp(state.settings.price_file)
    book = load_price_book(state.settings.price_file)
    problems = book.coverage_problems(state.channels.catalog)
    if problems and state.billing.store is not None:
        raise PriceBookError(f"prices: {problems[0]}")
    state.billing.prices = book
    state.prices_stamp = stamp
    return book


@router.post("/reconcile", dependencies=guard)
async def reconcile(request: Request) -> Any:
    return {"released_holds": await _store(request).reconcile()}
