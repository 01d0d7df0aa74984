"""What a campaign shows in the Prefect UI: a live progress bar and a final report.

Artifacts carry counts, errcodes and SQL — never a token, a secret or message content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prefect.artifacts import (
    acreate_progress_artifact,
    aupdate_progress_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from pydantic import BaseModel, Field

from db.ledger import AWAITING_RECEIPT, LedgerFigures, failed_rows_sql, unknown_rows_sql
from sending.plan import DryRunPlan, invalid_table, skip_words
from tasks.quota import QuotaToday
from wechat.errors import lookup

if TYPE_CHECKING:
    from uuid import UUID


# The receipt figures in the operator's words, in the order the report lists them
# (keys of db.ledger.receipt_counts).
RECEIPT_LABELS: dict[str, str] = {
    "delivered": "delivered",
    "user_block": "blocked by the user",
    "freq_limited": "held back by WeChat (sent too often)",
    "system_failed": "failed in WeChat",
    AWAITING_RECEIPT: "not yet received",
}


def artifact_key(campaign_id: str, suffix: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    cleaned = "".join(c if c.isalnum() else "-" for c in campaign_id.lower()).strip("-")
    return f"campaign-{cleaned}-{suffix}"[:100]


@dataclass
class Progress:
    """The run's progress artifact, updated as batches finish.

    Async: awaited on the campaign flow's loop, it uses the flow's own Prefect client (a
    sync call from there would open a client, TLS context and all, for every batch).
    The other artifacts here are written once per run and pass `_sync=True`: inside an
    async flow Prefect's dispatch would otherwise return a coroutine and create nothing."""

    artifact_id: UUID | None
    description: str
    total: int | None = None
    done_before: int = 0  # rows a resumed campaign had already finished
    last: float = field(default=0.0)

    @classmethod
    async def start(cls, campaign_id: str, name: str, total: int | None = None) -> Progress:
        """Create the progress artifact at 0 %."""
        description = f"Progress of campaign {name}"
        artifact_id = await acreate_progress_artifact(
            0.0,
            key=artifact_key(campaign_id, "progress"),
            description=f"{description}: the share of its audience handled so far",
        )
        return cls(artifact_id=artifact_id, description=description, total=total)

    async def update(self, rows_seen: int, counts: Mapping[str, int]) -> None:
        """Move the bar (when the audience size is known) and say what happened so far."""
        if self.artifact_id is None:
            return
        seen = self.done_before + rows_seen
        percent = min(99.0, 100.0 * seen / self.total) if self.total else self.last
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        await aupdate_progress_artifact(
            self.artifact_id, percent, description=f"{self.description}: {summary}"
        )
        self.last = percent

    async def finish(self) -> None:
        """100 %: every audience row has been handled."""
        if self.artifact_id is not None:
            await aupdate_progress_artifact(self.artifact_id, 100.0)


#: What the report's time measures: one run, or the campaign's whole life (`wxpush report`).
TimeScope = Literal["run", "campaign"]
#: The report's two throughputs say what they measure (docs/analytics.md, "Two throughputs").
TIME_LABELS: dict[TimeScope, str] = {
    "run": (
        "**Run time:** {seconds:.2f} s, this run from its start to its end (loading the app, "
        "preflight, counting the audience, sending, recording): {rate:.1f} messages/s for "
        "the {sent} sent this run"
    ),
    "campaign": (
        "**Time:** {seconds:.2f} s from the campaign's first start to its last end (every "
        "run, and any pause before a resume): {rate:.1f} messages/s for the {sent} sent"
    ),
}
SEND_SPAN_LABEL = (
    "**Send span:** {seconds:.2f} s from the first to the last accepted send, over every run "
    "of the campaign: {rate} (the `campaign_stats` view's `duration_seconds` and "
    "`messages_per_second`)"
)


