"""`CampaignParams` and `DigestParams`: the forms an operator fills in the Prefect UI.

Every knob is in the operator's words, with bounds the UI enforces before a run exists
(listmonk's lesson: state the arithmetic in the help text). Cross-field rules that a JSON
schema cannot express are checked when the run starts, with a message saying what to fix.
The message and sending knobs are declared once, in `MessageParams`, which both forms extend:
a digest is a campaign whose audience, name and ID come from the day.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from db.audience import DEFAULT_TIMEOUT_SECONDS
from db.digest import DEFAULT_DIGEST_SQL, day_binds, digest_campaign_id, zone
from wechat.simulator.defaults import DEMO_TEMPLATE_ID

MessageKind = Literal["template", "customer_service", "subscribe"]
AudienceParam = str | int | float | bool

#: The demo template ("order shipped": thing1, character_string2, time3, amount4) filled from
#: the columns of `db.digest.DEFAULT_DIGEST_SQL`, so the example digest runs out of the box.
DEFAULT_DIGEST_DATA: dict[str, str] = {
    "thing1": "当日互动 {event_count} 次",
    "character_string2": "{last_event_kind}",
    "time3": "{last_event_at}",
    "amount4": "{last_order_amount}",
}

_BIND_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: The slowest send rate a campaign accepts: one message every 10 s. Slower is a mistake
#: (`--rate 0.000000001` would never finish), not a plan.
MIN_RATE_PER_SECOND = 0.1


def _template_id_field(default: str | None) -> Any:
    return Field(
        default,
        min_length=1,
        max_length=128,
        title="Template ID",
        description="From the account's template library; required for template and subscribe.",
        json_schema_extra={"position": 3},
    )


def _data_field(default: dict[str, str]) -> Any:
    return Field(
        default_factory=lambda: dict(default),
        title="Template fields",
        description=(
            "Field key → text. `{column}` is replaced by that column of the audience row, "
            "e.g. thing1 → `{nickname}, your order shipped`. Write `{{` for a literal brace."
        ),
        json_schema_extra={"position": 4},
    )


class MessageFields(BaseModel):
    """The message itself, before a row fills its placeholders: what a campaign, a digest
    and a test send share."""

    model_config = ConfigDict(extra="forbid")

    app: str = Field(
        "default",
        min_length=1,
        title="WeChat app",
        description="Name of the wechat-app block whose account sends (`wxpush setup --app`).",
        json_schema_extra={"position": 1},
    )
    kind: MessageKind = Field(
        "template",
        title="Message kind",
        description=(
            "template: template message (needs a template ID). customer_service: a text "
            "message, only to people who interacted in the last 48 h. subscribe: a "
            "subscription notification (needs the user's authorization)."
        ),
        json_schema_extra={"position": 2},
    )
    template_id: str | None = _template_id_field(None)
    data: dict[str, str] = _data_field({})
    text: str | None = Field(
        None,
        min_length=1,
        title="Customer-service text",
        description="The text of a customer_service message, with `{column}` placeholders.",
        json_schema_extra={"position": 5},
    )
    url: str | None = Field(
        None,
        title="Link",
        description="Page the message opens (optional).",
        json_schema_extra={"position": 6},
    )
    miniprogram_appid: str | None = Field(
        None,
        title="Mini-program AppID",
        description="Opens this mini program (wins over Link).",
        json_schema_extra={"position": 7},
    )
    miniprogram_pagepath: str | None = Field(
        None, title="Mini-program page", json_schema_extra={"position": 8}
    )

    @model_validator(mode="after")
    def _fits_the_kind(self) -> Self:
        if self.kind in ("template", "subscribe") and not self.template_id:
            raise ValueError(f"a {self.kind} campaign needs a template_id")
        if self.kind in ("template", "subscribe") and not self.data:
            raise ValueError(f"a {self.kind} campaign needs at least one template field in data")
        if self.kind == "customer_service" and not self.text:
            raise ValueError("a customer_service campaign needs a text")
        return self


class MessageParams(MessageFields):
    """What every recipient gets and how it is sent: the knobs campaigns and digests share."""

    window_hours: int = Field(
        48,
        ge=0,
        le=24 * 30,
        title="Interaction window (hours)",
        description="Only recipients who interacted within this many hours; 0 = no filter.",
        json_schema_extra={"position": 10},
    )
    batch_size: int = Field(
        500,
        ge=1,
        le=5000,
        title="Batch size",
        description="Recipients per send task and per ledger write. Larger = less overhead.",
        json_schema_extra={"position": 11},
    )
    concurrency: int = Field(
        16,
        ge=1,
        le=256,
        title="Concurrency",
        description=(
            "Messages in flight per batch (two batches run at once). Throughput ≈ "
            "min(rate, concurrency ÷ WeChat's latency)."
        ),
        json_schema_extra={"position": 12},
    )
    rate_per_second: float | None = Field(
        None,
        ge=MIN_RATE_PER_SECOND,
        le=10_000,
        title="Rate limit (messages/s)",
        description=(
            "Upper bound on sends per second for the whole campaign, at least 0.1 (one "
            "message every 10 s); empty = no limit."
        ),
        json_schema_extra={"position": 13},
    )
    max_error_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        title="Pause above this failure share",
        description=(
            "Pause the campaign when more than this share of attempted messages failed "
            "(checked after 200 attempts). 1 = never pause."
        ),
        json_schema_extra={"position": 14},
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=20,
        title="Attempts per message",
        description=(
            "Tries per message when WeChat is busy or the network fails (-1, HTTP 5xx, "
            "timeouts), with growing pauses; the same client_msg_id every time, so WeChat "
            "never delivers a retried message twice within 10 minutes."
        ),
        json_schema_extra={"position": 14.5},
    )
    request_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=120,
        title="WeChat answer timeout (s)",
        description="How long one send waits for WeChat's answer before it counts as a retry.",
        json_schema_extra={"position": 14.6},
    )
    audience_timeout_seconds: float = Field(
        DEFAULT_TIMEOUT_SECONDS,
        ge=1,
        le=3600,
        title="Audience SQL timeout (s)",
        description=(
            "How long the audience SQL may run: its preview, its count and each batch it "
            "streams. A query that takes longer stops the campaign before anything is sent."
        ),
        json_schema_extra={"position": 9.7},
    )
    dry_run: bool = Field(
        False,
        title="Dry run",
        description="Render and check every message and report the counts; send nothing.",
        json_schema_extra={"position": 15},
    )


class CampaignParams(MessageParams):
    """One campaign: who gets which message, how fast, and what to do when things fail."""

    name: str = Field(
        min_length=1,
        max_length=100,
        title="Campaign name",
        description="Shown in run names, reports and the campaigns table.",
        json_schema_extra={"position": 0},
    )
    audience_sql: str | None = Field(
        None,
        title="Audience SQL",
        description=(
            "A SELECT returning `openid` plus the columns the fields use; runs read-only with "
            "a timeout. Bind parameter `:app_id` is the app's AppID; others come from Audience "
            "SQL parameters. Empty: every recipient of the app (unsubscribed ones are recorded "
            "as skipped). Columns with a meaning: `last_interaction_at` drives the window; "
            "`subscribed` false marks a row unsubscribed; `nothing_to_send` true marks a row "
            "with no content (a digest's quiet day). A row is skipped for the first that "
            "applies: unsubscribed, nothing_to_send, outside_window."
        ),
        json_schema_extra={"position": 9},
    )
    audience_params: dict[str, AudienceParam] = Field(
        default_factory=dict,
        title="Audience SQL parameters",
        description=(
            "Name → value for the audience SQL's other bind parameters, e.g. city → 上海 for "
            "`WHERE city = :city`. Names are letters, digits and _; `app_id` and names "
            "starting with `wx_` are reserved."
        ),
        json_schema_extra={"position": 9.5},
    )
    campaign_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        title="Continue campaign",
        description=(
            "The ID of an earlier campaign to continue: recipients it already reached are "
            "never sent again. Empty = a new campaign."
        ),
        json_schema_extra={"position": 16},
    )
    retry_failed: bool = Field(
        False,
        title="Re-send retryable failures",
        description="With a campaign ID: also re-send rows that failed for a passing reason "
        "(WeChat busy, quota).",
        json_schema_extra={"position": 17},
    )

    @field_validator("audience_params")
    @classmethod
    def _bindable_names(cls, value: dict[str, AudienceParam]) -> dict[str, AudienceParam]:
        for name in value:
            if not _BIND_NAME.fullmatch(name):
                raise ValueError(
                    f"audience parameter {name!r} is not a bind name: use letters, digits and "
                    "_ (not starting with a digit), as in `:city`"
                )
            if name == "app_id" or name.lower().startswith("wx_"):
                raise ValueError(
                    f"audience parameter {name!r} is reserved (`app_id` is the app's AppID; "
                    "`wx_…` names are wxpush's own); pick another name"
                )
        return value

    @model_validator(mode="after")
    def _retry_needs_the_campaign(self) -> Self:
        if self.retry_failed and not self.campaign_id:
            raise ValueError("retry_failed needs the campaign_id of the campaign to retry")
        return self


class DigestParams(MessageParams):
    """One digest: per-recipient content from a digest SQL for one day, sent as that day's
    campaign (ID `digest-<name>-<day>`), so re-running a day never sends twice."""

    name: str = Field(
        "daily digest",
        min_length=1,
        max_length=80,
        title="Digest name",
        description=(
            "Names each day's campaign and its ID, `digest-<name>-<YYYY-MM-DD>`: keep it "
            "unchanged so a re-run of a day continues that day's campaign."
        ),
        json_schema_extra={"position": 0},
    )
    day: date | None = Field(
        None,
        title="Day",
        description=(
            "The day whose events the digest reports, in the time zone below. Empty = the day "
            "before the run was scheduled (yesterday for a run started now; a retry of the "
            "same run keeps its day)."
        ),
        json_schema_extra={"position": 1.1},
    )
    timezone: str = Field(
        "Asia/Shanghai",
        min_length=1,
        title="Time zone",
        description="IANA name of the zone whose midnight starts and ends the day.",
        json_schema_extra={"position": 1.2},
    )
    template_id: str | None = _template_id_field(DEMO_TEMPLATE_ID)
    data: dict[str, str] = _data_field(DEFAULT_DIGEST_DATA)
    digest_sql: str = Field(
        DEFAULT_DIGEST_SQL,
        min_length=1,
        title="Digest SQL",
        description=(
            "A SELECT returning one row per recipient: `openid`, the columns the fields use, "
            "`last_interaction_at`, `subscribed`, and `nothing_to_send` (true = nothing to "
            "report that day: skipped, recorded as nothing_to_send). Binds: `:app_id`, "
            "`:day_start` and `:day_end` (the day's [start, end) in UTC, as "
            "'YYYY-MM-DD HH:MM:SS.ffffff' text). Runs read-only with a timeout."
        ),
        json_schema_extra={"position": 9},
    )
    retry_failed: bool = Field(
        False,
        title="Re-send retryable failures",
        description="Also re-send this day's rows that failed for a passing reason "
        "(WeChat busy, quota).",
        json_schema_extra={"position": 17},
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value

    def campaign(self, day: date) -> CampaignParams:
        """The campaign that sends this digest for `day`: the same ID every time."""
        shared = {name: getattr(self, name) for name in MessageParams.model_fields}
        return CampaignParams(
            **shared,
            name=f"{self.name} {day.isoformat()}",
            audience_sql=self.digest_sql,
            audience_params=dict(day_binds(day, self.timezone)),
            campaign_id=digest_campaign_id(self.name, day),
            retry_failed=self.retry_failed,
        )


class TestSendParams(MessageFields):
    """A test send: the campaign's message to a few followers first, outside any campaign."""

    __test__ = False  # not a pytest test class

    openids: list[str] = Field(
        min_length=1,
        max_length=20,
        title="Send to (OpenIDs)",
        description=(
            "One or more followers to get the test message, e.g. your own OpenID. Each gets the "
            "message filled from their row in `recipients`, or from sample values."
        ),
        json_schema_extra={"position": 0},
    )
    sample_values: dict[str, str] = Field(
        default_factory=dict,
        title="Sample values",
        description=(
            "Column → text for placeholders the follower's row does not fill (a follower not in "
            "`recipients`, a column from your audience SQL). Columns left out get an example "
            "that fits the field's type."
        ),
        json_schema_extra={"position": 9},
    )

    @field_validator("openids")
    @classmethod
    def _real_openids(cls, value: list[str]) -> list[str]:
        openids = [openid.strip() for openid in value]
        if any(not openid for openid in openids):
            raise ValueError("an OpenID cannot be empty")
        return list(dict.fromkeys(openids))  # each follower once
