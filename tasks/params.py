"""`CampaignParams`: the campaign form an operator fills in the Prefect UI.

Every knob is in the operator's words, with bounds the UI enforces before a run exists
(listmonk's lesson: state the arithmetic in the help text). Cross-field rules that a JSON
schema cannot express are checked when the run starts, with a message saying what to fix.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MessageKind = Literal["template", "customer_service", "subscribe"]


class CampaignParams(BaseModel):
    """One campaign: who gets which message, how fast, and what to do when things fail."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=100,
        title="Campaign name",
        description="Shown in run names, reports and the campaigns table.",
        json_schema_extra={"position": 0},
    )
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
    template_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        title="Template ID",
        description="From the account's template library; required for template and subscribe.",
        json_schema_extra={"position": 3},
    )
    data: dict[str, str] = Field(
        default_factory=dict,
        title="Template fields",
        description=(
            "Field key → text. `{column}` is replaced by that column of the audience row, "
            "e.g. thing1 → `{nickname}, your order shipped`. Write `{{` for a literal brace."
        ),
        json_schema_extra={"position": 4},
    )
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
    audience_sql: str | None = Field(
        None,
        title="Audience SQL",
        description=(
            "A SELECT returning `openid` plus the columns the fields use; runs read-only with "
            "a timeout. Bind parameter `:app_id` is the app's AppID. Empty: every recipient of "
            "the app (unsubscribed ones are recorded as skipped). A `last_interaction_at` "
            "column drives the window; a `subscribed` column marks unsubscribed rows."
        ),
        json_schema_extra={"position": 9},
    )
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
        gt=0,
        le=10_000,
        title="Rate limit (messages/s)",
        description="Upper bound on sends per second for the whole campaign; empty = no limit.",
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
    dry_run: bool = Field(
        False,
        title="Dry run",
        description="Render and check every message and report the counts; send nothing.",
        json_schema_extra={"position": 15},
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

    @model_validator(mode="after")
    def _fits_the_kind(self) -> Self:
        if self.kind in ("template", "subscribe") and not self.template_id:
            raise ValueError(f"a {self.kind} campaign needs a template_id")
        if self.kind in ("template", "subscribe") and not self.data:
            raise ValueError(f"a {self.kind} campaign needs at least one template field in data")
        if self.kind == "customer_service" and not self.text:
            raise ValueError("a customer_service campaign needs a text")
        if self.retry_failed and not self.campaign_id:
            raise ValueError("retry_failed needs the campaign_id of the campaign to retry")
        return self
