"""The tables: `recipients`, `interactions`, `campaigns`, `deliveries`, the `errcodes`
reference table the analyst views join (filled by `db.errcodes.sync_errcodes`), and
`callback_events`, every WeChat push the receiver stored (written by `db.callbacks`), and
the shared state of scaling out: `account_rate` and `account_quota` (each account's limits,
held for all its campaigns), `callback_nonces` (the receivers' replay memory),
`campaign_shards` (which flow run sends which part of a sharded campaign) and
`api_messages`, the messages the signed push API accepted (db/api_messages.py).

Declared once here; the Alembic migrations create exactly this (a test compares them on
SQLite and PostgreSQL). Timestamps are `UTCDateTime` (aware UTC on both databases), JSON is
JSONB on PostgreSQL. Query code uses the tables through Core (`Delivery.__table__`), so every
function works with a `Connection` or a `Session`; there are no relationships to load lazily.
What each column means for an analyst is in docs/analytics.md.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.outcomes import CampaignStatus, DeliveryStatus
from db.types import BigIntPK, JSONType, UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# `errcodes.account_kind`: the account kinds whose errcode tables differ (wechat/errors.py).
ACCOUNT_KINDS = ("official_account", "wecom")

# `callback_events.kind` and the receipt statuses `db.callbacks` writes (the values the
# `campaign_stats` view counts as delivered / blocked / freq_limited / system_failed).
CALLBACK_KINDS = ("receipt", "interaction", "subscribe", "unsubscribe", "other")
RECEIPT_STATUSES = ("delivered", "user_block", "freq_limited", "system_failed")

OPENID = String(64)  # WeChat openids are 28 characters; WeCom user ids up to 64
APP_ID = String(64)


def _in_list(column: str, values: Any) -> str:
    """A CHECK clause listing the allowed values (the vocabulary of db/outcomes.py)."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints the same
    way on every database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Recipient(Base):
    """A follower of an app: who can be messaged, and when they last interacted."""

    __tablename__ = "recipients"
    __table_args__ = (
        UniqueConstraint("app_id", "openid"),
        # The 48-hour window: "recipients of this app who interacted since …".
        Index(None, "app_id", "last_interaction_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(APP_ID)
    openid: Mapped[str] = mapped_column(OPENID)
    subscribed: Mapped[bool] = mapped_column(Boolean, default=True)
    # "blacklist" (43019) or "refuse" (48002) when known; NULL = not blocked.
    blocked: Mapped[str | None] = mapped_column(String(32))
    last_interaction_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    nickname: Mapped[str | None] = mapped_column(String(200))
    city: Mapped[str | None] = mapped_column(String(100))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Interaction(Base):
    """Something a follower did that opens WeChat's 48-hour window (message, click, …)."""

    __tablename__ = "interactions"
    __table_args__ = (Index(None, "app_id", "openid", "occurred_at"),)  # latest per openid

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(APP_ID)
    openid: Mapped[str] = mapped_column(OPENID)
    kind: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Campaign(Base):
    """One campaign: what is sent, to which audience, and where it stands.

    `status` is written only by `db.campaigns.set_status`; the `*_count` columns are the
    snapshot it last stored (the ledger is the truth).
    """

    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint(_in_list("status", CampaignStatus), name="status"),
        Index(None, "name"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    app: Mapped[str] = mapped_column(String(100))  # the wechat-app block name
    # The account's AppID when the campaign last started: what the frequency cap counts
    # across (db/audience.py). NULL for campaigns started before migration 0008.
    app_id: Mapped[str | None] = mapped_column(APP_ID)
    kind: Mapped[str] = mapped_column(String(32))  # template / customer_service / subscribe
    template_id: Mapped[str | None] = mapped_column(String(128))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    audience_sql: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str | None] = mapped_column(Text)
    audience_count: Mapped[int] = mapped_column(Integer, default=0)
    eligible_count: Mapped[int] = mapped_column(Integer, default=0)
    sent_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    invalid_count: Mapped[int] = mapped_column(Integer, default=0)
    pending_count: Mapped[int] = mapped_column(Integer, default=0)
    unknown_count: Mapped[int] = mapped_column(Integer, default=0)  # since migration 0004
    run_count: Mapped[int] = mapped_column(Integer, default=1)  # 1 + resumes
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    deployment_id: Mapped[str | None] = mapped_column(String(64))
    deployment_name: Mapped[str | None] = mapped_column(String(200))
    started_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Set by `wxpush db prune` (db/retention.py) before it deletes the ledger; such a
    # campaign can never be resumed (since migration 0005).
    ledger_pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Delivery(Base):
    """The ledger: one row per (campaign, openid): marked in flight before the send, then
    WeChat's answer (db/ledger.py)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("campaign_id", "openid"),
        CheckConstraint(_in_list("status", DeliveryStatus), name="status"),
        Index(None, "campaign_id", "status"),
        Index(None, "msgid"),  # receipts (TEMPLATESENDJOBFINISH) arrive by msgid
        # The frequency cap: "messages to these openids since …", per audience batch.
        Index(None, "openid", "last_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("campaigns.id", ondelete="CASCADE")
    )
    openid: Mapped[str] = mapped_column(OPENID)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    errcode: Mapped[int | None] = mapped_column(Integer)
    errmsg: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(16))
    msgid: Mapped[int | None] = mapped_column(BigInteger)  # 64-bit, < 2^63
    client_msg_id: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    receipt_status: Mapped[str | None] = mapped_column(String(32))
    receipt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Errcode(Base):
    """What a WeChat errcode means and its class, so SQL (the `delivery_failures` view) can
    explain failures. A copy of wechat/errors.py, kept in step by `tasks.reference`."""

    __tablename__ = "errcodes"
    __table_args__ = (
        CheckConstraint(_in_list("account_kind", ACCOUNT_KINDS), name="account_kind"),
    )

    # `wecom` rows are only the codes whose meaning differs from the Official Account's.
    account_kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    errcode: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    error_class: Mapped[str] = mapped_column(String(16))
    meaning: Mapped[str] = mapped_column(Text)


class CallbackEvent(Base):
    """One WeChat push, stored once: (app_id, dedupe_key) is unique, so WeChat's retries of
    the same push are recognised and applied only the first time (db/callbacks.py)."""

    __tablename__ = "callback_events"
    __table_args__ = (
        UniqueConstraint("app_id", "dedupe_key"),
        CheckConstraint(_in_list("kind", CALLBACK_KINDS), name="kind"),
        Index(None, "msgid"),  # receipts matched to deliveries later (match_pending_receipts)
        # A follower's history; "is there a newer (un)subscribe than this one?"
        Index(None, "app_id", "openid", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(APP_ID)
    dedupe_key: Mapped[str] = mapped_column(String(200))
    openid: Mapped[str] = mapped_column(OPENID)
    kind: Mapped[str] = mapped_column(String(16))
    msg_type: Mapped[str] = mapped_column(String(32))
    event: Mapped[str | None] = mapped_column(String(64))
    interaction_kind: Mapped[str | None] = mapped_column(String(32))
    msgid: Mapped[int | None] = mapped_column(BigInteger)  # 64-bit, < 2^63
    receipt_status: Mapped[str | None] = mapped_column(String(32))
    matched: Mapped[bool] = mapped_column(Boolean, default=False)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AccountRate(Base):
    """The send-rate schedule of one WeChat account, shared by every campaign, shard and
    worker sending for it: GCRA's theoretical arrival time of its next message (unix s)."""

    __tablename__ = "account_rate"

    app_id: Mapped[str] = mapped_column(APP_ID, primary_key=True)
    tat: Mapped[float] = mapped_column(Float)


class AccountQuota(Base):
    """Template messages reserved against one account's daily quota on one Beijing day
    (WeChat answers 45009 past it). A new day is a new row."""

    __tablename__ = "account_quota"

    app_id: Mapped[str] = mapped_column(APP_ID, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    used: Mapped[int] = mapped_column(Integer)


class CallbackNonce(Base):
    """A signed push some receiver process accepted (a digest of app, timestamp, nonce):
    the replay memory every receiver process shares."""

    __tablename__ = "callback_nonces"
    __table_args__ = (Index(None, "seen_at"),)

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


#: `campaign_shards.status`: waiting for a worker, sending, or how the shard's last run ended.
SHARD_STATUSES = ("starting", "running", "completed", "paused", "failed", "cancelled", "crashed")


class CampaignShard(Base):
    """One part of a campaign split across workers (`shards` > 1): which flow run owns it
    now (only that run may send it), its heartbeat, and how its last run ended
    (db/shards.py). The ledger stays the campaign's, one row per recipient."""

    __tablename__ = "campaign_shards"
    __table_args__ = (CheckConstraint(_in_list("status", SHARD_STATUSES), name="status"),)

    campaign_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    shards: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    runs: Mapped[int] = mapped_column(Integer, default=0)  # flow runs started for it
    worker: Mapped[str | None] = mapped_column(String(200))  # host:pid of the run's process
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent: Mapped[int] = mapped_column(Integer, default=0)  # accepted by its last run
    http_attempts: Mapped[int] = mapped_column(Integer, default=0)
    errcodes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


#: `api_messages.status`: waiting to be sent (or re-sent), or WeChat's final answer. `unknown`:
#: it may have been sent and a re-send could deliver it twice (db/api_messages.py).
API_MESSAGE_STATUSES = ("queued", "sent", "failed", "unknown")


class ApiMessage(Base):
    """One message the push API accepted: committed before it is sent and before the caller
    gets a 2xx, then WeChat's answer and receipt (db/api_messages.py). An idempotency key is
    unique per caller, so a repeated request finds the first one's row instead of a new send."""

    __tablename__ = "api_messages"
    __table_args__ = (
        UniqueConstraint("caller", "idempotency_key"),  # NULL keys never collide
        CheckConstraint(_in_list("status", API_MESSAGE_STATUSES), name="status"),
        Index(None, "status", "created_at"),  # the queue: queued rows, oldest first
        Index(None, "msgid"),  # receipts (TEMPLATESENDJOBFINISH) arrive by msgid
        Index(None, "app", "created_at"),  # api_message_stats, per app and day
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)  # "msg_" + 22 characters
    caller: Mapped[str] = mapped_column(String(64))  # the API key's --name
    key_id: Mapped[str] = mapped_column(String(32))  # the API key that signed the request
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # sha256 of the message's canonical JSON: a reused key with another body is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    app: Mapped[str] = mapped_column(String(64))  # the wechat-app block name
    kind: Mapped[str] = mapped_column(String(20))  # template / customer_service / subscribe
    openid: Mapped[str] = mapped_column(String(128))
    template_id: Mapped[str | None] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # data, url, …
    client_msg_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    errcode: Mapped[int | None] = mapped_column(Integer)
    errmsg: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    msgid: Mapped[int | None] = mapped_column(BigInteger)  # 64-bit, < 2^63
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    receipt_status: Mapped[str | None] = mapped_column(String(32))
    receipt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


recipients = Recipient.__table__
interactions = Interaction.__table__
campaigns = Campaign.__table__
deliveries = Delivery.__table__
errcodes = Errcode.__table__
callback_events = CallbackEvent.__table__
account_rate = AccountRate.__table__
account_quota = AccountQuota.__table__
callback_nonces = CallbackNonce.__table__
campaign_shards = CampaignShard.__table__
api_messages = ApiMessage.__table__
