"""The `unknown` delivery status: `deliveries.status` allows it, `campaigns.unknown_count`
stores it, `campaign_stats` counts it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

A row is `unknown` when it was sent, its answer was never recorded (the process died), and a
re-send would no longer be covered by WeChat's client_msg_id dedupe (db/ledger.py). The
ledger records an attempt before the send in the columns it already has (`pending`, reason
`in_flight`, `client_msg_id`, `last_attempt_at`), so no delivery column is added.

Self-contained like 0001: the view SQL is written here, frozen, for both directions (0002's
`campaign_stats` on the way down). The views read `deliveries`, which SQLite rebuilds to
change its CHECK constraint, so both views are dropped first and created again at the end
(docs/database.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES_0001 = ("pending", "sent", "failed", "skipped", "invalid")
STATUSES = (*STATUSES_0001, "unknown")

# campaign_stats' counts over the campaign's ledger rows `d`, in the order the view shows
# them (0002's list; this revision adds `unknown` after `pending`). A campaign without rows
# has one NULL-extended `d` from the LEFT JOIN: every CASE gives 0, never NULL.
COUNTS_0002: tuple[tuple[str, str], ...] = (
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
    ("delivered", "d.status = 'sent' AND d.receipt_status = 'delivered'"),
    ("blocked", "d.status = 'sent' AND d.receipt_status = 'user_block'"),
    ("system_failed", "d.status = 'sent' AND d.receipt_status = 'system_failed'"),
    ("receipts_pending", "d.status = 'sent' AND d.receipt_status IS NULL"),
)
_AT_PENDING = [name for name, _ in COUNTS_0002].index("pending") + 1
COUNTS: tuple[tuple[str, str], ...] = (
    *COUNTS_0002[:_AT_PENDING],
    ("unknown", "d.status = 'unknown'"),
    *COUNTS_0002[_AT_PENDING:],
)
_RECEIPTS = ("delivered", "blocked", "system_failed", "receipts_pending")
_CAMPAIGN_COLUMNS = ("name", "app", "kind", "template_id", "status", "created_at")

# Where the SQL must differ (as in 0002): SQLite's time differences go through julianday(),
# PostgreSQL subtracts timestamptz values; rates are 4-decimal floating point on both.
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
    """One row per campaign, grouped by every campaign column so that a filter on any of
    them is applied before the ledger is read (0002). `success_rate` leaves `unknown` rows
    out, as it does `pending` ones: neither has an answer."""
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


# 0002's view, unchanged (an `unknown` row is not a failure: it is not listed here).
DELIVERY_FAILURES_SQL = """CREATE VIEW delivery_failures AS
SELECT
  d.campaign_id,
  c.name AS campaign_name,
  d.openid,
  d.errcode,
  d.errmsg,
  d.error_class,
  CASE
    WHEN w.errcode IS NOT NULL AND d.error_class = w.error_class
         AND (o.errcode IS NULL OR d.error_class <> o.error_class)
      THEN w.meaning
    ELSE o.meaning
  END AS meaning,
  d.reason,
  d.attempts,
  d.first_attempt_at,
  d.last_attempt_at
FROM deliveries d
JOIN campaigns c ON c.id = d.campaign_id
LEFT JOIN errcodes o ON o.account_kind = 'official_account' AND o.errcode = d.errcode
LEFT JOIN errcodes w ON w.account_kind = 'wecom' AND w.errcode = d.errcode
WHERE d.status = 'failed'"""


def _status_check(statuses: Sequence[str]) -> str:
    return f"status IN ({', '.join(repr(s) for s in statuses)})"


def _set_statuses(statuses: Sequence[str]) -> None:
    """Replace the CHECK constraint on `deliveries.status` (SQLite rebuilds the table)."""
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("ck_deliveries_status", type_="check")
        batch.create_check_constraint("ck_deliveries_status", _status_check(statuses))


def _drop_views() -> None:
    op.execute("DROP VIEW IF EXISTS delivery_failures")
    op.execute("DROP VIEW IF EXISTS campaign_stats")


def _create_views(counts: Sequence[tuple[str, str]]) -> None:
    op.execute(campaign_stats_sql(op.get_context().dialect.name, counts))
    op.execute(DELIVERY_FAILURES_SQL)


def upgrade() -> None:
    _drop_views()
    _set_statuses(STATUSES)
    # Never a batch (copy-and-move) of `campaigns` on SQLite: dropping the old table would
    # cascade to every delivery. Both databases add and drop a column in place.
    op.add_column(
        "campaigns", sa.Column("unknown_count", sa.Integer(), nullable=False, server_default="0")
    )
    _create_views(COUNTS)


def downgrade() -> None:
    _drop_views()
    # An older wxpush does not know `unknown`. `failed` without a class is final to it and
    # never re-sent, even by retry_failed: a row in doubt must not go out blindly.
    op.execute(
        "UPDATE deliveries SET status = 'failed', error_class = NULL WHERE status = 'unknown'"
    )
    _set_statuses(STATUSES_0001)
    op.execute("ALTER TABLE campaigns DROP COLUMN unknown_count")  # SQLite 3.35+: in place
    _create_views(COUNTS_0002)
