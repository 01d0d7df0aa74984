"""`CampaignParams` and `DigestParams`: the forms an operator fills in the Prefect UI.

Every knob is in the operator's words, with bounds the UI enforces before a run exists
(listmonk's lesson: state the arithmetic in the help text). Cross-field rules that a JSON
schema cannot express are checked when the run starts, with a message saying what to fix.
The message and sending knobs are declared once, in `MessageParams`, which both forms extend:
a digest is a campaign whose audience, name and ID come from the day.

The descriptions are what the form and `--help` show, in an operator's words; the engineer's
detail behind each knob is in docs/operations.md ("The campaign form").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from db.audience import DEFAULT_TIMEOUT_SECONDS
from db.digest import DEFAULT_DIGEST_SQL, day_binds, digest_campaign_id, zone
from wechat.simulator.defaults import DEMO_TEMPLATE_ID, DEMO_TEMPLATE_VALUES

MessageKind = Literal["template", "customer_service", "subscribe"]
QuotaShortChoice = Literal["refuse", "send_what_fits"]
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

#: What the form's Template fields box starts with: the shape to follow, on the simulator's
#: demo template (so the local stack runs as is); an operator replaces the keys with theirs.
EXAMPLE_TEMPLATE_FIELDS: dict[str, str] = {**dict(DEMO_TEMPLATE_VALUES), "thing1": "{nickname}"}

#: Kinds that send a template (and its fields) rather than a text.
TEMPLATE_KINDS = ("template", "subscribe")


def plain_input(position: float, **extra: Any) -> Callable[[dict[str, Any]], None]:
    """`json_schema_extra` for an optional field: one plain box in Prefect's form, empty = none.

    Prefect's form draws `str | None` as a switch between a box and "None", which has no box
    (`Property is type "None"`). Without the null branch and the null default it draws one
    box, and leaves an empty box out of the parameters, so the model's default (None)
    applies. The server still accepts an explicit null from the API: it allows null for an
    optional property that has no default (prefect.utilities.schema_tools.validation).
    """

    def flatten(schema: dict[str, Any]) -> None:
        branches = schema.pop("anyOf", [])
        kept = [branch for branch in branches if branch.get("type") != "null"]
        if len(kept) == 1:
            schema.update(kept[0])
        elif branches:
            schema["anyOf"] = branches
        if "default" in schema and schema["default"] is None:
            del schema["default"]
        schema.update(position=position, **extra)

    return flatten


def _needs_per_kind(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Put `_fits_the_kind` into the form's schema, so the Prefect server refuses a template
    campaign without a template ID or fields before a run exists (it validates JSON Schema
    2020-12, `if`/`then`/`else` included; an absent kind is the default, template). A form
    whose template ID has a default (the digest's) keeps the check at run time only."""
    if model.model_fields["template_id"].default is not None:
        return
    schema["if"] = {"properties": {"kind": {"enum": list(TEMPLATE_KINDS)}}}
    schema["then"] = {
        "required": ["template_id", "data"],
        "properties": {"template_id": {"type": "string"}, "data": {"minProperties": 1}},
    }
    schema["else"] = {"required": ["text"], "properties": {"text": {"type": "string"}}}


def _template_id_field(default: str | None) -> Any:
    return Field(
        default,
        min_length=1,
        max_length=128,
        title="Template ID",
        description=(
            "Needed for template and subscribe messages: the ID from the account's template "
            "library (WeChat admin ▸ template messages)."
        ),
        json_schema_extra=plain_input(3),
    )


def _data_field(default: dict[str, str], shown: dict[str, str]) -> Any:
    return Field(
        default_factory=lambda: dict(default),
        title="Template fields",
        description=(
            'Your template\'s fields as JSON, {"key": "text", …}: the keys are on the '
            "template's detail page (thing1, time3, …). The box starts with the demo "
            "template's keys: replace them with yours. `{column}` is replaced by that column "
            "of each recipient's row, e.g. `{nickname}`; write `{{` for a literal brace."
        ),
        json_schema_extra={"position": 4, "default": dict(shown)},
    )


def _empty_is_none(value: Any) -> Any:
    """An empty or blank box means "none", whichever way it came (form, CLI, API)."""
    return None if isinstance(value, str) and not value.strip() else value