class CampaignReport(BaseModel):
    """The final report: counts per status, why rows were skipped or invalid, top errcodes
    with meanings, the two throughputs (whole run; first to last send), the SQL of the failed
    rows and of those in doubt."""

    campaign_id: str
    name: str
    status: str
    reason: str | None
    counts: dict[str, int]
    errcodes: list[dict[str, Any]]
    # Wall time of `time_scope` (see TIME_LABELS) and the sent rows over it.
    seconds: float
    messages_per_second: float
    time_scope: TimeScope = "run"
    sent_this_run: int = 0
    http_attempts: int = 0
    # From the first to the last accepted send (all runs) and sent ÷ that: the
    # `campaign_stats` view's figures; None when nothing was sent (the rate: or a span of 0).
    send_seconds: float | None = None
    send_rate: float | None = None
    failed_sql: str
    # The rows in doubt (status unknown), listed when there are any.
    unknown_sql: str = ""
    dry_run: bool
    # db.ledger.receipt_counts at the time of the report; None when the caller has none
    # (a dry run sends nothing, so nothing can come back).
    receipts: dict[str, int] | None = None
    # Rows per skip reason, and the most frequent invalid reasons (db.ledger.reason_counts).
    skipped: dict[str, int] = Field(default_factory=dict)
    invalid_reasons: list[tuple[str | None, int]] = Field(default_factory=list)
    # A dry run's plan: its report is the plan, less the example messages (no content here).
    plan: DryRunPlan | None = None
    # The account's daily template quota today, used and left (the run's report only).
    quota: QuotaToday | None = None

    @classmethod
    def build(
        cls,
        *,
        campaign_id: str,
        name: str,
        status: str,
        reason: str | None,
        counts: Mapping[str, int],
        errcodes: Mapping[str, int],
        seconds: float,
        sent_this_run: int = 0,
        http_attempts: int = 0,
        dry_run: bool = False,
        receipts: Mapping[str, int] | None = None,
        plan: DryRunPlan | None = None,
        figures: LedgerFigures | None = None,
        time_scope: TimeScope = "run",
        quota: QuotaToday | None = None,
    ) -> CampaignReport:
        """The report, with each errcode's class, meaning and fix from the one errcode table.

        `figures` (db.ledger.ledger_figures, read by the caller) gives the counts, receipts,
        reasons and send span; without it `counts` and `receipts` are all there is. The
        report never reads the database itself, so the flow and `wxpush report` show the
        same thing.
        """
        rows = []
        for code, count in sorted(errcodes.items(), key=lambda kv: -kv[1])[:10]:
            row = lookup(int(code))
            rows.append(
                {
                    "errcode": int(code),
                    "count": count,
                    "class": str(row.error_class),
                    "meaning": row.meaning,
                    "fix": row.fix,
                }
            )
        if figures is not None:
            counts, receipts = figures.counts, figures.receipts
        return cls(
            campaign_id=campaign_id,
            name=name,
            status=str(status),
            reason=reason,
            counts=dict(counts),
            errcodes=rows,
            seconds=round(seconds, 2),
            messages_per_second=round(sent_this_run / seconds, 1) if seconds else 0.0,
            time_scope=time_scope,
            sent_this_run=sent_this_run,
            http_attempts=http_attempts,
            send_seconds=figures.send_seconds if figures else None,
            send_rate=figures.send_rate if figures else None,
            failed_sql=failed_rows_sql(campaign_id),
            unknown_sql=unknown_rows_sql(campaign_id),
            dry_run=dry_run,
            receipts=dict(receipts) if receipts is not None else None,
            skipped=dict(figures.skipped) if figures else {},
            invalid_reasons=list(figures.invalid_reasons) if figures else [],
            plan=plan,
            quota=quota,
        )

    @classmethod
    def from_record(
        cls, record: Any, figures: LedgerFigures, errcodes: Mapping[str, int]
    ) -> CampaignReport:
        """From a stored campaign row and the ledger (what `wxpush report` shows): the place
        to read receipts that arrived after the run, so pass figures read now. Its time is
        the campaign's whole life, every run and the pauses between them."""
        seconds = 0.0
        if record.started_at and record.finished_at:
            seconds = (record.finished_at - record.started_at).total_seconds()
        return cls.build(
            campaign_id=record.id,
            name=record.name,
            status=record.status,
            reason=record.status_reason,
            counts=figures.counts,
            errcodes=errcodes,
            seconds=seconds,
            sent_this_run=figures.counts.get("sent", 0),
            figures=figures,
            time_scope="campaign",
        )

    def _time_lines(self) -> list[str]:
        lines = [
            TIME_LABELS[self.time_scope].format(
                seconds=self.seconds, rate=self.messages_per_second, sent=self.sent_this_run
            )
        ]
        if self.send_seconds is not None:
            rate = self.send_rate
            said = f"{rate:.1f} messages/s" if rate is not None else "no rate (a single instant)"
            lines.append(SEND_SPAN_LABEL.format(seconds=self.send_seconds, rate=said))
        return lines

    def _reason_lines(self) -> list[str]:
        lines: list[str] = []
        if self.skipped:
            lines += [
                "",
                "## Skipped rows by reason",
                "",
                "Not sent on purpose; a resume does not send them either.",
                "",
                "| reason | rows |",
                "|---|---|",
                *(
                    f"| {skip_words(reason)} | {n} |"
                    for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
                ),
            ]
        invalid = self.counts.get("invalid", 0)
        if invalid and self.invalid_reasons:
            lines += [
                "",
                "## Invalid rows by reason",
                "",
                "These rows break WeChat's field rules (docs/template-fields.md); they were "
                "recorded as invalid and never sent.",
                "",
                *invalid_table(self.invalid_reasons, invalid),
            ]
        return lines

    @property
    def has_receipt_section(self) -> bool:
        """Only a campaign with sent rows can get receipts; without any the section would be
        a table of zeros that says nothing."""
        return sum((self.receipts or {}).values()) > 0

    @property
    def receipts_received(self) -> int:
        """Sent rows WeChat has reported on so far (any receipt status)."""
        found = self.receipts or {}
        return sum(n for key, n in found.items() if key != AWAITING_RECEIPT)

    @property
    def delivery_rate(self) -> float | None:
        """delivered ÷ receipts received (as `campaign_stats.delivery_rate`); None before the
        first receipt, since a rate over nothing would read as 0 % delivered."""
        received = self.receipts_received
        if not received:
            return None
        return (self.receipts or {}).get("delivered", 0) / received

    def receipt_rows(self) -> list[dict[str, Any]]:
        """The receipt figures as table rows, in the operator's words (markdown and artifact)."""
        found = self.receipts or {}
        return [
            {"receipt": label, "messages": found.get(key, 0)}
            for key, label in RECEIPT_LABELS.items()
        ]

    def _receipt_lines(self) -> list[str]:
        rate = self.delivery_rate
        if rate is None:
            rate_line = "**Delivery rate:** not known yet: no receipt has arrived so far."
        else:
            delivered = (self.receipts or {}).get("delivered", 0)
            rate_line = (
                f"**Delivery rate:** {rate:.1%} ({delivered} delivered "
                f"of the {self.receipts_received} receipts received so far)"
            )
        return [
            "",
            "## Delivery receipts",
            "",
            "WeChat reports whether each sent message reached the user by callback, some time "
            "after the send (template messages only), so these figures grow after the run; "
            f"`wxpush report {self.campaign_id}` shows the current ones.",
            "",
            "| receipt | messages |",
            "|---|---|",
            *(f"| {row['receipt']} | {row['messages']} |" for row in self.receipt_rows()),
            "",
            rate_line,
        ]

    def markdown(self) -> str:
        """The report as markdown (also what `wxpush report` prints)."""
        if self.plan is not None:
            return self.plan.markdown(examples=False)
        lines = [
            f"# Campaign {self.name}",
            "",
            f"**Status:** {self.status}" + (f" — {self.reason}" if self.reason else ""),
            f"**Campaign ID:** `{self.campaign_id}`",
            *self._time_lines(),
        ]
        if self.quota is not None:
            lines.append(self.quota.line())
        if self.http_attempts:
            retries = self.http_attempts - self.sent_this_run
            lines.append(
                f"**This run:** {self.sent_this_run} sent with {self.http_attempts} HTTP "
                f"attempts (retries and refused sends: {max(retries, 0)})"
            )
        lines += [
            "",
            "| status | recipients |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in sorted(self.counts.items()) if v),
        ]
        lines += self._reason_lines()
        if self.has_receipt_section:
            lines += self._receipt_lines()
        if self.errcodes:
            lines += [
                "",
                "## Top errcodes",
                "",
                "| errcode | count | class | meaning | what to do |",
                "|---|---|---|---|---|",
                *(
                    f"| {e['errcode']} | {e['count']} | {e['class']} | {e['meaning']} "
                    f"| {e['fix']} |"
                    for e in self.errcodes
                ),
            ]
        if not self.dry_run:
            lines += ["", "## The failed rows", "", "```sql", self.failed_sql, "```"]
        lines += self._unknown_lines()
        return "\n".join(lines) + "\n"

    def _unknown_lines(self) -> list[str]:
        unknown = self.counts.get("unknown", 0)
        if not unknown or not self.unknown_sql:
            return []
        return [
            "",
            "## Recipients in doubt (unknown)",
            "",
            f"{unknown} messages went out but their answer was lost (the process was killed "
            "before recording it), too long ago for WeChat to drop a repeat: they may or may "
            "not have arrived. A resume does not send them again; "
            f"`wxpush campaign resume {self.campaign_id} --resend-unknown` does, and each of "
            "them may then get the message twice (docs/operations.md).",
            "",
            "```sql",
            self.unknown_sql,
            "```",
        ]


