"""The words the ledger speaks: delivery and campaign statuses, reasons, one outcome row.

Shared by the send path (which produces outcomes) and the ledger (which upserts them), so
the vocabulary an analyst sees in SQL is defined once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class DeliveryStatus(StrEnum):
    """`deliveries.status`. Everything but `pending` is final: a re-run never re-sends it
    (`failed` and `unknown` only when the operator asks: retry_failed, resend_unknown)."""

    PENDING = "pending"  # not final: being sent (reason in_flight), or paused/stopped mid-flight
    SENT = "sent"  # WeChat accepted it (msgid set); receipts arrive later
    FAILED = "failed"  # WeChat refused it (errcode + class say why)
    SKIPPED = "skipped"  # not sent on purpose (reason says why)
    INVALID = "invalid"  # the rendered message broke a field rule; never sent
    # Sent, but no answer was recorded and a re-send is no longer covered by WeChat's
    # client_msg_id dedupe: it may or may not have reached the user, so it is not re-sent.
    UNKNOWN = "unknown"


FINAL_STATUSES = frozenset(
    {
        DeliveryStatus.SENT,
        DeliveryStatus.FAILED,
        DeliveryStatus.SKIPPED,
        DeliveryStatus.INVALID,
        DeliveryStatus.UNKNOWN,
    }
)

#: WeChat sends one template message per openid + client_msg_id within 10 minutes of the
#: first (docs/wechat-protocol.md): a re-send inside that window cannot deliver twice.
DEDUPE_WINDOW = timedelta(minutes=10)
#: How long after an unanswered attempt a re-send still counts as safe: the window less a
#: minute for the request's own time on the wire and for clocks that disagree.
RESEND_SAFE_FOR = DEDUPE_WINDOW - timedelta(minutes=1)


class PendingReason(StrEnum):
    """`deliveries.reason` of pending rows the ledger itself writes (the send path writes
    its own sentences for a pause or a stop)."""

    # Recorded before the send (db.ledger.record_attempts); the answer replaces it. A row
    # still in flight after a crash was sent, or not: the resume decides (settle_unanswered).
    IN_FLIGHT = "in_flight"
    # Marked in flight, then not sent after all (the campaign stopped first).
    NOT_ATTEMPTED = "not_attempted"
    # An `unknown` row the operator asked to send again (resend_unknown).
    RESEND_UNKNOWN = "resend_unknown"


class UnknownReason(StrEnum):
    """`deliveries.reason` of unknown rows."""

    # Attempted, no answer recorded (the process died first), and either WeChat's dedupe
    # window has passed since, or the kind has no dedupe (customer service, subscribe).
    NO_ANSWER = "no_answer"


class SkipReason(StrEnum):
    """`deliveries.reason` for skipped rows."""

    OUTSIDE_WINDOW = "outside_window"
    UNSUBSCRIBED = "unsubscribed"
    NOTHING_TO_SEND = "nothing_to_send"  # digests: no content for this recipient
    # The account's frequency cap: the follower already got that many messages from the
    # account's other campaigns within the cap's window (db/audience.py, FrequencyCap).
    FREQUENCY_CAP = "frequency_cap"


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
class Attempt:
    """A send about to start (db.ledger.record_attempts): which recipient, the
    client_msg_id it carries (None: a kind WeChat does not dedupe), and when (aware UTC)."""

    openid: str
    client_msg_id: str | None
    attempted_at: datetime


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
