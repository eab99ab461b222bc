"""``imagegate accounts | keys | usage | db``: the admin API's work from a shell, on the same data dir or
database as ``serve`` (settings from the same --config / IMAGEGATE_* / flags)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from imagegate.errors import ImagegateError


def add_commands(sub: argparse._SubParsersAction) -> None:
    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--data-dir", type=Path, default=None)
        parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
        parser.add_argument("--database-url", default=None, help="default: SQLite in the data dir")
        return parser

    accounts = sub.add_parser("accounts", help="accounts and their balances")
    accounts = accounts.add_subparsers(dest="action", required=True)
    p = common(accounts.add_parser("create", help="create an account"))
    p.add_argument("name")
    p.add_argument("--balance", default="0", help="opening balance in USD")
    p.add_argument("--group", default="default", help="price group (multiplier in the price book)")
    p = common(accounts.add_parser("topup", help="add USD to an account"))
    p.add_argument("name")
    p.add_argument("amount", help="USD")
    p.add_argument("--note", default="")
    p = common(accounts.add_parser("show", help="balance, holds and keys of an account"))
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p = common(accounts.add_parser("list", help="every account"))
    p.add_argument("--json", action="store_true")
    p = common(accounts.add_parser("group", help="move an account to another price group"))
    p.add_argument("name")
    p.add_argument("group")

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    p = common(keys.add_parser("create", help="create a key; it is printed once, alone on the last line"))
    p.add_argument("--account", required=True)
    p.add_argument("--name", default="")
    p.add_argument("--expires", default=None, help="'30d', an ISO time with a zone, or unix seconds")
    p.add_argument("--models", default=None, help="comma-separated model ids this key may use")
    p.add_argument("--limit", default=None, help="the key's own spend limit in USD")
    p.add_argument("--guard-policy", choices=("block", "rewrite", "off"), default=None,
                   help="the key's own prompt-guard policy (default: the server's)")
    p = common(keys.add_parser("list", help="keys (prefixes only; secrets are never stored)"))
    p.add_argument("--account", default=None)
    p.add_argument("--json", action="store_true")
    p = common(keys.add_parser("revoke", help="revoke a key by its prefix"))
    p.add_argument("prefix")

    usage = common(sub.add_parser("usage", help="the usage log, newest first"))
    usage.add_argument("--account", default=None)
    usage.add_argument("--limit", type=int, default=50)
    usage.add_argument("--json", action="store_true")

    db = sub.add_parser("db", help="the database schema").add_subparsers(dest="action", required=True)
    common(db.add_parser("upgrade", help="migrate the database to the newest schema"))
    common(db.add_parser("current", help="show the schema revision"))

    for parser in (accounts, keys, db):
        for choice in parser.choices.values():
            choice.set_defaults(func=run)
    usage.set_defaults(func=run, action="usage")


def run(args: argparse.Namespace) -> int:
    from imagegate.config import ConfigError, load_settings

    try:
        settings = load_settings(args.config, overrides={"data_dir": args.data_dir, "database_url": args.database_url})
        return asyncio.run(_run(args, settings))
    except ConfigError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return 2
    except ImagegateError as exc:
        print(f"imagegate: {exc.message}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, settings) -> int:
    from imagegate.billing import load_price_book
    from imagegate.billing.store import BillingStore
    from imagegate.db import head_revision, opened, resolve_url

    prices = load_price_book(settings.price_file)
    url = resolve_url(settings.database_url, settings.data_dir)
    timeout = settings.database_write_timeout_seconds
    command = args.command
    # Only what creates something may create the data dir's database: its presence turns metering on at the next
    # `serve`. Anything else, on a data dir without one, answers as it would with an empty one and leaves it absent.
    stand_in = _sqlite_file_absent(url) and (command, args.action) not in _CREATES
    if command == "db":
        if stand_in:
            revision = None
        else:
            async with opened(url, upgrade=args.action == "upgrade", write_timeout=timeout) as db:
                revision = await db.revision()
        print(f"schema revision: {revision or 'none'} (newest: {head_revision()})")
        return 0
    out = _Out(prices, getattr(args, "json", False))
    handler = _HANDLERS[(command, args.action)]
    if stand_in and (command, args.action) in _READ_ONLY:
        if (command, args.action) == ("accounts", "show"):
            raise ImagegateError(f"No account named '{args.name}' (there is no database yet: {url}).", status=404)
        if out.json:
            out.dump([])
        else:
            print(f"nothing yet: there is no database ({url}); this data dir's server is unmetered", file=sys.stderr)
        return 0
    if stand_in:
        # A write to what is not there (a top-up, a revocation): refused by a throwaway empty database, with the
        # same message and status as the data dir's own would give once it exists.
        with tempfile.TemporaryDirectory(prefix="imagegate-") as scratch:
            async with opened(resolve_url("", Path(scratch)), write_timeout=timeout) as db:
                return await handler(BillingStore(db), args, out, prices)
    async with opened(url, write_timeout=timeout) as db:
        return await handler(BillingStore(db), args, out, prices)


def _sqlite_file_absent(url: str) -> bool:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists()


class _Out:
    def __init__(self, prices, as_json: bool) -> None:
        self.prices = prices
        self.json = as_json

    def money(self, micro: int) -> str:
        from imagegate.billing.money import credits, usd

        amount_credits = f"{credits(micro, self.prices.credits_per_usd):,.2f} credits"
        if self.prices.display_unit == "credits":
            return f"{amount_credits} ({usd(micro)} USD)"
        return f"{usd(micro)} USD ({amount_credits})"

    def dump(self, value: Any) -> None:
        print(json.dumps(value, indent=2, default=str))


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


async def _account_create(store, args, out, prices) -> int:
    from imagegate.billing.inputs import check_name, money

    if prices.multiplier(args.group) is None:
        raise ImagegateError(f"'{args.group}' is not a price group; the price book has: "
                             f"{', '.join(sorted(prices.groups))}.", status=400)
    account = await store.create_account(check_name(args.name), group=args.group,
                                         balance_micro=money(args.balance, "--balance", allow_zero=True))
    print(f"created account {account.name} (group {account.group}), balance {out.money(account.balance_micro)}")
    return 0


async def _account_topup(store, args, out, prices) -> int:
    from imagegate.billing.inputs import money

    account, _ = await store.topup(args.name, money(args.amount, "amount"), args.note)
    print(f"{account.name}: balance {out.money(account.balance_micro)}")
    return 0


async def _account_show(store, args, out, prices) -> int:
    account = await store.account(args.name)
    keys = await store.keys(args.name)
    totals = await store.totals(args.name)
    if out.json:
        out.dump({"name": account.name, "group": account.group, "balance_micro": account.balance_micro,
                  "held_micro": account.held_micro, "available_micro": account.available_micro, "totals": totals,
                  "keys": [{"prefix": k.prefix, "name": k.name, "state": k.state(time.time()),
                            "spent_micro": k.spent_micro} for k in keys]})
        return 0
    print(f"account    {account.name}")
    print(f"group      {account.group}")
    print(f"balance    {out.money(account.balance_micro)}")
    print(f"held       {out.money(account.held_micro)} ({totals['open_holds']} open hold(s))")
    print(f"available  {out.money(account.available_micro)}")
    print(f"topped up  {out.money(totals['topup'])}; charged {out.money(totals['settle'])}")
    print(f"keys       {len(keys)}")
    for key in keys:
        print(f"  {key.prefix}  {key.state(time.time()):8} {key.name or '-':20} spent {out.money(key.spent_micro)}")
    return 0


async def _account_list(store, args, out, prices) -> int:
    accounts = await store.accounts()
    if out.json:
        out.dump([{"name": a.name, "group": a.group, "balance_micro": a.balance_micro, "held_micro": a.held_micro}
                  for a in accounts])
        return 0
    for account in accounts:
        print(f"{account.name:24} {account.group:12} {out.money(account.available_micro)} available")
    return 0


async def _account_group(store, args, out, prices) -> int:
    if prices.multiplier(args.group) is None:
        raise ImagegateError(f"'{args.group}' is not a price group.", status=400)
    account = await store.set_group(args.name, args.group)
    print(f"{account.name}: group {account.group}")
    return 0


async def _key_create(store, args, out, prices) -> int:
    from imagegate.billing.inputs import money, parse_expiry
    from imagegate.catalog import load_catalog

    models = None
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        catalog = load_catalog()
        unknown = [m for m in models if catalog.get(m) is None]
        if unknown:
            raise ImagegateError(f"unknown model '{unknown[0]}' in --models", status=400)
    expires = args.expires
    if expires is not None and expires.isdigit():
        expires = int(expires)
    key, secret = await store.create_key(
        args.account, name=args.name, expires_at=parse_expiry(expires, "--expires"), allowed_models=models,
        spend_limit_micro=money(args.limit, "--limit", allow_zero=True) if args.limit is not None else None,
        guard_policy=args.guard_policy,
    )
    print(f"created key {key.prefix}... for account {key.account_name}"
          + (f" ({key.name})" if key.name else "") + f", expires {_when(key.expires_at)}")
    print("This is the only time the key is shown; it is stored hashed:")
    print(secret)
    return 0


async def _key_list(store, args, out, prices) -> int:
    keys = await store.keys(args.account)
    now = time.time()
    if out.json:
        out.dump([{"prefix": k.prefix, "account": k.account_name, "name": k.name, "state": k.state(now),
                   "expires_at": k.expires_at, "spent_micro": k.spent_micro, "spend_limit_micro": k.spend_limit_micro,
                   "allowed_models": k.allowed_models} for k in keys])
        return 0
    for key in keys:
        limit = out.money(key.spend_limit_micro) if key.spend_limit_micro is not None else "no limit"
        print(f"{key.prefix}  {key.account_name:20} {key.state(now):8} {key.name or '-':20} "
              f"expires {_when(key.expires_at)}  spent {out.money(key.spent_micro)} / {limit}")
    return 0


async def _key_revoke(store, args, out, prices) -> int:
    key = await store.revoke_key(args.prefix)
    print(f"revoked {key.prefix}... ({key.account_name})")
    return 0


async def _usage(store, args, out, prices) -> int:
    rows = await store.usage(args.account, max(1, min(args.limit, 10000)))
    if out.json:
        out.dump(rows)
        return 0
    for r in rows:
        print(f"{_when(r['created_at'])} {r['account'] or '(static)':16} {r['key_prefix']:14} {r['model']:22} "
              f"{r['operation']:8} {r['size']:9} {r['quality']:6} n={r['n_delivered']}/{r['n_asked']} "
              f"tok={r['text_tokens'] + r['image_tokens']}/{r['output_tokens']} {out.money(r['cost_micro'])} "
              f"{r['latency_ms'] if r['latency_ms'] is not None else '-'}ms {r['status']}"
              + (f" {r['error_code']}" if r["error_code"] else ""))
    return 0


# The commands that may create a database where there is none (SQLite's file; a PostgreSQL URL always "exists").
_CREATES = {("accounts", "create"), ("db", "upgrade")}
# Of the others, those that only look: answered without opening any database when there is none.
_READ_ONLY = {("accounts", "show"), ("accounts", "list"), ("keys", "list"), ("usage", "usage")}
_HANDLERS = {
    ("accounts", "create"): _account_create,
    ("accounts", "topup"): _account_topup,
    ("accounts", "show"): _account_show,
    ("accounts", "list"): _account_list,
    ("accounts", "group"): _account_group,
    ("keys", "create"): _key_create,
    ("keys", "list"): _key_list,
    ("keys", "revoke"): _key_revoke,
    ("usage", "usage"): _usage,
}
