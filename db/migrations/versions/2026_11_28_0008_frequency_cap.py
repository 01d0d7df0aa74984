"""The frequency cap: `campaigns.app_id`, an index on `deliveries (openid, last_attempt_at)`,
and `campaign_stats.skipped_frequency_cap`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

A follower capped at N messages per H hours is asked about per audience batch: "how many
messages did the account's other campaigns send these openids since now − H?"
(db/audience.py, `capped_openids`).

- `campaigns.app_id`: the account's AppID when the campaign last started. `campaigns.app` is
  the block's name, and two block names can point at one account: the cap counts per
  account. Campaigns started before this revision have none (NULL); the cap matches them by
  their block name instead.
- `ix_deliveries_openid_last_attempt_at`: the batch's question reads the ledger by openid and
  time, never by campaign. Built with the table locked for writes (a plain CREATE INDEX):
  upgrade a large ledger while no campaign sends.
- `campaign_stats` gains `skipped_frequency_cap` after `skipped_nothing_to_send`.

Self-contained like 0004: the view SQL is written here, frozen, for both directions (0004's
view on the way down). Columns are added and dropped in place on both databases (never a
batch of `campaigns` on SQLite: 0004's note).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# campaign_stats' counts over the campaign's ledger rows `d`, in the order the view shows
# them (0004's list; this revision adds `skipped_frequency_cap` after the other skips). A
# campaign without rows has one NULL-extended `d` from the LEFT JOIN: every CASE gives 0.
COUNTS_0004: tuple[tuple[str, str], ...] = (
    ("skipped", "d.status = 'skipped'"),
    ("skipped_outside_window", "d.status = 'skipped' AND d.reason = 'outside_window'"),
    ("skipped_unsubscribed", "d.status = 'skipped' AND d.reason = 'unsubscribed'"),
    ("skipped_nothing_to_send", "d.status = 'skipped' AND d.reason = 'nothing_to_send'"),
    ("sent", "d.status = 'sent'"),
    ("failed", "d.status = 'failed'"),
    ("failed_retry", "d.status = 'failed' AND d.error_class = 'RETRY'"),
    ("failed_refresh", "d.status = 'failed' AND d.error_class = 'REFRESH'"),
    ("failed_recipient", "d.status = 'failed' AND d.error_class = 'RECIPIENT'"),
    ("failed_request", "d.status = 'failed' AND d.error_class = 'REQUEST'"),
    ("failed_quota", "d.status = 'failed' AND d.error_class = 'QUOTA'"),
    ("failed_config", "d.status = 'failed' AND d.error_class = 'CONFIG'"),
    ("invalid", "d.status = 'invalid'"),
    ("pending", "d.status = 'pending'"),
    ("unknown", "d.status = 'unknown'"),
    ("delivered", "d.status = 'sent' AND d.receipt_status = 'delivered'"),
    ("blocked", "d.status = 'sent' AND d.receipt_status = 'user_block'"),
    ("system_failed", "d.status = 'sent' AND d.receipt_status = 'system_failed'"),
    ("receipts_pending", "d.status = 'sent' AND d.receipt_status IS NULL"),
)
_AFTER_SKIPS = [name for name, _ in COUNTS_0004].index("skipped_nothing_to_send") + 1
COUNTS: tuple[tuple[str, str], ...] = (
    *COUNTS_0004[:_AFTER_SKIPS],
    ("skipped_frequency_cap", "d.status = 'skipped' AND d.reason = 'frequency_cap'"),
    *COUNTS_0004[_AFTER_SKIPS:],
)
_RECEIPTS = ("delivered", "blocked", "system_failed", "receipts_pending")
_CAMPAIGN_COLUMNS = ("name", "app", "kind", "template_id", "status", "created_at")
INDEX = "ix_deliveries_openid_last_attempt_at"

# Where the SQL must differ (as in 0002 and 0004).
_DIALECT: dict[str, dict[str, str]] = {
    "sqlite": {
        "seconds": "round((julianday({end}) - julianday({start})) * 86400.0, 3)",
        "ratio": "round(CAST({num} AS REAL) / NULLIF({den}, 0), 4)",
    },
    "postgresql": {
        "seconds": (
            "CAST(round(CAST(extract(epoch FROM {end} - {start}) AS numeric), 3)"
            " AS double precision)"
        ),
        "ratio": (
            "CAST(round(CAST({num} AS numeric) / NULLIF(CAST({den} AS numeric), 0), 4)"
            " AS double precision)"
        ),
    },
}


def campaign_stats_sql(dialect: str, counts: Sequence[tuple[str, str]]) -> str:
    """0004's view over `counts`: one row per campaign, grouped by every campaign column so
    that a filter on any of them is applied before the ledger is read."""
    fragments = _DIALECT[dialect]
    sums = ",\n    ".join(
        f"sum(CASE WHEN {condition} THEN 1 ELSE 0 END) AS {name}" for name, condition in counts
    )
    grouped = ", ".join(f"c.{column}" for column in _CAMPAIGN_COLUMNS)
    duration = fragments["seconds"].format(start="min(d.sent_at)", end="max(d.sent_at)")
    outcome = [f"g.{name}" for name, _ in counts if name not in _RECEIPTS]
    receipts = [f"g.{name}" for name in _RECEIPTS]
    ratio = fragments["ratio"].format
    columns = [
        "g.campaign_id",
        *(f"g.{column}" for column in _CAMPAIGN_COLUMNS),
        "g.audience",
        "g.audience - g.skipped AS eligible",
        *outcome,
        *receipts,
        f"{ratio(num='g.sent', den='g.sent + g.failed + g.invalid')} AS success_rate",
        f"{ratio(num='g.delivered', den='g.sent - g.receipts_pending')} AS delivery_rate",
        "g.first_sent_at",
        "g.last_sent_at",
        "g.duration_seconds",
        f"{ratio(num='g.sent', den='g.duration_seconds')} AS messages_per_second",
    ]
    select_list = ",\n  ".join(columns)
    return f"""CREATE VIEW campaign_stats AS
SELECT
  {select_list}
FROM (
  SELECT
    c.id AS campaign_id,
    {grouped},
    count(d.id) AS audience,
    {sums},
    min(d.sent_at) AS first_sent_at,
    max(d.sent_at) AS last_sent_at,
    {duration} AS duration_seconds
  FROM campaigns c
  LEFT JOIN deliveries d ON d.campaign_id = c.id
  GROUP BY c.id, {grouped}
) g"""


def _recreate_stats(counts: Sequence[tuple[str, str]]) -> None:
    op.execute("DROP VIEW IF EXISTS campaign_stats")
    op.execute(campaign_stats_sql(op.get_context().dialect.name, counts))


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("app_id", sa.String(64), nullable=True))
    op.create_index(op.f(INDEX), "deliveries", ["openid", "last_attempt_at"])
    _recreate_stats(COUNTS)


def downgrade() -> None:
    _recreate_stats(COUNTS_0004)
    op.drop_index(op.f(INDEX), table_name="deliveries")
    # `frequency_cap` skips stay as they are: 0007 knows no such reason, but a skipped row
    # is final whatever its reason, so an older wxpush never sends it.
    op.execute("ALTER TABLE campaigns DROP COLUMN app_id")  # SQLite 3.35+: in place
