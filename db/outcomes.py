"""The words the ledger speaks: delivery and campaign statuses, reasons, one outcome row.

Shared by the send path (which produces outcomes) and the ledger (which upserts them), so
the vocabulary an analyst sees in SQL is defined once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class DeliveryStatus(StrEnum):
    """`deliveries.status`. Everything but `pending` is final: a re-run never re-sends it."""

    PENDING = "pending"  # attempted, not final (quota pause, campaign stopped mid-flight)
    SENT = "sent"  # WeChat accepted it (msgid set); receipts arrive later
    FAILED = "failed"  # WeChat refused it (errcode + class say why)
    SKIPPED = "skipped"  # not sent on purpose (reason says why)
    INVALID = "invalid"  # the rendered message broke a field rule; never sent


FINAL_STATUSES = frozenset(
    {DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED, DeliveryStatus.INVALID}
)


class SkipReason(StrEnum):
    """`deliveries.reason` for skipped rows."""

    OUTSIDE_WINDOW = "outside_window"
    UNSUBSCRIBED = "unsubscribed"
    NOTHING_TO_SEND = "nothing_to_send"  # digests: no content for this recipient


#: Invalid reasons a report or a dry-run plan lists, most frequent first (the rest are summed).
TOP_REASONS = 5


class CampaignStatus(StrEnum):
    """`campaigns.status`; only `db.campaigns.set_status` writes it."""

    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    PAUSED = "paused"  # quota or error ratio; a resume finishes it
    FAILED = "failed"  # request/config error; fix and resume, or start anew
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What happened to one recipient in one attempt round (one ledger upsert row).

    `attempts` is how many HTTP attempts this round made (added to the stored count);
    timestamps are UTC. `msgid` is 64-bit. `errmsg` never holds a token (the client
    redacts it).
    """

    openid: str
    status: DeliveryStatus
    reason: str | None = None
    errcode: int | None = None
    errmsg: str | None = None
    error_class: str | None = None
    msgid: int | None = None
    client_msg_id: str | None = None
    attempts: int = 0
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    sent_at: datetime | None = None
