"""What a dry run would do: counts per outcome, skipped by reason, invalid by field rule, and a
few example messages — built row by row by the flow, formatted in one place for the terminal.

Pure code (no Prefect, no I/O). A dry run stores nothing, so this plan, carried in the run's
result, is the only record of it. Example messages carry openids and rendered field values
(never a token or a secret); the report artifact leaves them out, as artifacts carry no
message content (tasks/report.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from db.outcomes import TOP_REASONS, SkipReason
from sending.message import (
    MessageSpec,
    RenderedMessage,
    client_msg_id_for,
    invalid_reason,
    render,
    unrenderable_reason,
)
from wechat.models import CustomMessage

#: Example messages a plan keeps (the first rows that would be sent).
EXAMPLES = 3
#: Skip reasons (`deliveries.reason`) in the operator's words.
SKIP_WORDS: dict[str, str] = {
    SkipReason.OUTSIDE_WINDOW: "outside the interaction window",
    SkipReason.UNSUBSCRIBED: "unsubscribed",
    SkipReason.NOTHING_TO_SEND: "nothing to send",
    SkipReason.FREQUENCY_CAP: "at the frequency cap (messaged enough lately)",
}


def skip_words(reason: str | None) -> str:
    """A skip reason (`deliveries.reason`) in the operator's words."""
    return SKIP_WORDS.get(str(reason), reason or "no reason recorded")


def invalid_table(top: Sequence[tuple[str | None, int]], total: int) -> list[str]:
    """Markdown rows of the most frequent invalid reasons, the rest of the `total` invalid
    rows summed in one line: the dry run's plan and the campaign report show the same."""
    rest = total - sum(n for _, n in top)
    return [
        "| reason | rows |",
        "|---|---|",
        *(f"| {(reason or 'no reason recorded').replace('|', '/')} | {n} |" for reason, n in top),
        *([f"| other reasons | {rest} |"] if rest > 0 else []),
    ]


class ExampleMessage(BaseModel):
    """One rendered message a run would send: the recipient and each field as WeChat gets it."""

    openid: str
    fields: dict[str, str]


def _fields(message: RenderedMessage) -> dict[str, str]:
    if isinstance(message, CustomMessage):
        return {"text": str(message.content.get("content", ""))}
    fields = {
        key: value if isinstance(value, str) else value.value for key, value in message.data.items()
    }
    link = getattr(message, "url", None) or getattr(message, "page", None)
    if link:
        fields["link"] = link
    if message.miniprogram is not None:
        fields["mini-program"] = f"{message.miniprogram.appid} {message.miniprogram.pagepath}"
    return fields


class DryRunPlan(BaseModel):
    """The figures of a dry run; `add` takes each audience row as the flow streams it."""

    name: str
    #: The campaign a run would continue; None for a new one (its id is made when it runs).
    campaign_id: str | None = None
    would_send: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    invalid: int = 0
    invalid_reasons: dict[str, int] = Field(default_factory=dict)
    examples: list[ExampleMessage] = Field(default_factory=list)

    @property
    def audience(self) -> int:
        """Every row the audience SQL returned that this campaign had not handled yet."""
        return self.would_send + sum(self.skipped.values()) + self.invalid

    def add(
        self, spec: MessageSpec, campaign_id: str, row: Mapping[str, Any], skip: str | None
    ) -> str:
        """Count one audience row as the run would; returns its `counts` key."""
        if skip:
            skip = str(skip)
            self.skipped[skip] = self.skipped.get(skip, 0) + 1
            return f"skipped:{skip}"
        openid = str(row.get("openid") or "")
        try:
            rendered = render(spec, row, client_msg_id=client_msg_id_for(campaign_id, openid))
        except Exception as exc:  # a value whose str() fails: the real run records it invalid
            reason = unrenderable_reason(exc)
        else:
            if not isinstance(rendered, list):
                self.would_send += 1
                if len(self.examples) < EXAMPLES:
                    self.examples.append(ExampleMessage(openid=openid, fields=_fields(rendered)))
                return "would_send"
            reason = invalid_reason(rendered)
        self.invalid += 1
        self.invalid_reasons[reason] = self.invalid_reasons.get(reason, 0) + 1
        return "invalid"

    def counts(self) -> dict[str, int]:
        """The run's `counts`: would_send, invalid and skipped:<reason>."""
        counts = Counter({"would_send": self.would_send, "invalid": self.invalid})
        counts.update({f"skipped:{reason}": n for reason, n in self.skipped.items()})
        return {key: n for key, n in counts.items() if n}

    def top_invalid(self) -> list[tuple[str, int]]:
        """The most frequent invalid reasons, most frequent first."""
        return sorted(self.invalid_reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]

    def markdown(self, *, examples: bool = True) -> str:
        """The plan as markdown: what `--dry-run` prints and the dry run's report artifact
        shows (without `examples`)."""
        lines = [
            f"# Dry run of campaign {self.name}",
            "",
            "Nothing was sent and nothing was recorded: this is what a run would do now.",
        ]
        if self.campaign_id:
            lines += ["", f"**Campaign ID:** `{self.campaign_id}`"]
        lines += [
            "",
            "| outcome | recipients |",
            "|---|---|",
            f"| would send | {self.would_send} |",
            *(
                f"| skipped: {skip_words(reason)} | {n} |"
                for reason, n in sorted(self.skipped.items())
            ),
            f"| invalid | {self.invalid} |",
            f"| audience | {self.audience} |",
        ]
        if self.would_send:
            lines += [
                "",
                "WeChat may still refuse some of the sends (a follower who blocked the account, "
                "one who unfollowed since); the report of the real run counts those as failed.",
            ]
        if self.invalid:
            lines += [
                "",
                "## Invalid rows by reason",
                "",
                "These rows break WeChat's field rules (docs/template-fields.md); a run records "
                "them as invalid and never sends them.",
                "",
                *invalid_table(self.top_invalid(), self.invalid),
            ]
        if not examples:
            lines += [
                "",
                "Example messages carry recipients' data, so they are not kept here: "
                "`wxpush campaign run --dry-run …` prints a few.",
            ]
        else:
            lines += ["", "## Example messages", ""]
            if not self.examples:
                lines.append("None: no row would be sent.")
            for number, example in enumerate(self.examples, 1):
                lines.append(f"{number}. to `{example.openid}`")
                lines += [f"   - {key}: {value}" for key, value in example.fields.items()]
        return "\n".join(lines) + "\n"