def publish_report(report: CampaignReport) -> None:
    """The markdown report, the per-status table and (once something was sent) the receipt
    table, keyed per campaign (versioned); each description says what it is."""
    what = (
        "what a run would send, skip and refuse"
        if report.plan is not None
        else "counts, why rows were skipped or invalid, errcodes, time"
    )
    create_markdown_artifact(
        report.markdown(),
        key=artifact_key(report.campaign_id, "report"),
        description=f"Report of campaign {report.name} ({report.status}): {what}",
        _sync=True,
    )
    create_table_artifact(
        [{"status": k, "recipients": v} for k, v in sorted(report.counts.items())],
        key=artifact_key(report.campaign_id, "counts"),
        description=f"Recipients per status of campaign {report.name}, as a table",
        _sync=True,
    )
    if report.has_receipt_section:
        rate = report.delivery_rate
        so_far = f"delivery rate {rate:.1%}" if rate is not None else "no receipt yet"
        create_table_artifact(
            report.receipt_rows(),
            key=artifact_key(report.campaign_id, "receipts"),
            description=(
                f"Delivery receipts of campaign {report.name} at the end of the run ({so_far}); "
                f"they keep arriving: `wxpush report {report.campaign_id}` shows the current ones"
            ),
            _sync=True,
        )


