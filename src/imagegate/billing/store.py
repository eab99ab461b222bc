"""Accounts, keys, holds, the ledger, the usage log and idempotency records in the database.

Every change of money is one transaction that updates the balance with a conditional ``UPDATE ... RETURNING``
and appends ledger entries; nothing reads a balance, decides in Python and writes it back. The invariants, kept
by the statements and by CHECK constraints:

- ``balance = sum(topup) - sum(settle)`` and ``held = sum of open holds`` for every account;
- ``balance >= held >= 0``: a hold is placed only if ``balance - held`` covers it, and a settlement never charges
  more than its hold, so a balance cannot go below zero under any interleaving;
- a hold is closed once: ``status = 'open'`` is part of the WHERE clause that closes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import json
import os
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from imagegate.catalog.tokens import Usage
from imagegate.db import Database, Prebuilt, no_turn_to_write
from imagegate.db.schema import Money, accounts, api_keys, holds, idempotency, instances, ledger, usage_log
from imagegate.errors import Conflict, ImagegateError, InsufficientQuota, InvalidRequest, NotFound

log = logging.getLogger("imagegate.billing")

KEY_PREFIX = "sk-ig-"
PREFIX_CHARS = 12  # "sk-ig-" and 6 random characters: shown in lists, enough to revoke by


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    group: str
    balance_micro: int
    held_micro: int
    created_at: float

    @property
    def available_micro(self) -> int:
        return self.balance_micro - self.held_micro


@dataclass(frozen=True)
class ApiKey:
    id: int
    account_id: int
    account_name: str
    prefix: str
    name: str
    enabled: bool
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    allowed_models: tuple[str, ...] | None
    spend_limit_micro: int | None
    spent_micro: int
    held_micro: int
    guard_policy: str | None = None

    def state(self, now: float) -> str:
        if self.revoked_at is not None or not self.enabled:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class UsageMeta:
    """What the usage log records about a request when it starts."""

    request_id: str
    endpoint: str
    model: str
    engine: str
    operation: str
    size: str
    quality: str
    stream: bool
    n_asked: int
    key_prefix: str
    account_id: int | None
    metered: bool
    quote_micro: int


@dataclass(frozen=True)
class IdempotencyRecord:
    scope: str
    key: str
    body_hash: str
    state: str
    request_id: str
    result: dict[str, Any] | None


class IdempotencyTaken(Exception):
    """Another request claimed this idempotency key first (between our look-up and our claim)."""


def key_reused(how: str, what: str) -> Conflict:
    """The 409 for an Idempotency-Key already used ``how``: a different body under one key is a client's bug."""
    return Conflict(f"This Idempotency-Key was already used {how}. Use a new key for a new {what}.",
                    code="idempotency_key_reused", headers={"x-should-retry": "false"})


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _pid_space() -> tuple[str | None, str | None]:
    """(PID namespace, boot id) of this process, None where /proc cannot tell. A PID names the same process only
    within one namespace and one boot; two containers on one host (same hostname) may both be PID 1."""
    try:
        namespace: str | None = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]": the namespace's inode
    except OSError:
        namespace = None
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id: str | None = f.read().strip() or None
    except OSError:
        boot_id = None
    return namespace and namespace[:64], boot_id and boot_id[:64]


def _error_code(code: object) -> str | None:
    """An error code as the usage log can hold it: upstreams send numbers, or long strings, and PostgreSQL
    refuses a value longer than the column (failing the whole settlement) where SQLite would store it."""
    return None if code is None else str(code)[:64]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _account(row: Any) -> Account:
    return Account(row.id, row.name, row.group_name, row.balance_micro, row.held_micro, row.created_at)


def _api_key(row: Any) -> ApiKey:
    allowed = tuple(json.loads(row.allowed_models)) if row.allowed_models else None
    return ApiKey(
        row.id, row.account_id, row.account_name, row.prefix, row.name, bool(row.enabled), row.created_at,
        row.expires_at, row.revoked_at, row.last_used_at, allowed, row.spend_limit_micro, row.spent_micro,
        row.held_micro, row.guard_policy,
    )


_KEY_COLUMNS = [*api_keys.c, accounts.c.name.label("account_name")]
# Written out, not bound: the open holds' index is partial (status = 'open'), and a planner may only use it when the
# query says so in the SQL itself (PostgreSQL's generic plans do not look at parameter values).
_OPEN = holds.c.status == sa.literal_column("'open'")
# For reconciliation.
_OPEN_HOLDS = sa.select(holds.c.id, holds.c.instance_id, holds.c.created_at, holds.c.expires_at).where(_OPEN)
_ACCOUNT_OPEN_HOLDS = (
    sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(holds.c.amount_micro), 0))
    .where(holds.c.account_id == sa.bindparam("account_id"), _OPEN)
)

