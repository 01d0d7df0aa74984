"""Campaign shards: one campaign split across several flow runs and workers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28

- `campaign_shards`: one row per (campaign, shard) of a campaign run with `shards` > 1: the
  flow run that owns the shard (only it may send its part: a second run of the same shard
  is refused), the host:pid it runs in, its heartbeat (the parent run declares a silent
  shard crashed and starts it again), and how its last run ended (status, reason, sent,
  HTTP attempts, errcodes) for the parent's one report.

A new table only; the ledger (`deliveries`) stays one per campaign.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SHARD_STATUSES = ("starting", "running", "completed", "paused", "failed", "cancelled", "crashed")


def upgrade() -> None:
    op.create_table(
        "campaign_shards",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("shards", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", UTC, nullable=True),
        sa.Column("started_at", UTC, nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("http_attempts", sa.Integer(), nullable=False),
        sa.Column("errcodes", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_shards_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "shard", name=op.f("pk_campaign_shards")),
        sa.CheckConstraint(
            "status IN (" + ", ".join(repr(s) for s in SHARD_STATUSES) + ")",
            name=op.f("ck_campaign_shards_status"),
        ),
    )


def downgrade() -> None:
    op.drop_table("campaign_shards")
