"""Initial schema: recipients, interactions, campaigns, deliveries.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Self-contained on purpose (no import from db.models, which will move on): the same
statements create the same schema on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = sa.DateTime(timezone=True)

CAMPAIGN_STATUSES = (
    "created",
    "running",
    "completed",
    "completed_with_failures",
    "paused",
    "failed",
    "cancelled",
)
DELIVERY_STATUSES = ("pending", "sent", "failed", "skipped", "invalid")


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "recipients",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("openid", sa.String(64), nullable=False),
        sa.Column("subscribed", sa.Boolean(), nullable=False),
        sa.Column("blocked", sa.String(32), nullable=True),
        sa.Column("last_interaction_at", UTC, nullable=True),
        sa.Column("nickname", sa.String(200), nullable=True),
        sa.Column("city", sa.String(100), nullable=True),
        sa.Column("attributes", JSON, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_recipients"),
        sa.UniqueConstraint("app_id", "openid", name="uq_recipients_app_id_openid"),
    )
    op.create_index(
        "ix_recipients_app_id_last_interaction_at",
        "recipients",
        ["app_id", "last_interaction_at"],
    )

    op.create_table(
        "interactions",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("openid", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("occurred_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_interactions"),
    )
    op.create_index(
        "ix_interactions_app_id_openid_occurred_at",
        "interactions",
        ["app_id", "openid", "occurred_at"],
    )

    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("app", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("template_id", sa.String(128), nullable=True),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("audience_sql", sa.Text(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("audience_count", sa.Integer(), nullable=False),
        sa.Column("eligible_count", sa.Integer(), nullable=False),
        sa.Column("sent_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("skipped_count", sa.Integer(), nullable=False),
        sa.Column("invalid_count", sa.Integer(), nullable=False),
        sa.Column("pending_count", sa.Integer(), nullable=False),
        sa.Column("run_count", sa.Integer(), nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("deployment_id", sa.String(64), nullable=True),
        sa.Column("deployment_name", sa.String(200), nullable=True),
        sa.Column("started_by", sa.String(200), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("started_at", UTC, nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
        sa.CheckConstraint(_in_list("status", CAMPAIGN_STATUSES), name="ck_campaigns_status"),
    )
    op.create_index("ix_campaigns_name", "campaigns", ["name"])

    op.create_table(
        "deliveries",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("openid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("errcode", sa.Integer(), nullable=True),
        sa.Column("errmsg", sa.Text(), nullable=True),
        sa.Column("error_class", sa.String(16), nullable=True),
        sa.Column("msgid", sa.BigInteger(), nullable=True),
        sa.Column("client_msg_id", sa.String(128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_attempt_at", UTC, nullable=True),
        sa.Column("last_attempt_at", UTC, nullable=True),
        sa.Column("sent_at", UTC, nullable=True),
        sa.Column("receipt_status", sa.String(32), nullable=True),
        sa.Column("receipt_at", UTC, nullable=True),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("campaign_id", "openid", name="uq_deliveries_campaign_id_openid"),
        sa.CheckConstraint(_in_list("status", DELIVERY_STATUSES), name="ck_deliveries_status"),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name="fk_deliveries_campaign_id_campaigns",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_deliveries_campaign_id_status", "deliveries", ["campaign_id", "status"])
    op.create_index("ix_deliveries_msgid", "deliveries", ["msgid"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("campaigns")
    op.drop_table("interactions")
    op.drop_table("recipients")