# The statements of every request, built once with bind parameters: SQLAlchemy reuses a built statement's compiled
# form as it is, while building one and working out its cache key took several times as long as running it (about
# 0.12 ms against 0.02 on SQLite, a dozen times a request). An UPDATE given parameters named after its table's
# columns sets those columns: the other parameters' names must not be column names.
_KEY_BY_HASH = (
    sa.select(*_KEY_COLUMNS, accounts.c.group_name, accounts.c.balance_micro.label("a_balance"),
              accounts.c.held_micro.label("a_held"), accounts.c.created_at.label("a_created"))
    .select_from(api_keys.join(accounts, api_keys.c.account_id == accounts.c.id))
    .where(api_keys.c.key_hash == sa.bindparam("key_hash"))
)
# Every request's statements run straight through the sqlite3 cursor on SQLite (Prebuilt; see db.Prebuilt).
_INSERT_USAGE = Prebuilt(sa.insert(usage_log).returning(usage_log.c.id))
_INSERT_HOLD = Prebuilt(sa.insert(holds))
_INSERT_LEDGER = Prebuilt(sa.insert(ledger))
_INSERT_CLAIM = Prebuilt(sa.insert(idempotency))
_THE_CLAIM = (idempotency.c.scope == sa.bindparam("idem_scope")) & (idempotency.c.key == sa.bindparam("idem_key"))
_CLAIM_RECORD = sa.select(idempotency).where(_THE_CLAIM, idempotency.c.expires_at > sa.bindparam("now"))
# A finished record past its time is invisible to the look-up but still in the table until reconcile drops it;
# without this the INSERT of a new claim would collide with it and answer "still running". A running claim is left
# alone even when old: its run may still write its result there.
_DROP_EXPIRED_CLAIM = Prebuilt(sa.delete(idempotency).where(
    _THE_CLAIM, idempotency.c.state == "done", idempotency.c.expires_at < sa.bindparam("now")
))
# The claim a request made, not a twin's that took the key after it was let go: a settlement's retry (after a
# COMMIT whose answer was lost) must not drop or overwrite the claim of a newer request under the same key.
_OWN_CLAIM = _THE_CLAIM & (idempotency.c.request_id == sa.bindparam("claim_request_id"))
_DROP_CLAIM = Prebuilt(sa.delete(idempotency).where(_OWN_CLAIM))
_STORE_RESULT = Prebuilt(sa.update(idempotency).where(_OWN_CLAIM).values(
    state="done", result=sa.bindparam("result_json"), hold_id=None
))
# The hold is placed only if the account's available balance covers it, and the key's own limit (if it has one).
_HOLD_ON_ACCOUNT = Prebuilt(
    sa.update(accounts)
    .where(accounts.c.id == sa.bindparam("account_id"),
           accounts.c.balance_micro - accounts.c.held_micro >= sa.bindparam("amount"))
    .values(held_micro=accounts.c.held_micro + sa.bindparam("amount"))
    .returning(accounts.c.balance_micro, accounts.c.held_micro)
)
_HOLD_ON_KEY = Prebuilt(
    sa.update(api_keys)
    .where(api_keys.c.id == sa.bindparam("key_id"), sa.or_(
        api_keys.c.spend_limit_micro.is_(None),
        api_keys.c.spend_limit_micro - api_keys.c.spent_micro - api_keys.c.held_micro >= sa.bindparam("amount"),
    ))
    .values(held_micro=api_keys.c.held_micro + sa.bindparam("amount"))
    .returning(api_keys.c.id)
)
# Closes the hold once (``status = 'open'`` is part of the WHERE) and charges the cost, capped at the hold.
_SETTLE_HOLD = Prebuilt(
    sa.update(holds).where(holds.c.id == sa.bindparam("hold_id"), _OPEN)
    .values(status="settled", closed_at=sa.bindparam("now"), charged_micro=sa.case(
        (holds.c.amount_micro < sa.bindparam("cost", type_=Money), holds.c.amount_micro),
        else_=sa.bindparam("cost", type_=Money),
    ))
    .returning(holds.c.amount_micro, holds.c.charged_micro, holds.c.account_id, holds.c.key_id, holds.c.request_id)
)
_CHARGE_ACCOUNT = Prebuilt(
    sa.update(accounts).where(accounts.c.id == sa.bindparam("account_id"))
    .values(balance_micro=accounts.c.balance_micro - sa.bindparam("charged"),
            held_micro=accounts.c.held_micro - sa.bindparam("amount"))
    .returning(accounts.c.balance_micro, accounts.c.held_micro)
)
_CHARGE_KEY = Prebuilt(
    sa.update(api_keys).where(api_keys.c.id == sa.bindparam("key_id"))
    .values(spent_micro=api_keys.c.spent_micro + sa.bindparam("charged"),
            held_micro=api_keys.c.held_micro - sa.bindparam("amount"), last_used_at=sa.bindparam("now"))
)
_FINISH_USAGE = Prebuilt(sa.update(usage_log).where(usage_log.c.id == sa.bindparam("usage_id")))
# Never rewrites a row already closed.
_FINISH_RUNNING_USAGE = Prebuilt(_FINISH_USAGE.statement.where(usage_log.c.status == "running"))


