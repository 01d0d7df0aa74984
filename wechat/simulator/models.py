"""Payloads of the admin API (/_sim/…), shared by the server and the `SimulatorAdmin` client.
Message listings are built as plain dicts on the server (speed) and parsed by the client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FollowerIn(_Strict):
    """Upsert of one follower; on an existing follower only the fields given are changed
    (`subscribe_authorizations` is merged per template id)."""

    openid: str = Field(min_length=1, max_length=128)
    subscribed: bool = True
    blocked: Literal["blacklist", "refuse"] | None = Field(
        None, description="blacklist → 43019; refuse (user turned messages off) → 48002."
    )
    last_interaction_at: datetime | None = Field(
        None,
        description="The follower's last message (its customer-service window starts afresh "
        "when set): ISO-8601 or unix seconds, simulator time; naive means UTC; null = never. "
        "Left out on a new follower: now.",
    )
    subscribe_authorizations: dict[str, NonNegativeInt] = Field(
        default_factory=dict, description="template_id → subscribe sends left (bizsend)."
    )

    @field_validator("last_interaction_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class FollowerOut(_Strict):
    openid: str
    subscribed: bool
    blocked: Literal["blacklist", "refuse"] | None
    last_interaction_at: datetime | None = Field(
        description="The follower's last message (or as seeded): opens the message window."
    )
    last_event_at: datetime | None = Field(
        description="The last menu click or follow: opens the short window."
    )
    custom_sends_left: int = Field(
        description="Customer-service sends the follower can be sent now, both windows together."
    )
    subscribe_authorizations: dict[str, int]


class FollowerUpsertResult(_Strict):
    created: int
    updated: int
    total: int


class TemplateSpec(_Strict):
    """A template of the account: the keys its `data` must fill."""

    template_id: str = Field(min_length=1, max_length=128)
    keys: Annotated[list[str], Field(min_length=1)]
    title: str | None = None


class SentMessage(_Strict):
    """An accepted message as the admin API lists it. `msgid` is a JSON integer above 2^53:
    exact in Python, but JavaScript's JSON.parse rounds it, so `msgid_str` carries it too."""

    seq: int
    kind: Literal["template", "custom", "subscribe"]
    openid: str
    template_id: str | None
    client_msg_id: str | None
    msgtype: str | None
    data: dict[str, Any]
    url: str | None
    page: str | None
    miniprogram: dict[str, Any] | None
    msgid: int
    msgid_str: str
    accepted_at: datetime


class MessagePage(_Strict):
    total: int = Field(description="Messages matching the filters (after `since`).")
    offset: int
    next_since: int | None = Field(description="`seq` of the last message here, for `since=`.")
    items: list[SentMessage]


class Counters(_Strict):
    calls: dict[str, int]
    accepted: int
    accepted_by_kind: dict[str, int]
    deduplicated: int
    errcodes: dict[int, int]
    faults: dict[str, int]
    tokens_issued: dict[str, int]


class ClockInfo(_Strict):
    now: float = Field(description="Simulator time, unix seconds.")
    now_iso: datetime
    offset_seconds: float
    seconds_to_next_day: float = Field(description="Until the next Beijing midnight (quotas).")


class ClockAdvance(_Strict):
    advance_seconds: float = Field(ge=0)


class ResetRequest(_Strict):
    everything: bool = Field(
        False, description="Also restore start-up config, faults, followers and templates."
    )


class Health(_Strict):
    status: Literal["ok"]
    app_id: str
    followers: int
    templates: int
    messages: int


class AccountInfo(_Strict):
    """One served account in GET/POST /_sim/accounts (no secret)."""

    app_id: str
    daily_quota: int
    quota_used_today: int
    followers: int
    templates: int
    messages: int


class CallbackConfigView(_Strict):
    """GET /_sim/callbacks/config: the callback settings with the secrets masked
    (`"**********"` when set, null when not); `safe_mode` says whether pushes are encrypted."""

    callback_url: str | None
    callback_token: str | None
    encoding_aes_key: str | None
    original_id: str
    receipt_mix: dict[str, float]
    receipt_overrides: dict[str, str]
    receipt_delay_seconds: float
    seed: int
    max_concurrency: int
    timeout_seconds: float
    max_attempts: int
    retry_delay_seconds: float
    clock: Literal["real", "simulator"]
    enabled: bool
    safe_mode: bool


class CallbackCounters(_Strict):
    """GET /_sim/callbacks: what the simulator pushed since the last reset, and what is left."""

    enabled: bool
    mode: Literal["plain", "safe"] | None
    pending: int = Field(description="Queued (incl. awaiting a retry) plus in flight.")
    queued: int
    in_flight: int
    receipts_scheduled: dict[str, int] = Field(description="Receipts drawn, by Status.")
    receipts_delivered: dict[str, int] = Field(description="Receipts answered 200, by Status.")
    receipts_failed: dict[str, int] = Field(description="Receipts given up on, by Status.")
    events_delivered: dict[str, int] = Field(description="Follower actions answered 200.")
    events_failed: dict[str, int]
    pushes: int
    attempts: int
    attempts_failed: int
    retries: int
    gave_up: int
    dropped: int = Field(description="Never sent: callbacks were off when they came due.")
    last_error: str | None


class PushRecord(_Strict):
    """One push and its delivery. `fields` are the XML fields as pushed (null for a receipt
    not attempted yet); `http_statuses` has one entry per attempt (null: no answer)."""

    seq: int
    kind: Literal["receipt", "message", "click", "subscribe", "unsubscribe", "view"]
    openid: str
    msgid: int | None
    status: str | None
    fields: dict[str, int | str] | None
    attempts: int
    http_statuses: list[int | None]
    outcome: Literal["pending", "delivered", "failed", "dropped"]
    error: str | None

    @property
    def http_status(self) -> int | None:
        """The receiver's answer to the last attempt."""
        return self.http_statuses[-1] if self.http_statuses else None

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


class FollowerAction(_Strict):
    """Body of POST /_sim/followers/{openid}/{action}; each action reads its own field."""

    text: str = "hi"
    key: str = "MENU_KEY"
    url: str = "https://example.com/"
    scene: str | None = None
