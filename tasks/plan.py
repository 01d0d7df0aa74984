"""What a dry run would do: counts per outcome, skipped by reason, invalid by field rule, and a
few example messages — built row by row by the flow, formatted in one place for the terminal.

Pure code (no Prefect, no I/O). A dry run stores nothing, so this plan, carried in the run's
result, is the only record of it. Example messages carry openids and rendered field values
(never a token or a secret); the report artifact leaves them out, as artifacts carry no
message content (tasks/report.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from db.outcomes import SkipReason
from tasks.message import MessageSpec, RenderedMessage, client_msg_id_for, render
from wechat.fields import FieldProblem
from wechat.models import CustomMessage

#: Example messages a plan keeps (the first rows that would be sent).
EXAMPLES = 3
#: Invalid reasons a plan lists, most frequent first; the rest are summed in one line.
TOP_INVALID = 5
#: Skip reasons (`deliveries.reason`) in the operator's words.
SKIP_WORDS: dict[str, str] = {
    SkipReason.OUTSIDE_WINDOW: "outside the interaction window",
    SkipReason.UNSUBSCRIBED: "unsubscribed",
    SkipReason.NOTHING_TO_SEND: "nothing to send",
}


class ExampleMessage(BaseModel):
    """One rendered message a run would send: the recipient and each field as WeChat gets it."""

    openid: str
    fields: dict[str, str]


def rule_of(problem: FieldProblem) -> str:
    """The field rule a value breaks, without the value's own detail ("…; got 27"), so rows
    breaking the same rule count together and no recipient's text reaches the plan."""
    return str(problem).split("; got ", 1)[0]


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
            rendered_reasons = [f"could not render the message ({type(exc).__name__})"]
        else:
            if not isinstance(rendered, list):
                self.would_send += 1
                if len(self.examples) < EXAMPLES:
                    self.examples.append(ExampleMessage(openid=openid, fields=_fields(rendered)))
                return "would_send"
            rendered_reasons = [rule_of(problem) for problem in rendered]
        self.invalid += 1
        reason = "; ".join(rendered_reasons)
        self.invalid_reasons[reason] = self.invalid_reasons.get(reason, 0) + 1
        return "invalid"

    def counts(self) -> dict[str, int]:
        """The run's `counts`: would_send, invalid and skipped:<reason>."""
        counts = Counter({"would_send": self.would_send, "invalid": self.invalid})
        counts.update({f"skipped:{reason}": n for reason, n in self.skipped.items()})
        return {key: n for key, n in counts.items() if n}

    def top_invalid(self) -> list[tuple[str, int]]:
        """The most frequent invalid reasons, most frequent first."""
        return sorted(self.invalid_reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_INVALID]

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
                f"| skipped: {SKIP_WORDS.get(reason, reason)} | {n} |"
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
            top = self.top_invalid()
            rest = self.invalid - sum(n for _, n in top)
            lines += [
                "",
                "## Invalid rows by reason",
                "",
                "These rows break WeChat's field rules (docs/template-fields.md); a run records "
                "them as invalid and never sends them.",
                "",
                "| reason | rows |",
                "|---|---|",
                *(f"| {reason} | {n} |" for reason, n in top),
                *([f"| other reasons | {rest} |"] if rest else []),
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
