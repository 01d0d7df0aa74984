"""The `callback_events` table: every WeChat push the callback receiver stored, once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

Self-contained like 0001. Adds a table and touches neither `campaigns` nor `deliveries`, so
the analyst views of 0002 stay as they are (docs/database.md: a revision that alters the
tables a view reads must drop and recreate the views).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = sa.DateTime(timezone=True)
CALLBACK_KINDS = ("receipt", "interaction", "subscribe", "unsubscribe", "other")


def upgrade() -> None:
    op.create_table(
        "callback_events",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("openid", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("msg_type", sa.String(32), nullable=False),
        sa.Column("event", sa.String(64), nullable=True),
        sa.Column("interaction_kind", sa.String(32), nullable=True),
        sa.Column("msgid", sa.BigInteger(), nullable=True),
        sa.Column("receipt_status", sa.String(32), nullable=True),
        sa.Column("matched", sa.Boolean(), nullable=False),
        sa.Column("occurred_at", UTC, nullable=False),
        sa.Column("received_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_callback_events"),
        sa.UniqueConstraint("app_id", "dedupe_key", name="uq_callback_events_app_id_dedupe_key"),
        sa.CheckConstraint(
            f"kind IN ({', '.join(repr(k) for k in CALLBACK_KINDS)})",
            name="ck_callback_events_kind",
        ),
    )
    op.create_index("ix_callback_events_msgid", "callback_events", ["msgid"])
    op.create_index(
        "ix_callback_events_app_id_openid_occurred_at",
        "callback_events",
        ["app_id", "openid", "occurred_at"],
    )


def downgrade() -> None:
    op.drop_table("callback_events")
