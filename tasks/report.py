"""What a campaign shows in the Prefect UI: a live progress bar and a final report.

Artifacts carry counts, errcodes and SQL — never a token, a secret or message content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from pydantic import BaseModel

from db.ledger import AWAITING_RECEIPT, failed_rows_sql
from tasks.plan import DryRunPlan
from wechat.errors import lookup

if TYPE_CHECKING:
    from uuid import UUID


# The receipt figures in the operator's words, in the order the report lists them
# (keys of db.ledger.receipt_counts).
RECEIPT_LABELS: dict[str, str] = {
    "delivered": "delivered",
    "user_block": "blocked by the user",
    "system_failed": "failed in WeChat",
    AWAITING_RECEIPT: "not yet received",
}


def artifact_key(campaign_id: str, suffix: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    cleaned = "".join(c if c.isalnum() else "-" for c in campaign_id.lower()).strip("-")
    return f"campaign-{cleaned}-{suffix}"[:100]


@dataclass
class Progress:
    """The run's progress artifact, updated as batches finish."""

    artifact_id: UUID | None
    description: str
    total: int | None = None
    done_before: int = 0  # rows a resumed campaign had already finished
    last: float = field(default=0.0)

    @classmethod
    def start(cls, campaign_id: str, name: str, total: int | None = None) -> Progress:
        """Create the progress artifact at 0 %."""
        description = f"Campaign {name} ({campaign_id})"
        artifact_id = create_progress_artifact(
            0.0, key=artifact_key(campaign_id, "progress"), description=description
        )
        return cls(artifact_id=artifact_id, description=description, total=total)

    def update(self, rows_seen: int, counts: Mapping[str, int]) -> None:
        """Move the bar (when the audience size is known) and say what happened so far."""
        if self.artifact_id is None:
            return
        seen = self.done_before + rows_seen
        percent = min(99.0, 100.0 * seen / self.total) if self.total else self.last
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        update_progress_artifact(
            self.artifact_id, percent, description=f"{self.description}: {summary}"
        )
        self.last = percent

    def finish(self) -> None:
        """100 %: every audience row has been handled."""
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, 100.0)


class CampaignReport(BaseModel):
    """The final report: counts per status, top errcodes with meanings, throughput, SQL."""

    campaign_id: str
    name: str
    status: str
    reason: str | None
    counts: dict[str, int]
    errcodes: list[dict[str, Any]]
    seconds: float
    messages_per_second: float
    sent_this_run: int = 0
    http_attempts: int = 0
    failed_sql: str
    dry_run: bool
    # db.ledger.receipt_counts at the time of the report; None when the caller has none
    # (a dry run sends nothing, so nothing can come back).
    receipts: dict[str, int] | None = None
    # A dry run's plan: its report is the plan, less the example messages (no content here).
    plan: DryRunPlan | None = None

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
    ) -> CampaignReport:
        """The report, with each errcode's class and meaning from the one errcode table.

        `receipts` is `db.ledger.receipt_counts` read by the caller (the report never reads
        the database itself, so the flow and `wxpush report` show the same thing).
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
                }
            )
        return cls(
            campaign_id=campaign_id,
            name=name,
            status=str(status),
            reason=reason,
            counts=dict(counts),
            errcodes=rows,
            seconds=round(seconds, 2),
            messages_per_second=round(sent_this_run / seconds, 1) if seconds else 0.0,
            sent_this_run=sent_this_run,
            http_attempts=http_attempts,
            failed_sql=failed_rows_sql(campaign_id),
            dry_run=dry_run,
            receipts=dict(receipts) if receipts is not None else None,
            plan=plan,
        )

    @classmethod
    def from_record(
        cls,
        record: Any,
        counts: Mapping[str, int],
        errcodes: Mapping[str, int],
        receipts: Mapping[str, int] | None = None,
    ) -> CampaignReport:
        """From a stored campaign row and the ledger (what `wxpush report` shows): the place
        to read receipts that arrived after the run, so pass the current receipt counts."""
        seconds = 0.0
        if record.started_at and record.finished_at:
            seconds = (record.finished_at - record.started_at).total_seconds()
        return cls.build(
            campaign_id=record.id,
            name=record.name,
            status=record.status,
            reason=record.status_reason,
            counts=counts,
            errcodes=errcodes,
            seconds=seconds,
            sent_this_run=counts.get("sent", 0),
            receipts=receipts,
        )

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
            f"**Time:** {self.seconds:.1f} s, {self.messages_per_second:.1f} messages/s",
        ]
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
        if self.has_receipt_section:
            lines += self._receipt_lines()
        if self.errcodes:
            lines += [
                "",
                "## Top errcodes",
                "",
                "| errcode | count | class | meaning |",
                "|---|---|---|---|",
                *(
                    f"| {e['errcode']} | {e['count']} | {e['class']} | {e['meaning']} |"
                    for e in self.errcodes
                ),
            ]
        if not self.dry_run:
            lines += ["", "## The failed rows", "", "```sql", self.failed_sql, "```"]
        return "\n".join(lines) + "\n"


def publish_report(report: CampaignReport) -> None:
    """The markdown report, the per-status table and (once something was sent) the receipt
    table, keyed per campaign (versioned)."""
    create_markdown_artifact(
        report.markdown(),
        key=artifact_key(report.campaign_id, "report"),
        description=f"Campaign {report.name}: {report.status}",
    )
    create_table_artifact(
        [{"status": k, "recipients": v} for k, v in sorted(report.counts.items())],
        key=artifact_key(report.campaign_id, "counts"),
        description=f"Campaign {report.name}: recipients per status",
    )
    if report.has_receipt_section:
        rate = report.delivery_rate
        so_far = f"delivery rate {rate:.1%}" if rate is not None else "no receipt yet"
        create_table_artifact(
            report.receipt_rows(),
            key=artifact_key(report.campaign_id, "receipts"),
            description=(
                f"Campaign {report.name}: delivery receipts at the end of the run ({so_far}); "
                f"they keep arriving: `wxpush report {report.campaign_id}` shows the current ones"
            ),
        )