def stop_markdown(
    *, name: str, campaign_id: str | None, status: str, reason: str, counts: Mapping[str, int]
) -> str:
    """Why a run stopped before its report (preflight refused it, the audience SQL failed,
    WeChat refused the app's settings, …): the reason, which names the fix, and what the
    ledger holds so far. No row values, like every artifact."""
    done = ", ".join(f"{n} {key}" for key, n in sorted(counts.items()) if n)
    lines = [
        f"# Campaign {name} stopped: {status}",
        "",
        f"**Why:** {reason}",
    ]
    if campaign_id:
        lines.append(f"**Campaign ID:** `{campaign_id}`")
    lines += [
        "",
        f"So far: {done}. The ledger keeps them; a resume never sends a recipient twice."
        if done
        else "Nothing was sent.",
    ]
    return "\n".join(lines) + "\n"


def publish_stop(
    run_id: str,
    *,
    name: str,
    campaign_id: str | None,
    status: str,
    reason: str,
    counts: Mapping[str, int],
) -> None:
    """The "why it stopped" artifact of a run that ended before its report, keyed by
    `run_id` (the campaign's id, or a dry run's own)."""
    create_markdown_artifact(
        stop_markdown(
            name=name, campaign_id=campaign_id, status=status, reason=reason, counts=counts
        ),
        key=artifact_key(run_id, "stopped"),
        description=f"Why campaign {name} stopped ({status}), and what to fix",
        _sync=True,
    )
