"""The tables. Money columns are integer micro-USD; times are unix seconds (float), the same on every backend.

The migrations in ``migrations/versions`` create these; this module is what the code queries through and what
``alembic revision --autogenerate`` compares against.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Money = sa.BigInteger
Time = sa.Float(precision=53)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("group_name", sa.String(64), nullable=False, server_default="default"),
    # balance: what the account owns (top-ups minus settled charges); held: the sum of its open holds.
    sa.Column("balance_micro", Money, nullable=False, server_default="0"),
    sa.Column("held_micro", Money, nullable=False, server_default="0"),
    sa.Column("created_at", Time, nullable=False),
    sa.CheckConstraint("held_micro >= 0", name="held_not_negative"),
    sa.CheckConstraint("balance_micro >= held_micro", name="holds_covered"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.BigInteger, sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("prefix", sa.String(16), nullable=False, unique=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False, server_default=""),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("expires_at", Time, nullable=True),
    sa.Column("revoked_at", Time, nullable=True),
    sa.Column("last_used_at", Time, nullable=True),
    sa.Column("allowed_models", sa.Text, nullable=True),  # JSON array; NULL: every model
    sa.Column("guard_policy", sa.String(16), nullable=True),  # block | rewrite | off; NULL: the deployment's
    sa.Column("spend_limit_micro", Money, nullable=True),  # NULL: only the account balance limits it
    sa.Column("spent_micro", Money, nullable=False, server_default="0"),
    sa.Column("held_micro", Money, nullable=False, server_default="0"),
    sa.CheckConstraint("held_micro >= 0", name="held_not_negative"),
)

OPEN_HOLD = sa.text("status = 'open'")

holds = sa.Table(
    "holds",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.BigInteger, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("key_id", sa.BigInteger, sa.ForeignKey("api_keys.id"), nullable=True),
    sa.Column("usage_id", sa.BigInteger, nullable=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("amount_micro", Money, nullable=False),
    sa.Column("charged_micro", Money, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # open | settled | released
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("expires_at", Time, nullable=False),
    sa.Column("closed_at", Time, nullable=True),
    sa.CheckConstraint("amount_micro >= 0", name="amount_not_negative"),
    # Open holds only, by account: what reconciliation and the account summary look for. Closing a hold takes it
    # out, so the index stays as small as the holds in flight; the heartbeat's new expiry times never touch it.
    sa.Index("ix_holds_open_account", "account_id", sqlite_where=OPEN_HOLD, postgresql_where=OPEN_HOLD),
)

# Append-only. kind: topup (balance +), hold (held +), settle (balance -, closes part of a hold), release (closes
# the rest of a hold). amount is never negative; the kind gives the direction.
ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", Time, nullable=False),
    sa.Column("account_id", sa.BigInteger, sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("key_id", sa.BigInteger, nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("amount_micro", Money, nullable=False),
    sa.Column("balance_after_micro", Money, nullable=False),
    sa.Column("hold_id", sa.String(32), nullable=True),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("note", sa.String(200), nullable=False, server_default=""),
    sa.CheckConstraint("amount_micro >= 0", name="amount_not_negative"),
)

# One row per request that got past validation: never image bytes or base64.
usage_log = sa.Table(
    "usage_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", Time, nullable=False, index=True),
    sa.Column("finished_at", Time, nullable=True),
    sa.Column("account_id", sa.BigInteger, nullable=True, index=True),
    sa.Column("key_prefix", sa.String(32), nullable=False),
    sa.Column("metered", sa.Boolean, nullable=False),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("model", sa.String(100), nullable=False),
    sa.Column("engine", sa.String(64), nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("size", sa.String(16), nullable=False),
    sa.Column("quality", sa.String(16), nullable=False),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("n_asked", sa.Integer, nullable=False),
    sa.Column("n_delivered", sa.Integer, nullable=False, server_default="0"),
    sa.Column("text_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("image_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("quote_micro", Money, nullable=False, server_default="0"),
    # What the account paid (metered), or what it would have cost at list price (static keys).
    sa.Column("cost_micro", Money, nullable=False, server_default="0"),
    sa.Column("latency_ms", sa.Integer, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # running | ok | error | refused | crashed
    sa.Column("error_code", sa.String(64), nullable=True),
)

idempotency = sa.Table(
    "idempotency",
    metadata,
    sa.Column("scope", sa.String(80), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # running | done
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("hold_id", sa.String(32), nullable=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("expires_at", Time, nullable=False, index=True),
    sa.Column("result", sa.Text, nullable=True),  # JSON: stored image names, usage, cost; never image bytes
)

# Running servers, so holds left by one that died can be told from holds of one that is still working.
instances = sa.Table(
    "instances",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    # The PID is only meaningful in its PID namespace and boot: two containers on one host can share a hostname
    # and both be PID 1. NULL: could not be read (no /proc); then only the heartbeat tells if it is alive.
    sa.Column("pid_namespace", sa.String(64), nullable=True),
    sa.Column("boot_id", sa.String(64), nullable=True),
    sa.Column("started_at", Time, nullable=False),
    sa.Column("heartbeat_at", Time, nullable=False),
)

# Channels added through the admin API (those in the config file are not stored). ``config`` is the channel's
# settings as JSON, in the config file's field names; every server reloads the set when it changes.
channels = sa.Table(
    "channels",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
)