def heading(title: str, description: str) -> Any:
    """What heads a flow parameter's form, `Annotated[Model, heading(…)]`: Prefect titles a
    parameter with its own name (`params`); a `json_schema_extra` title is applied after."""
    return Field(json_schema_extra={"title": title, "description": description})


class MessageFields(BaseModel):
    """The message itself, before a row fills its placeholders: what a campaign, a digest
    and a test send share."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_needs_per_kind)

    app: str = Field(
        "default",
        min_length=1,
        title="WeChat app",
        description=(
            "Which WeChat account sends: the name it was set up under (`default` unless "
            "you set up several)."
        ),
        json_schema_extra={"position": 1},
    )
    kind: MessageKind = Field(
        "template",
        title="Message kind",
        description=(
            "template: a template message (needs a template ID and fields). "
            "customer_service: a text, only to people who wrote to the account in the last "
            "48 h. subscribe: a subscription message (only to people who allowed it)."
        ),
        json_schema_extra={"position": 2},
    )
    template_id: str | None = _template_id_field(None)
    data: dict[str, str] = _data_field({}, EXAMPLE_TEMPLATE_FIELDS)
    text: str | None = Field(
        None,
        min_length=1,
        title="Customer-service text",
        description=(
            "Needed for customer_service messages: the text, `{column}` placeholders included."
        ),
        json_schema_extra=plain_input(5),
    )
    url: str | None = Field(
        None,
        title="Link",
        description="A web page the message opens when tapped. Empty = none.",
        json_schema_extra=plain_input(6),
    )
    miniprogram_appid: str | None = Field(
        None,
        title="Mini-program AppID",
        description="Open this mini program instead of the link. Empty = none.",
        json_schema_extra=plain_input(7),
    )
    miniprogram_pagepath: str | None = Field(
        None,
        title="Mini-program page",
        description="The page of the mini program to open, e.g. pages/order/index.",
        json_schema_extra=plain_input(8),
    )

    @field_validator(
        "template_id", "text", "url", "miniprogram_appid", "miniprogram_pagepath", mode="before"
    )
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return _empty_is_none(value)

    @model_validator(mode="after")
    def _fits_the_kind(self) -> Self:
        if self.kind in TEMPLATE_KINDS and not self.template_id:
            raise ValueError(f"a {self.kind} message needs a template_id")
        if self.kind in TEMPLATE_KINDS and not self.data:
            raise ValueError(f"a {self.kind} message needs at least one template field in data")
        if self.kind == "customer_service" and not self.text:
            raise ValueError("a customer_service message needs a text")
        return self


class MessageParams(MessageFields):
    """What every recipient gets and how it is sent: the knobs campaigns and digests share."""

    window_hours: int = Field(
        48,
        ge=0,
        le=24 * 30,
        title="Interaction window (hours)",
        description=(
            "Only people who interacted with the account within this many hours; 0 = everyone."
        ),
        json_schema_extra={"position": 10},
    )
    batch_size: int = Field(
        2000,
        ge=1,
        le=5000,
        title="Batch size",
        description=(
            "Recipients handed to one send task (one line in the run's task list); the "
            "progress bar moves a batch at a time. Answers are saved every second either way. "
            "The default suits most campaigns."
        ),
        json_schema_extra={"position": 11},
    )
    concurrency: int = Field(
        16,
        ge=1,
        le=256,
        title="Concurrency",
        description=(
            "Messages sent at the same time, for the whole campaign. More = faster, up to the "
            "rate limit and as fast as WeChat answers."
        ),
        json_schema_extra={"position": 12},
    )
    rate_per_second: float | None = Field(
        None,
        ge=MIN_RATE_PER_SECOND,
        le=10_000,
        title="Rate limit (messages/s)",
        description=(
            "At most this many messages per second for the whole campaign; 0.1 or more (one "
            "message every 10 s). Empty = as fast as WeChat answers."
        ),
        json_schema_extra=plain_input(13),
    )
    max_error_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        title="Pause above this failure share",
        description=(
            "Pause the campaign when more than this share of the messages tried failed, e.g. "
            "0.5 = half (judged from the 200th on). 1 = never pause."
        ),
        json_schema_extra={"position": 14},
    )
    alert_failure_share: float = Field(
        0.1,
        ge=0,
        le=1,
        title="Alert above this failure share",
        description=(
            "When the campaign finishes with more than this share of the messages tried "
            "failed, e.g. 0.1 = a tenth, the alert channels set up with `wxpush setup "
            "--alert-…` are told. 1 = never."
        ),
        json_schema_extra={"position": 14.1},
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=20,
        title="Attempts per message",
        description=(
            "How often to try a message when WeChat is busy or cannot be reached, waiting "
            "longer each time. A message tried again is still delivered only once."
        ),
        json_schema_extra={"position": 14.5},
    )
    request_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=120,
        title="WeChat answer timeout (s)",
        description="How long to wait for WeChat's answer to one message before trying again.",
        json_schema_extra={"position": 14.6},
    )
    breaker_share: float = Field(
        0.5,
        gt=0,
        le=1,
        title="Hold sending when WeChat fails (share)",
        description=(
            "When more than this share of the last messages tried (next field) failed because "
            "WeChat was busy or could not be reached, send nothing new and try one message at "
            "a time, after 1 s, 2 s, 4 s … (at most 30 s apart), until WeChat answers; then "
            "carry on by itself. Messages held meanwhile keep their attempts. 1 = never hold."
        ),
        json_schema_extra={"position": 14.61},
    )
    breaker_window: int = Field(
        50,
        ge=10,
        le=1000,
        title="… judged over the last (messages tried)",
        description=(
            "How many of the most recent tries the share above is judged on (from the 20th "
            "try on, or this many if fewer)."
        ),
        json_schema_extra={"position": 14.62},
    )
    breaker_give_up_minutes: float = Field(
        5.0,
        ge=0.05,
        le=8,
        title="Pause when WeChat fails for (minutes)",
        description=(
            "If WeChat still fails this long after sending was held, pause the campaign and "
            "tell the alert channels; `wxpush campaign resume <id>` continues it once WeChat "
            "is back. At most 8, so a message tried again stays within WeChat's 10-minute "
            "check against duplicates."
        ),
        json_schema_extra={"position": 14.63},
    )
    audience_timeout_seconds: float = Field(
        DEFAULT_TIMEOUT_SECONDS,
        ge=1,
        le=3600,
        title="Audience SQL timeout (s)",
        description=(
            "How long the audience SQL may run. A slower query stops the campaign before "
            "anything is sent."
        ),
        json_schema_extra={"position": 9.7},
    )
    dry_run: bool = Field(
        False,
        title="Dry run",
        description=(
            "Check every message and report who would get it, who would not and why; send nothing."
        ),
        json_schema_extra={"position": 15},
    )


class CampaignParams(MessageParams):
    """One campaign: who gets which message, how fast, and what to do when things fail."""

    name: str = Field(
        min_length=1,
        max_length=100,
        title="Campaign name",
        description="Shown on the run, in its report and in the campaign list.",
        json_schema_extra={"position": 0},
    )
    audience_sql: str | None = Field(
        None,
        title="Audience SQL",
        description=(
            "Who gets the message. Empty = every follower of the account. Or a SELECT that "
            "returns `openid` and the columns your fields use, e.g. `SELECT openid, nickname, "
            "last_interaction_at FROM recipients WHERE app_id = :app_id AND city = :city`. "
            "It can only read. A `last_interaction_at` column lets the interaction window "
            "apply; `subscribed` false skips a row as unsubscribed."
        ),
        json_schema_extra=plain_input(9),
    )
    audience_params: dict[str, AudienceParam] = Field(
        default_factory=dict,
        title="Audience SQL parameters",
        description=(
            "Values for the `:name` placeholders of the audience SQL, as JSON, e.g. "
            '{"city": "上海"} for `WHERE city = :city`. Names are letters, digits and _; '
            "`app_id` (the account's AppID, always there) and names starting with `wx_` are "
            "taken."
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
            "To finish a paused or cancelled campaign, or re-send its failures: its ID, from "
            "its report or the campaign list. Whoever it reached is not sent again. Empty = a "
            "new campaign."
        ),
        json_schema_extra=plain_input(16),
    )
    retry_failed: bool = Field(
        False,
        title="Re-send retryable failures",
        description="With Continue campaign: also re-send the messages that failed for a "
        "passing reason (WeChat busy, daily quota used up).",
        json_schema_extra={"position": 17},
    )
    resend_unknown: bool = Field(
        False,
        title="Re-send recipients in doubt",
        description="With Continue campaign: also send again to the recipients marked unknown "
        "(a message went out but its answer was lost, too long ago for WeChat to drop a "
        "repeat). Each of them may get the message twice.",
        json_schema_extra={"position": 17.5},
    )
    frequency_cap: int | None = Field(
        None,
        ge=0,
        le=1000,
        title="Messages per follower (frequency cap)",
        description=(
            "At most this many messages to one follower within the cap's window, counting "
            "this account's other campaigns; a follower at the cap is skipped and recorded "
            "as frequency_cap. Empty = the account's cap (set on its WeChat app); 0 = no cap "
            "for this campaign, e.g. a transactional message."
        ),
        json_schema_extra=plain_input(10.5),
    )
    frequency_cap_hours: int | None = Field(
        None,
        ge=1,
        le=24 * 30,
        title="Frequency cap window (hours)",
        description=(
            "Messages sent within the last this many hours count toward the cap. Empty = the "
            "account's window (24 hours unless set on its WeChat app)."
        ),
        json_schema_extra=plain_input(10.6),
    )
    shards: int = Field(
        1,
        ge=1,
        le=32,
        title="Split across workers",
        description=(
            "Split the audience into this many parts, each sent by its own run on any free "
            "worker, for large campaigns; 1 = this run sends everyone. Each person is still "
            "messaged once, and the rate limit and concurrency above stay for the whole "
            "campaign. More than 1 needs the PostgreSQL database and that many free worker "
            "slots besides this run's."
        ),
        json_schema_extra={"position": 14.7},
    )
    when_quota_short: QuotaShortChoice = Field(
        "refuse",
        title="When the daily quota is short",
        description=(
            "If the account's template messages left for today (Beijing time) are fewer than "
            "the recipients. refuse: send nothing and say so. send_what_fits: send as many as "
            "the quota allows, pause, and continue by itself after midnight Beijing time."
        ),
        json_schema_extra={"position": 14.8},
    )

    @field_validator("audience_sql", "campaign_id", mode="before")
    @classmethod
    def _blank_audience_or_id_is_none(cls, value: Any) -> Any:
        return _empty_is_none(value)

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

    def frequency_cap_with(
        self, account_cap: int | None, account_hours: int
    ) -> tuple[int, int] | None:
        """(messages, hours) this campaign is capped at, or None for no cap: its own
        override where set, else the account's (`account_cap` None = the account has none)."""
        messages = account_cap if self.frequency_cap is None else self.frequency_cap
        if not messages:
            return None
        return messages, self.frequency_cap_hours or account_hours

    @model_validator(mode="after")
    def _retry_needs_the_campaign(self) -> Self:
        if self.retry_failed and not self.campaign_id:
            raise ValueError("retry_failed needs the campaign_id of the campaign to retry")
        if self.resend_unknown and not self.campaign_id:
            raise ValueError("resend_unknown needs the campaign_id of the campaign to continue")
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
        json_schema_extra=plain_input(1.1),
    )
    timezone: str = Field(
        "Asia/Shanghai",
        min_length=1,
        title="Time zone",
        description="IANA name of the zone whose midnight starts and ends the day.",
        json_schema_extra={"position": 1.2},
    )
    template_id: str | None = _template_id_field(DEMO_TEMPLATE_ID)
    data: dict[str, str] = _data_field(DEFAULT_DIGEST_DATA, DEFAULT_DIGEST_DATA)
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
        description="Also re-send this day's messages that failed for a passing reason "
        "(WeChat busy, daily quota used up).",
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
            # Never capped, but counted: docs/digests.md ("Digests and the frequency cap").
            frequency_cap=0,
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


#: The flows' parameters, as Prefect's form heads them.
CampaignForm = Annotated[
    CampaignParams,
    heading(
        "Campaign",
        "Who gets which message, how fast, and when to stop. Most fields can stay as they "
        "are; each says what empty means.",
    ),
]
DigestForm = Annotated[
    DigestParams,
    heading("Digest", "The day's digest: its template, the digest SQL and how it is sent."),
]
TestSendForm = Annotated[
    TestSendParams,
    heading("Test message", "The campaign's message, sent only to the OpenIDs below."),
]
