"""Account-wide limits and the receivers' shared replay memory.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

- `account_rate`: one row per WeChat account (AppID) holding the GCRA schedule of its send
  rate (`tat`, the theoretical arrival time of its next message, in unix seconds). Every
  campaign, shard and worker of the account reserves its slots from this row.
- `account_quota`: per account and Beijing day, the template messages reserved against the
  daily quota (WeChat's 45009). A new day is a new row; old rows are history.
- `callback_nonces`: the signed pushes (a digest of app, timestamp and nonce) any receiver
  process has accepted, so a replay to another process is refused too. Rows older than
  the receiver's timestamp window are deleted by the receivers themselves.

New tables only: `campaigns`, `deliveries` and the analyst views are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "account_rate",
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("app_id", name=op.f("pk_account_rate")),
    )
    op.create_table(
        "account_quota",
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("app_id", "day", name=op.f("pk_account_quota")),
    )
    op.create_table(
        "callback_nonces",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("seen_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_callback_nonces")),
    )
    op.create_index(op.f("ix_callback_nonces_seen_at"), "callback_nonces", ["seen_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_callback_nonces_seen_at"), table_name="callback_nonces")
    op.drop_table("callback_nonces")
    op.drop_table("account_quota")
    op.drop_table("account_rate")
