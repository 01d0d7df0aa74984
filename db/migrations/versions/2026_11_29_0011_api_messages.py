"""The push API's messages: table `api_messages`, in `delivery_failures`, view `api_message_stats`.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

- `api_messages`: one row per message the signed push API accepted, committed before it is
  sent (db/api_messages.py). (caller, idempotency_key) is unique, so a repeated request finds
  the first one's row; rows without a key never collide (NULLs are distinct).
- `delivery_failures` gains the API's `failed` rows under `campaign_id` NULL and
  `campaign_name` 'api', with the same columns, so analysts find every failure in one place.
- `api_message_stats`: per app and Beijing day (the day WeChat counts quotas in), the API's
  messages by status and receipt.

Self-contained like 0004: the view SQL is written here, frozen, for both directions (0004's
`delivery_failures` on the way down). `campaign_stats` is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
STATUSES = ("queued", "sent", "failed", "unknown")

# 0004's view, unchanged since (0002's text).
DELIVERY_FAILURES_0004 = """CREATE VIEW delivery_failures AS
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

# The same columns for the API's failed rows: no campaign, and no error class stored (the API
# sends for Official Accounts), so the meaning is the Official Account's.
DELIVERY_FAILURES = (
    DELIVERY_FAILURES_0004
    + """
UNION ALL
SELECT
  CAST(NULL AS VARCHAR(64)) AS campaign_id,
  'api' AS campaign_name,
  a.openid,
  a.errcode,
  a.errmsg,
  CAST(NULL AS VARCHAR(16)) AS error_class,
  o.meaning,
  a.reason,
  a.attempts,
  a.first_attempt_at,
  a.last_attempt_at
FROM api_messages a
LEFT JOIN errcodes o ON o.account_kind = 'official_account' AND o.errcode = a.errcode
WHERE a.status = 'failed'"""
)

# The Beijing calendar day of a stored UTC timestamp (Asia/Shanghai is UTC+8 all year):
# SQLite's text 'YYYY-MM-DD', PostgreSQL's date.
_BEIJING_DAY = {
    "sqlite": "date({column}, '+8 hours')",
    "postgresql": "CAST(({column} AT TIME ZONE 'Asia/Shanghai') AS date)",
}

# api_message_stats' counts, in the order the view shows them. Receipts come only for
# template messages; a receipt other than `delivered` (user_block, freq_limited,
# system_failed) is `receipt_failed`.
STATS_COUNTS: tuple[tuple[str, str], ...] = (
    ("queued", "status = 'queued'"),
    ("sent", "status = 'sent'"),
    ("failed", "status = 'failed'"),
    ("unknown", "status = 'unknown'"),
    ("delivered", "status = 'sent' AND receipt_status = 'delivered'"),
    ("receipt_failed", "status = 'sent' AND receipt_status <> 'delivered'"),
    (
        "receipts_pending",
        "status = 'sent' AND kind = 'template' AND receipt_status IS NULL",
    ),
)


def api_message_stats_sql(dialect: str) -> str:
    """One row per app and Beijing day of `created_at` (when the API accepted the message)."""
    day = _BEIJING_DAY[dialect].format(column="created_at")
    sums = ",\n  ".join(
        f"sum(CASE WHEN {condition} THEN 1 ELSE 0 END) AS {name}"
        for name, condition in STATS_COUNTS
    )
    return f"""CREATE VIEW api_message_stats AS
SELECT
  app,
  {day} AS day,
  count(*) AS accepted,
  {sums},
  min(created_at) AS first_created_at,
  max(created_at) AS last_created_at
FROM api_messages
GROUP BY app, {day}"""


def upgrade() -> None:
    op.create_table(
        "api_messages",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("caller", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("openid", sa.String(128), nullable=False),
        sa.Column("template_id", sa.String(128), nullable=True),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("client_msg_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("errcode", sa.Integer(), nullable=True),
        sa.Column("errmsg", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("msgid", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("first_attempt_at", UTC, nullable=True),
        sa.Column("last_attempt_at", UTC, nullable=True),
        sa.Column("sent_at", UTC, nullable=True),
        sa.Column("receipt_status", sa.String(32), nullable=True),
        sa.Column("receipt_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_messages")),
        sa.UniqueConstraint(
            "caller", "idempotency_key", name=op.f("uq_api_messages_caller_idempotency_key")
        ),
        sa.CheckConstraint(
            "status IN (" + ", ".join(repr(s) for s in STATUSES) + ")",
            name=op.f("ck_api_messages_status"),
        ),
    )
    op.create_index(
        op.f("ix_api_messages_status_created_at"), "api_messages", ["status", "created_at"]
    )
    op.create_index(op.f("ix_api_messages_msgid"), "api_messages", ["msgid"])
    op.create_index(op.f("ix_api_messages_app_created_at"), "api_messages", ["app", "created_at"])
    op.execute("DROP VIEW IF EXISTS delivery_failures")
    op.execute(DELIVERY_FAILURES)
    op.execute(api_message_stats_sql(op.get_context().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS api_message_stats")
    op.execute("DROP VIEW IF EXISTS delivery_failures")
    op.execute(DELIVERY_FAILURES_0004)
    op.drop_index(op.f("ix_api_messages_app_created_at"), table_name="api_messages")
    op.drop_index(op.f("ix_api_messages_msgid"), table_name="api_messages")
    op.drop_index(op.f("ix_api_messages_status_created_at"), table_name="api_messages")
    op.drop_table("api_messages")
