"""`campaigns.ledger_pruned_at`: when `wxpush db prune` began deleting the campaign's ledger.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

A campaign whose `deliveries` rows are gone must never be resumed: the ledger is what stops
a resume from messaging the same followers again. `db.campaigns.create_or_resume` refuses a
campaign with this column set; `db.retention` sets it (committed) before its first delete.
Added in place on both databases (never a batch of `campaigns` on SQLite: 0004's note). The
downgrade refuses while any campaign is marked (0004 could not keep the mark).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("ledger_pruned_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    # 0004 has nowhere to keep the mark, and a wxpush at 0004 would resume such a campaign
    # with an empty ledger: every recipient messaged again. Refuse rather than lose it.
    marked = op.get_bind().execute(
        sa.text("SELECT count(*) FROM campaigns WHERE ledger_pruned_at IS NOT NULL")
    )
    if marked.scalar_one():
        raise RuntimeError(
            "campaigns whose ledger `wxpush db prune` deleted cannot be marked below 0005, "
            "and an older wxpush would resume them and message everyone again: delete those "
            "campaign rows (ledger_pruned_at IS NOT NULL) first if you must go back"
        )
    op.execute("ALTER TABLE campaigns DROP COLUMN ledger_pruned_at")  # SQLite 3.35+: in place
