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
        description="ISO-8601 or unix seconds, simulator time; naive means UTC; null = never. "
        "Left out on a new follower: now (following is an interaction).",
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
    last_interaction_at: datetime | None
    subscribe_authorizations: dict[str, int]


class FollowerUpsertResult(_Strict):
    created: int
    updated: int
    total: int


class FollowerPage(_Strict):
    total: int
    followers: list[FollowerOut]


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
