"""The `freq_limited` receipt status: `campaign_stats.freq_limited`.

Revision ID: 0010
Revises: 0008
Create Date: 2026-11-28

WeChat's template receipt (TEMPLATESENDJOBFINISH) can say `failed:freq limit`: WeChat held
the message back for sending too often. The receiver now records it as `freq_limited`
(before, as `system_failed`), never as `user_block`: a frequency limit says nothing about
the user. `deliveries.receipt_status` is free text, so only the view changes:
`campaign_stats` gains `freq_limited` after `blocked`, and the receipt columns add up to
`sent` again. `delivery_rate` counts it as a receipt received, not delivered.

Self-contained like 0004: the view SQL is written here, frozen, for both directions (0008's
view on the way down).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# campaign_stats' counts over the campaign's ledger rows `d`, in the order the view shows
# them (0008's list; this revision adds `freq_limited` after `blocked`). A campaign without
# rows has one NULL-extended `d` from the LEFT JOIN: every CASE gives 0, never NULL.
COUNTS_0008: tuple[tuple[str, str], ...] = (
    ("skipped", "d.status = 'skipped'"),
    ("skipped_outside_window", "d.status = 'skipped' AND d.reason = 'outside_window'"),
    ("skipped_unsubscribed", "d.status = 'skipped' AND d.reason = 'unsubscribed'"),
    ("skipped_nothing_to_send", "d.status = 'skipped' AND d.reason = 'nothing_to_send'"),
    ("skipped_frequency_cap", "d.status = 'skipped' AND d.reason = 'frequency_cap'"),
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
RECEIPTS_0008 = ("delivered", "blocked", "system_failed", "receipts_pending")
_AFTER_BLOCKED = [name for name, _ in COUNTS_0008].index("blocked") + 1
COUNTS: tuple[tuple[str, str], ...] = (
    *COUNTS_0008[:_AFTER_BLOCKED],
    ("freq_limited", "d.status = 'sent' AND d.receipt_status = 'freq_limited'"),
    *COUNTS_0008[_AFTER_BLOCKED:],
)
RECEIPTS = ("delivered", "blocked", "freq_limited", "system_failed", "receipts_pending")
_CAMPAIGN_COLUMNS = ("name", "app", "kind", "template_id", "status", "created_at")

# Where the SQL must differ (as in 0002, 0004 and 0008).
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


def campaign_stats_sql(
    dialect: str, counts: Sequence[tuple[str, str]], receipts: Sequence[str]
) -> str:
    """0008's view over `counts`, the `receipts` columns last before the rates: one row per
    campaign, grouped by every campaign column so that a filter on any of them is applied
    before the ledger is read."""
    fragments = _DIALECT[dialect]
    sums = ",\n    ".join(
        f"sum(CASE WHEN {condition} THEN 1 ELSE 0 END) AS {name}" for name, condition in counts
    )
    grouped = ", ".join(f"c.{column}" for column in _CAMPAIGN_COLUMNS)
    duration = fragments["seconds"].format(start="min(d.sent_at)", end="max(d.sent_at)")
    outcome = [f"g.{name}" for name, _ in counts if name not in receipts]
    ratio = fragments["ratio"].format
    columns = [
        "g.campaign_id",
        *(f"g.{column}" for column in _CAMPAIGN_COLUMNS),
        "g.audience",
        "g.audience - g.skipped AS eligible",
        *outcome,
        *(f"g.{name}" for name in receipts),
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


def _recreate_stats(counts: Sequence[tuple[str, str]], receipts: Sequence[str]) -> None:
    op.execute("DROP VIEW IF EXISTS campaign_stats")
    op.execute(campaign_stats_sql(op.get_context().dialect.name, counts, receipts))


def upgrade() -> None:
    _recreate_stats(COUNTS, RECEIPTS)


def downgrade() -> None:
    _recreate_stats(COUNTS_0008, RECEIPTS_0008)
    # What 0008's wxpush recorded for `failed:freq limit`, so its view counts these rows.
    for table in ("deliveries", "callback_events"):
        op.execute(
            f"UPDATE {table} SET receipt_status = 'system_failed' "
            "WHERE receipt_status = 'freq_limited'"
        )
