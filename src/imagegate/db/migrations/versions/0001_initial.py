"""Accounts, API keys, holds, the ledger, the usage log, idempotency records and running instances.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("group_name", sa.String(64), nullable=False, server_default="default"),
        sa.Column("balance_micro", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("held_micro", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", Time, nullable=False),
        sa.CheckConstraint("held_micro >= 0", name=op.f("ck_accounts_held_not_negative")),
        sa.CheckConstraint("balance_micro >= held_micro", name=op.f("ck_accounts_holds_covered")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.BigInteger, nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False, server_default=""),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time, nullable=True),
        sa.Column("revoked_at", Time, nullable=True),
        sa.Column("last_used_at", Time, nullable=True),
        sa.Column("allowed_models", sa.Text, nullable=True),
        sa.Column("guard_policy", sa.String(16), nullable=True),
        sa.Column("spend_limit_micro", sa.BigInteger, nullable=True),
        sa.Column("spent_micro", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("held_micro", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint("held_micro >= 0", name=op.f("ck_api_keys_held_not_negative")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_api_keys_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index("ix_api_keys_account_id", "api_keys", ["account_id"])
    op.create_table(
        "holds",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.BigInteger, nullable=False),
        sa.Column("key_id", sa.BigInteger, nullable=True),
        sa.Column("usage_id", sa.BigInteger, nullable=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("amount_micro", sa.BigInteger, nullable=False),
        sa.Column("charged_micro", sa.BigInteger, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time, nullable=False),
        sa.Column("closed_at", Time, nullable=True),
        sa.CheckConstraint("amount_micro >= 0", name=op.f("ck_holds_amount_not_negative")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_holds_account_id_accounts")),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name=op.f("fk_holds_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    op.create_index("ix_holds_status_expires", "holds", ["status", "expires_at"])
    op.create_index("ix_holds_instance_status", "holds", ["instance_id", "status"])
    op.create_table(
        "ledger",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", Time, nullable=False),
        sa.Column("account_id", sa.BigInteger, nullable=False),
        sa.Column("key_id", sa.BigInteger, nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_micro", sa.BigInteger, nullable=False),
        sa.Column("balance_after_micro", sa.BigInteger, nullable=False),
        sa.Column("hold_id", sa.String(32), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("note", sa.String(200), nullable=False, server_default=""),
        sa.CheckConstraint("amount_micro >= 0", name=op.f("ck_ledger_amount_not_negative")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_ledger_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger")),
    )
    op.create_index("ix_ledger_account_id", "ledger", ["account_id"])
    op.create_table(
        "usage_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("finished_at", Time, nullable=True),
        sa.Column("account_id", sa.BigInteger, nullable=True),
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
        sa.Column("quote_micro", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cost_micro", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_log")),
    )
    op.create_index("ix_usage_log_request_id", "usage_log", ["request_id"])
    op.create_index("ix_usage_log_created_at", "usage_log", ["created_at"])
    op.create_index("ix_usage_log_account_id", "usage_log", ["account_id"])
    op.create_table(
        "idempotency",
        sa.Column("scope", sa.String(80), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("hold_id", sa.String(32), nullable=True),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time, nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_idempotency")),
    )
    op.create_index("ix_idempotency_expires_at", "idempotency", ["expires_at"])
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("pid_namespace", sa.String(64), nullable=True),
        sa.Column("boot_id", sa.String(64), nullable=True),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("heartbeat_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
    )


def downgrade() -> None:
    for table in ("instances", "idempotency", "usage_log", "ledger", "holds", "api_keys", "accounts"):
        op.drop_table(table)