class BillingStore:
    """Every transaction is a sync function of a ``Connection`` (the methods without ``async``) that the database
    runs in one hop (see ``imagegate.db``): one for each async method, save ``reconcile``, which releases hold by
    hold. They may run on another thread: they read the store's settings, but ``_live_holds`` is the async
    methods' alone."""

    def __init__(
        self,
        db: Database,
        *,
        hold_ttl_seconds: float = 3600,
        idempotency_ttl_seconds: float = 86400,
        stale_after_seconds: float = 60,
    ) -> None:
        self.db = db
        self.hold_ttl = hold_ttl_seconds
        self.idempotency_ttl = idempotency_ttl_seconds
        self.stale_after = stale_after_seconds
        self.instance_id = uuid.uuid4().hex
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.pid_namespace, self.boot_id = _pid_space()
        # Holds this process placed and still means to settle (its runs in flight, or a settlement being retried).
        # Only these are kept alive by the heartbeat: a hold nobody will settle must expire so that reconcile
        # releases it, not be extended for as long as the server runs.
        self._live_holds: set[str] = set()
        # Since when this server's own heartbeats have kept succeeding (None: the last one failed). Others' silence
        # is judged only after a whole stale_after of it: after a database outage every server looks silent, and
        # their holds are still to be settled.
        self._beating_since: float | None = None
        self._unheard: set[asyncio.Task] = set()  # holds of unknown fate being given back

    # --- accounts -------------------------------------------------------------------------------------------

    async def create_account(self, name: str, *, group: str = "default", balance_micro: int = 0) -> Account:
        try:
            return _account(await self.db.run_write(self._create_account, name, group, balance_micro, time.time()))
        except IntegrityError:
            raise Conflict(f"An account named '{name}' already exists.", code="account_exists") from None

    def _create_account(self, conn: Connection, name: str, group: str, balance_micro: int, now: float) -> Any:
        row = conn.execute(
            sa.insert(accounts).values(name=name, group_name=group, balance_micro=0, held_micro=0, created_at=now)
            .returning(*accounts.c)
        ).one()
        if balance_micro:
            row = self._topup(conn, row.id, balance_micro, "opening balance", now)
        return row

    def _topup(self, conn: Connection, account_id: int, micro: int, note: str, now: float) -> Any:
        """The account's row after the top-up."""
        row = conn.execute(
            sa.update(accounts).where(accounts.c.id == account_id)
            .values(balance_micro=accounts.c.balance_micro + micro).returning(*accounts.c)
        ).one()
        conn.execute(sa.insert(ledger).values(
            at=now, account_id=account_id, kind="topup", amount_micro=micro, balance_after_micro=row.balance_micro,
            note=note[:200],
        ))
        return row

    async def topup(
        self, name: str, micro: int, note: str = "", *, idempotency_key: str | None = None
    ) -> tuple[Account, bool]:
        """Credit the account; returns it and whether this was a retry of a top-up already made under
        ``idempotency_key`` (then nothing is credited again: an operator's retry after a lost answer must not pay
        twice). The key is remembered for ``idempotency_ttl``, per account."""
        if micro <= 0:
            raise InvalidRequest("A top-up must be more than 0.", param="amount")
        args = (name, micro, note or "top-up", idempotency_key)
        try:
            row, replayed = await self.db.run_write(self._topup_named, *args, time.time())
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent twin claimed the key first (PostgreSQL) and this one rolled back whole: answer as a retry.
            row, replayed = await self.db.run_write(self._topup_named, *args, time.time())
        return _account(row), replayed

    def _topup_named(
        self, conn: Connection, name: str, micro: int, note: str, key: str | None, now: float
    ) -> tuple[Any, bool]:
        account = self._account_named(conn, name)
        if key is not None:
            idem = (f"topup:{account.id}", key, hashlib.sha256(f"{micro}\x00{note}".encode()).hexdigest())
            earlier = self._idempotency_record(conn, idem[0], key, now)
            if earlier is not None:
                if earlier.body_hash != idem[2]:
                    raise key_reused("for another top-up of this account (a different amount or note)", "top-up")
                return conn.execute(sa.select(accounts).where(accounts.c.id == account.id)).one(), True
            # Done at once: a top-up has no run to wait for, and its record is all a retry needs.
            self._claim(conn, idem, key[:64], None, now, state="done")
        return self._topup(conn, account.id, micro, note, now), False

    async def set_group(self, name: str, group: str) -> Account:
        return await self.db.run_write(self._set_group, name, group)

    def _set_group(self, conn: Connection, name: str, group: str) -> Account:
        row = conn.execute(sa.update(accounts).where(accounts.c.name == name).values(group_name=group)
                           .returning(*accounts.c)).first()
        if row is None:
            raise NotFound(f"No account named '{name}'.", code="account_not_found")
        return _account(row)

    async def account(self, name: str) -> Account:
        return await self.db.run_read(self._account_named, name)

    def _account_named(self, conn: Connection, name: str) -> Account:
        row = conn.execute(sa.select(accounts).where(accounts.c.name == name)).first()
        if row is None:
            raise NotFound(f"No account named '{name}'.", code="account_not_found")
        return _account(row)

    async def account_by_id(self, account_id: int) -> Account:
        return await self.db.run_read(self._account_by_id, account_id)

    def _account_by_id(self, conn: Connection, account_id: int) -> Account:
        row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
        if row is None:
            raise NotFound(f"No account with id {account_id}.", code="account_not_found")
        return _account(row)

    async def accounts(self) -> list[Account]:
        return await self.db.run_read(self._accounts)

    def _accounts(self, conn: Connection) -> list[Account]:
        return [_account(r) for r in conn.execute(sa.select(accounts).order_by(accounts.c.name))]

    # --- keys -----------------------------------------------------------------------------------------------

    async def create_key(
        self,
        account_name: str,
        *,
        name: str = "",
        expires_at: float | None = None,
        allowed_models: Sequence[str] | None = None,
        spend_limit_micro: int | None = None,
        guard_policy: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for the account; the secret is returned here and never again (only its hash is kept)."""
        allowed = json.dumps(list(allowed_models)) if allowed_models is not None else None
        for _ in range(5):
            secret = new_key()
            values = dict(
                prefix=secret[:PREFIX_CHARS], key_hash=hash_key(secret), name=name, enabled=True,
                created_at=time.time(), expires_at=expires_at, allowed_models=allowed,
                spend_limit_micro=spend_limit_micro, spent_micro=0, held_micro=0, guard_policy=guard_policy,
            )
            try:
                return await self.db.run_write(self._create_key, account_name, values), secret
            except IntegrityError:
                continue  # a prefix collision: draw again
        raise RuntimeError("could not draw a unique key prefix")  # pragma: no cover

    def _create_key(self, conn: Connection, account_name: str, values: dict[str, Any]) -> ApiKey:
        account = self._account_named(conn, account_name)
        key_id = conn.execute(sa.insert(api_keys).values(account_id=account.id, **values)
                              .returning(api_keys.c.id)).scalar_one()
        return _api_key(conn.execute(self._keys_query().where(api_keys.c.id == key_id)).one())

    def _keys_query(self):
        return sa.select(*_KEY_COLUMNS).select_from(api_keys.join(accounts, api_keys.c.account_id == accounts.c.id))

    async def key(self, prefix: str) -> ApiKey:
        return await self.db.run_read(self._key_by_prefix, prefix)

    def _key_by_prefix(self, conn: Connection, prefix: str) -> ApiKey:
        """The key with exactly this prefix: never whichever key a shorter string happens to start, where a typo
        in a revocation would take down a key nobody meant."""
        if len(prefix) != PREFIX_CHARS:
            raise InvalidRequest(
                f"'{prefix}' is not a key's prefix: give its {PREFIX_CHARS} characters as `keys list` shows them "
                f"({KEY_PREFIX}xxxxxx).", param="prefix",
            )
        row = conn.execute(self._keys_query().where(api_keys.c.prefix == prefix)).first()
        if row is None:
            raise NotFound(f"No API key with prefix '{prefix}'.", code="key_not_found")
        return _api_key(row)

    async def keys(self, account_name: str | None = None) -> list[ApiKey]:
        return await self.db.run_read(self._keys, account_name)

    def _keys(self, conn: Connection, account_name: str | None) -> list[ApiKey]:
        query = self._keys_query().order_by(api_keys.c.id)
        if account_name is not None:
            self._account_named(conn, account_name)
            query = query.where(accounts.c.name == account_name)
        return [_api_key(r) for r in conn.execute(query)]

    async def key_by_secret(self, secret: str) -> tuple[ApiKey, Account] | None:
        return await self.db.run_read(self._key_by_hash, hash_key(secret))

    def _key_by_hash(self, conn: Connection, key_hash: str) -> tuple[ApiKey, Account] | None:
        row = conn.execute(_KEY_BY_HASH, {"key_hash": key_hash}).first()
        if row is None:
            return None
        account = Account(row.account_id, row.account_name, row.group_name, row.a_balance, row.a_held, row.a_created)
        return _api_key(row), account

    async def revoke_key(self, prefix: str) -> ApiKey:
        return await self.db.run_write(self._revoke_key, prefix, time.time())

    def _revoke_key(self, conn: Connection, prefix: str, now: float) -> ApiKey:
        key = self._key_by_prefix(conn, prefix)
        conn.execute(sa.update(api_keys).where(api_keys.c.id == key.id, api_keys.c.revoked_at.is_(None))
                     .values(enabled=False, revoked_at=now))
        return self._key_by_prefix(conn, key.prefix)

    # --- holds and settlement -------------------------------------------------------------------------------

    async def place_hold(
        self, meta: UsageMeta, *, key_id: int | None, idem: tuple[str, str, str] | None = None
    ) -> tuple[str, int, int]:
        """Hold ``meta.quote_micro`` on the account (and the key's own limit), open the usage row and claim the
        idempotency key, all or nothing. Returns (hold id, usage id, available balance after the hold)."""
        assert meta.account_id is not None
        hold_id = uuid.uuid4().hex
        try:
            # Not durable: after a power cut there is no request left for the hold to guard (see run_write).
            usage_id, available = await self.db.run_write(self._place_hold, meta, key_id, idem, hold_id, time.time(),
                                                           durable=False)
        except IntegrityError:
            if idem is not None:
                raise IdempotencyTaken() from None
            raise
        except ImagegateError:
            raise  # refused inside the transaction (no balance, say): nothing committed
        except BaseException as exc:
            # Whether it committed is unknown (its reply was lost, or the wait was cancelled while the write went
            # on): give the hold back if it did, so that its idempotency claim does not turn every retry away
            # until the hold expires. A write that never got its turn never ran: nothing to give back.
            if not no_turn_to_write(exc):
                self._give_back_unheard(hold_id)
            raise
        # Only once committed: a hold whose commit we never heard back about is nobody's, and expires.
        self._live_holds.add(hold_id)
        return hold_id, usage_id, available

    def _place_hold(
        self, conn: Connection, meta: UsageMeta, key_id: int | None, idem: tuple[str, str, str] | None, hold_id: str,
        now: float,
    ) -> tuple[int, int]:
        amount = meta.quote_micro
        if idem is not None:
            self._claim(conn, idem, meta.request_id, hold_id, now)
        row = _HOLD_ON_ACCOUNT(conn, {"account_id": meta.account_id, "amount": amount}).first()
        if row is None:
            raise InsufficientQuota(
                "You exceeded your current quota: this request can cost up to "
                f"${amount / 1e6:.6f} and the account's available balance does not cover it. "
                "Top up the account or ask for fewer or smaller images.",
                headers={"x-should-retry": "false"},
            )
        if key_id is not None and _HOLD_ON_KEY(conn, {"key_id": key_id, "amount": amount}).first() is None:
            raise InsufficientQuota(
                "You exceeded your current quota: this API key's own spend limit does not cover a request "
                f"that can cost up to ${amount / 1e6:.6f}.",
                headers={"x-should-retry": "false"},
            )
        usage_id = self._open_usage(conn, meta, now)
        _INSERT_HOLD(conn, dict(
            id=hold_id, account_id=meta.account_id, key_id=key_id, usage_id=usage_id, request_id=meta.request_id,
            amount_micro=amount, status="open", instance_id=self.instance_id, created_at=now,
            expires_at=now + self.hold_ttl,
        ))
        _INSERT_LEDGER(conn, dict(
            at=now, account_id=meta.account_id, key_id=key_id, kind="hold", amount_micro=amount,
            balance_after_micro=row.balance_micro, hold_id=hold_id, request_id=meta.request_id,
        ))
        return usage_id, row.balance_micro - row.held_micro

    def let_expire(self, hold_id: str | None) -> None:
        """Stop extending the hold: nothing in this process will settle it any more, so it expires after the hold
        lifetime and reconciliation releases it."""
        self._live_holds.discard(hold_id)  # type: ignore[arg-type]

    async def open_usage(self, meta: UsageMeta, *, idem: tuple[str, str, str] | None = None) -> int:
        """An unmetered request (static key) in the usage log, with its idempotency claim."""
        try:
            # Not durable, as a hold: after a power cut there is no request left for the row to follow.
            return await self.db.run_write(self._open_claimed_usage, meta, idem, time.time(), durable=False)
        except IntegrityError:
            if idem is not None:
                raise IdempotencyTaken() from None
            raise

    def _open_claimed_usage(self, conn: Connection, meta: UsageMeta, idem: tuple[str, str, str] | None,
                            now: float) -> int:
        if idem is not None:
            self._claim(conn, idem, meta.request_id, None, now)
        return self._open_usage(conn, meta, now)

    def _open_usage(self, conn: Connection, meta: UsageMeta, now: float, status: str = "running",
                    error_code: str | None = None) -> int:
        return _INSERT_USAGE(conn, dict(
            request_id=meta.request_id, created_at=now, account_id=meta.account_id, key_prefix=meta.key_prefix,
            metered=meta.metered, endpoint=meta.endpoint, model=meta.model, engine=meta.engine,
            operation=meta.operation, size=meta.size, quality=meta.quality, stream=meta.stream, n_asked=meta.n_asked,
            quote_micro=meta.quote_micro, status=status, error_code=_error_code(error_code),
            finished_at=None if status == "running" else now, latency_ms=None if status == "running" else 0,
        )).scalar_one()

    async def log_refused(self, meta: UsageMeta, error_code: str) -> None:
        await self.db.run_write(self._open_usage, meta, time.time(), "refused", error_code)

    async def settle(
        self,
        *,
        hold_id: str | None,
        usage_id: int,
        cost_micro: int,
        delivered: int,
        usage: Usage,
        latency_ms: int,
        status: str,
        error_code: str | None,
        idem: tuple[str, str, str] | None = None,
        idem_result: dict[str, Any] | None = None,
    ) -> tuple[int, int | None]:
        """Close the hold: charge ``cost_micro`` (never more than the hold) and release the rest; finish the usage
        row; store (or drop) the idempotent result. Returns (charged, available balance) - (cost, None) for
        unmetered requests. A hold that is no longer open charges nothing more: released by a reconciler, it
        returns (0, None); settled already (a retry of this settlement), what that settlement charged.
        ``idem``: the claim this request made, as (scope, key, its request id): only that claim is touched, never a
        newer request's under the same key."""
        charged, available = await self.db.run_write(
            self._settle, hold_id, usage_id, cost_micro, delivered, usage, latency_ms, status, _error_code(error_code),
            idem, idem_result, time.time(),
        )
        self._live_holds.discard(hold_id)  # type: ignore[arg-type]
        return charged, available

    def _settle(
        self, conn: Connection, hold_id: str | None, usage_id: int, cost_micro: int, delivered: int, usage: Usage,
        latency_ms: int, status: str, error_code: str | None, idem: tuple[str, str, str] | None,
        idem_result: dict[str, Any] | None, now: float,
    ) -> tuple[int, int | None]:
        charged, available, lost = cost_micro, None, False
        if hold_id is not None:
            hold = _SETTLE_HOLD(conn, {"hold_id": hold_id, "cost": cost_micro, "now": now}).first()
            if hold is None:
                # Closed already: by reconciliation (released, nothing more is charged), or by this very
                # settlement - a retry after a COMMIT that went through but whose answer was lost. Report
                # what the hold really charged, and leave the usage row and the idempotency record as that
                # first commit (or the release) wrote them.
                closed = conn.execute(
                    sa.select(holds.c.status, holds.c.charged_micro, accounts.c.balance_micro, accounts.c.held_micro)
                    .select_from(holds.join(accounts, holds.c.account_id == accounts.c.id))
                    .where(holds.c.id == hold_id)
                ).first()
                if closed is not None and closed.status == "settled":
                    return closed.charged_micro or 0, closed.balance_micro - closed.held_micro
                charged, status, error_code, lost = 0, "error", "hold_lost", True
            else:
                charged = hold.charged_micro
                available = self._close_hold(conn, hold, hold_id, charged, now)
        (_FINISH_RUNNING_USAGE if lost else _FINISH_USAGE)(conn, dict(
            usage_id=usage_id, finished_at=now, n_delivered=delivered, text_tokens=usage.text_tokens,
            image_tokens=usage.image_tokens, output_tokens=usage.output_tokens, cost_micro=charged,
            latency_ms=latency_ms, status=status, error_code=error_code,
        ))
        # A released hold's claim was dropped with it, and the key may be someone else's claim by now.
        if idem is not None and not lost:
            claim = {"idem_scope": idem[0], "idem_key": idem[1], "claim_request_id": idem[2]}
            if idem_result is None:
                _DROP_CLAIM(conn, claim)
            else:
                stored = json.dumps({**idem_result, "cost_micro": charged}, separators=(",", ":"))
                _STORE_RESULT(conn, {**claim, "result_json": stored})
        return charged, available

    def _close_hold(self, conn: Connection, hold: Any, hold_id: str, charged: int, now: float) -> int:
        amount = hold.amount_micro
        # Rows are locked in one order everywhere - the hold, its account, then its key - so that concurrent holds
        # and settlements on PostgreSQL queue instead of deadlocking.
        charge = {"charged": charged, "amount": amount}
        account = _CHARGE_ACCOUNT(conn, {**charge, "account_id": hold.account_id}).one()
        if hold.key_id is not None:
            _CHARGE_KEY(conn, {**charge, "key_id": hold.key_id, "now": now})
        common = dict(at=now, account_id=hold.account_id, key_id=hold.key_id, hold_id=hold_id,
                      request_id=hold.request_id, balance_after_micro=account.balance_micro)
        entries = [dict(kind="settle", amount_micro=charged, **common)]
        if amount > charged:
            entries.append(dict(kind="release", amount_micro=amount - charged, **common))
        _INSERT_LEDGER(conn, entries)  # both in one round trip (PostgreSQL: one executemany)
        return account.balance_micro - account.held_micro

    def _give_back_unheard(self, hold_id: str) -> None:
        async def give_back() -> None:
            # Again a moment later: on PostgreSQL the first transaction may still be committing on its own
            # connection when the first try looks for the hold.
            for pause in (0.0, 1.0, 5.0):
                await asyncio.sleep(pause)
                try:
                    if await self.release(hold_id, reason="not_started", status="error"):
                        log.warning("hold %s: its commit was never confirmed; given back", hold_id)
                        return
                except Exception:  # the database is away: the hold expires and reconciliation releases it
                    log.warning("hold %s: its commit was never confirmed, and giving it back failed", hold_id)
                    return

        task = asyncio.get_running_loop().create_task(give_back())
        self._unheard.add(task)
        task.add_done_callback(self._unheard.discard)

    async def settle_unheard(self) -> None:
        """At shutdown, before the database closes: the holds of unknown fate finish being given back."""
        await asyncio.gather(*self._unheard, return_exceptions=True)

    async def release(
        self, hold_id: str, *, reason: str, status: str = "crashed", silent_since: float | None = None
    ) -> bool:
        """Give a whole hold back (nothing ran, or its server is gone); ``reason`` becomes the usage row's error
        code. ``silent_since``: only if the hold's server has not heart-beaten since then. False if the hold was
        already closed (or its server spoke meanwhile)."""
        self._live_holds.discard(hold_id)  # whether or not this commits, this process no longer vouches for it
        return await self.db.run_write(self._release, hold_id, reason, status, time.time(), silent_since)

    def _release(
        self, conn: Connection, hold_id: str, reason: str, status: str, now: float, silent_since: float | None = None
    ) -> bool:
        condition = [holds.c.id == hold_id, _OPEN]
        if silent_since is not None:
            condition.append(~sa.exists().where(
                instances.c.id == holds.c.instance_id, instances.c.heartbeat_at >= silent_since))
        hold = conn.execute(
            sa.update(holds).where(*condition)
            .values(status="released", closed_at=now, charged_micro=0)
            .returning(holds.c.amount_micro, holds.c.account_id, holds.c.key_id, holds.c.request_id, holds.c.usage_id)
        ).first()
        if hold is None:
            return False
        account = conn.execute(
            sa.update(accounts).where(accounts.c.id == hold.account_id)
            .values(held_micro=accounts.c.held_micro - hold.amount_micro).returning(accounts.c.balance_micro)
        ).one()
        if hold.key_id is not None:
            conn.execute(sa.update(api_keys).where(api_keys.c.id == hold.key_id)
                         .values(held_micro=api_keys.c.held_micro - hold.amount_micro))
        conn.execute(sa.insert(ledger).values(
            at=now, account_id=hold.account_id, key_id=hold.key_id, kind="release", amount_micro=hold.amount_micro,
            balance_after_micro=account.balance_micro, hold_id=hold_id, request_id=hold.request_id, note=reason,
        ))
        if hold.usage_id is not None:
            conn.execute(sa.update(usage_log).where(usage_log.c.id == hold.usage_id, usage_log.c.status == "running")
                         .values(status=status, error_code=reason, finished_at=now, cost_micro=0))
        conn.execute(sa.delete(idempotency).where(idempotency.c.hold_id == hold_id))
        return True

    async def finish_unstarted(self, usage_id: int, idem: tuple[str, str, str] | None) -> None:
        """An unmetered request that never reached an engine: close its usage row and idempotency claim (``idem``
        as for :meth:`settle`)."""
        await self.db.run_write(self._finish_unstarted, usage_id, idem, time.time())

    def _finish_unstarted(self, conn: Connection, usage_id: int, idem: tuple[str, str, str] | None, now: float) -> None:
        conn.execute(sa.update(usage_log).where(usage_log.c.id == usage_id)
                     .values(status="error", error_code="not_started", finished_at=now))
        if idem is not None:
            _DROP_CLAIM(conn, {"idem_scope": idem[0], "idem_key": idem[1], "claim_request_id": idem[2]})

    # --- idempotency ----------------------------------------------------------------------------------------

    def _claim(self, conn: Connection, idem: tuple[str, str, str], request_id: str, hold_id: str | None,
               now: float, state: str = "running") -> None:
        scope, key, body_hash = idem
        _DROP_EXPIRED_CLAIM(conn, {"idem_scope": scope, "idem_key": key, "now": now})
        _INSERT_CLAIM(conn, dict(
            scope=scope, key=key, body_hash=body_hash, state=state, request_id=request_id, hold_id=hold_id,
            created_at=now, expires_at=now + self.idempotency_ttl,
        ))

    async def idempotency_record(self, scope: str, key: str) -> IdempotencyRecord | None:
        return await self.db.run_read(self._idempotency_record, scope, key, time.time())

    def _idempotency_record(self, conn: Connection, scope: str, key: str, now: float) -> IdempotencyRecord | None:
        row = conn.execute(_CLAIM_RECORD, {"idem_scope": scope, "idem_key": key, "now": now}).first()
        if row is None:
            return None
        result = json.loads(row.result) if row.result else None
        return IdempotencyRecord(row.scope, row.key, row.body_hash, row.state, row.request_id, result)

    # --- reports --------------------------------------------------------------------------------------------

    async def usage(self, account_name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return await self.db.run_read(self._usage, account_name, limit)

    def _usage(self, conn: Connection, account_name: str | None, limit: int) -> list[dict[str, Any]]:
        query = sa.select(usage_log, accounts.c.name.label("account")).select_from(
            usage_log.outerjoin(accounts, usage_log.c.account_id == accounts.c.id)
        ).order_by(usage_log.c.id.desc()).limit(limit)
        if account_name is not None:
            query = query.where(usage_log.c.account_id == self._account_named(conn, account_name).id)
        return [dict(r._mapping) for r in conn.execute(query)]

    async def ledger(self, account_name: str, limit: int = 100) -> list[dict[str, Any]]:
        return await self.db.run_read(self._ledger, account_name, limit)

    def _ledger(self, conn: Connection, account_name: str, limit: int) -> list[dict[str, Any]]:
        account = self._account_named(conn, account_name)
        query = sa.select(ledger).where(ledger.c.account_id == account.id).order_by(ledger.c.id.desc()).limit(limit)
        return [dict(r._mapping) for r in conn.execute(query)]

    async def totals(self, account_name: str) -> dict[str, int]:
        """Ledger sums by kind, the usage log's charged total and the open holds, for audits and tests."""
        return await self.db.run_read(self._totals, account_name)

    def _totals(self, conn: Connection, account_name: str) -> dict[str, int]:
        # One snapshot for every figure: read piecemeal, a settlement landing in between would make balance
        # and ledger disagree on paper. (SQLite's read transaction is a snapshot already.) Set before the first
        # statement: it applies to the transaction that statement begins.
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        account_id = self._account_named(conn, account_name).id
        row = conn.execute(
            sa.select(accounts.c.balance_micro, accounts.c.held_micro).where(accounts.c.id == account_id)
        ).one()
        by_kind = dict(conn.execute(
            sa.select(ledger.c.kind, sa.func.coalesce(sa.func.sum(ledger.c.amount_micro), 0))
            .where(ledger.c.account_id == account_id).group_by(ledger.c.kind)
        ).all())
        usage_cost = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(usage_log.c.cost_micro), 0))
            .where(usage_log.c.account_id == account_id, usage_log.c.metered.is_(True))
        ).scalar_one()
        open_holds = conn.execute(_ACCOUNT_OPEN_HOLDS, {"account_id": account_id}).one()
        return {
            "topup": int(by_kind.get("topup", 0)),
            "hold": int(by_kind.get("hold", 0)),
            "settle": int(by_kind.get("settle", 0)),
            "release": int(by_kind.get("release", 0)),
            "usage_cost": int(usage_cost),
            "open_holds": int(open_holds[0]),
            "open_held": int(open_holds[1]),
            "balance": int(row.balance_micro),
            "held": int(row.held_micro),
        }

    # --- instances and reconciliation -----------------------------------------------------------------------

    def _instance_row(self, now: float) -> dict[str, Any]:
        return dict(id=self.instance_id, hostname=self.hostname, pid=self.pid, pid_namespace=self.pid_namespace,
                    boot_id=self.boot_id, started_at=now, heartbeat_at=now)

    async def register(self) -> None:
        await self._beat(self._register)

    async def _beat(self, fn, *args) -> None:
        """A heartbeat's write, and what it says of the database: a beat that failed, or that took a good part of
        ``stale_after`` (the database stalled: others' beats were held up as long), starts this server's count
        towards judging others' silence again."""
        started = time.monotonic()
        try:
            await self.db.run_write(fn, *args)
        except BaseException:
            self._beating_since = None
            raise
        if self._beating_since is None or time.monotonic() - started > self.stale_after / 3:
            self._beating_since = time.time()

    def _register(self, conn: Connection) -> None:
        # Stamped inside the transaction, not before its wait for the database: a stamp taken before a stall
        # would land already old, and this live server would look silent.
        conn.execute(sa.insert(instances).values(self._instance_row(time.time())))

    async def unregister(self) -> None:
        await self.db.run_write(self._unregister)

    def _unregister(self, conn: Connection) -> None:
        conn.execute(sa.delete(instances).where(instances.c.id == self.instance_id))

    async def heartbeat(self) -> None:
        """This server is alive: so are the holds it still means to settle (a long generation must not lose its
        hold to the expiry). Its other open holds - a settlement given up on - are left to expire."""
        await self._beat(self._heartbeat, list(self._live_holds))

    def _heartbeat(self, conn: Connection, live: list[str]) -> None:
        now = time.time()  # inside the transaction, as _register's
        done = conn.execute(sa.update(instances).where(instances.c.id == self.instance_id).values(heartbeat_at=now))
        if done.rowcount == 0:
            conn.execute(sa.insert(instances).values(self._instance_row(now)))
        if live:
            conn.execute(sa.update(holds).where(
                holds.c.id.in_(live), holds.c.instance_id == self.instance_id, _OPEN
            ).values(expires_at=now + self.hold_ttl))

    def _same_pid_space(self, row: Any) -> bool:
        """Whether ``row.pid`` names a process we can look up: same host, PID namespace and boot. Replicas on one
        host in separate containers share a hostname (host networking) but not PIDs; unknown is never the same."""
        return (
            row.hostname == self.hostname and self.pid_namespace is not None and self.boot_id is not None
            and row.pid_namespace == self.pid_namespace and row.boot_id == self.boot_id
        )

    async def reconcile(self) -> int:
        """Release holds whose server is gone (its process is dead - judged only where its PID means the same
        process here - or no heartbeat for ``stale_after`` seconds) or whose time ran out; drop expired idempotency
        records. Returns holds released."""
        now = time.time()
        known, candidates = await self.db.run_read(self._reconcile_candidates)
        judge_silence = self._beating_since is not None and now - self._beating_since >= self.stale_after
        silent = {row.id for row in known
                  if judge_silence and row.id != self.instance_id and row.heartbeat_at < now - self.stale_after}
        dead = {
            row.id for row in known
            if row.id != self.instance_id and (
                (self._same_pid_space(row) and (row.pid == self.pid or not _pid_alive(row.pid))) or row.id in silent
            )
        }
        known_ids = {row.id for row in known}
        alive = known_ids - dead
        unknown_since = now - self.stale_after if judge_silence else None
        released = 0
        # One transaction a hold, as a settlement is: released together, one transaction would lock several
        # accounts' rows and could deadlock (PostgreSQL) with a settlement locking its hold, then its account.
        for hold in candidates:
            if hold.instance_id == self.instance_id and hold.expires_at >= now:
                continue
            if hold.instance_id in alive and hold.expires_at >= now:
                continue
            unknown = hold.instance_id not in known_ids
            if unknown and hold.expires_at >= now and (unknown_since is None or hold.created_at >= unknown_since):
                # Its server's row is gone (dropped as silent while it lived on: its next beat writes it again):
                # judged, as silence is, only after a whole stale_after, and only if still silent as it commits.
                continue
            reason = "hold_expired" if hold.instance_id in alive or hold.instance_id == self.instance_id \
                else "server_lost"
            # Judged by its silence alone: released only if it is still silent as the release commits.
            judged_by_silence = (hold.instance_id in silent or unknown) and hold.expires_at >= now
            silent_since = now - self.stale_after if judged_by_silence else None
            released += await self.release(hold.id, reason=reason, silent_since=silent_since)
        await self.db.run_write(self._forget, dead - silent, silent, now - self.stale_after, now)
        return released

    def _reconcile_candidates(self, conn: Connection) -> tuple[list[Any], list[Any]]:
        # Holds first: each one's server registered before placing it, so it is among the servers read next (on
        # PostgreSQL the two reads are separate snapshots).
        candidates = conn.execute(_OPEN_HOLDS).all()
        known = conn.execute(sa.select(instances)).all()
        return known, candidates

    def _forget(self, conn: Connection, dead: set[str], silent: set[str], silent_since: float, now: float) -> None:
        """Drop dead servers (those judged by their silence only if still silent), expired idempotency records,
        and what unmetered requests left unfinished."""
        if dead:
            conn.execute(sa.delete(instances).where(instances.c.id.in_(dead)))
        if silent:
            conn.execute(sa.delete(instances).where(instances.c.id.in_(silent),
                                                    instances.c.heartbeat_at < silent_since))
        conn.execute(sa.delete(idempotency).where(idempotency.c.expires_at < now, idempotency.c.state == "done"))
        # Unmetered requests have no hold; their claims and usage rows are given up after the hold lifetime.
        old = now - self.hold_ttl
        conn.execute(sa.delete(idempotency).where(
            idempotency.c.state == "running", idempotency.c.hold_id.is_(None), idempotency.c.created_at < old))
        conn.execute(sa.update(usage_log).where(
            usage_log.c.status == "running", usage_log.c.metered.is_(False), usage_log.c.created_at < old
        ).values(status="crashed", error_code="server_lost", finished_at=now))
