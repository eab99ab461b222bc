"""Holds: one partial index over the open holds, by account, instead of two over every hold.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OPEN = sa.text("status = 'open'")


def upgrade() -> None:
    op.drop_index("ix_holds_status_expires", table_name="holds")
    op.drop_index("ix_holds_instance_status", table_name="holds")
    op.create_index("ix_holds_open_account", "holds", ["account_id"], sqlite_where=_OPEN, postgresql_where=_OPEN)


def downgrade() -> None:
    op.drop_index("ix_holds_open_account", table_name="holds")
    op.create_index("ix_holds_status_expires", "holds", ["status", "expires_at"])
    op.create_index("ix_holds_instance_status", "holds", ["instance_id", "status"])
