"""What the parts measure, one dataclass per kind of run, and the `Report` holding them all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CeilingRun:
    """One bare loop: no database, no Prefect, the campaign's messages to its followers."""

    stack: str
    concurrency: int
    sent: int
    ok: int
    seconds: float
    accepted: int
    sim_cpu_us: float | None
    client_cpu_us: float | None  # this process, warm-up included
    when: str = "before"  # before the campaigns, "again" before the large ones, "after" them

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


@dataclass
class ChildAnswer:
    """One child process: its JSON answer and what the kernel says it used (wait4)."""

    payload: dict[str, Any] | None
    returncode: int | None
    wall: float
    cpu: float
    max_rss: int  # bytes
    timed_out: bool
    log_tail: str = ""

    @property
    def error(self) -> str | None:
        if self.timed_out:
            return "killed at the part's deadline (--max-seconds)"
        if self.payload is None:
            return f"exited {self.returncode} without an answer:\n{self.log_tail}"
        return self.payload.get("error")


@dataclass
class CampaignRun:
    """One `push_campaign` child: its figures, the ledger's and the other processes' CPU."""

    part: str
    recipients: int
    batch_size: int
    concurrency: int
    rate_per_second: float | None
    dry_run: bool
    sent: int = 0
    rows: int = 0
    flow_seconds: float = 0.0
    span_seconds: float | None = None
    accepted: int | None = None
    campaign_cpu: float = 0.0
    sim_cpu: float | None = None
    server_cpu: float | None = None
    db_cpu: float | None = None
    peak_rss: int = 0
    rss_ready: int = 0
    longest_pause: float | None = None  # the widest gap between two first attempts
    longest_pause_after: int | None = None  # how many messages were attempted before it
    status: str = ""
    error: str | None = None

    @property
    def wall_rate(self) -> float:
        return self.sent / self.flow_seconds if self.flow_seconds else 0.0

    @property
    def span_rate(self) -> float | None:
        return self.sent / self.span_seconds if self.span_seconds else None

    @property
    def consistent(self) -> bool:
        return self.error is None and (self.dry_run or self.accepted == self.sent)

    def per_message_us(self, seconds: float | None) -> float | None:
        count = self.sent or self.rows
        return None if seconds is None or not count else seconds / count * 1e6


@dataclass
class MapRun:
    """The one-task-per-message flow."""

    messages: int
    workers: int
    sent: int
    flow_seconds: float
    accepted: int
    peak_rss: int
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.flow_seconds if self.flow_seconds else 0.0


@dataclass
class Report:
    """Everything measured, printed as tables and as one JSON line."""

    conditions: dict[str, Any] = field(default_factory=dict)
    seeding: list[dict[str, Any]] = field(default_factory=list)
    ceiling: list[CeilingRun] = field(default_factory=list)
    e2e: list[CampaignRun] = field(default_factory=list)
    rate: list[CampaignRun] = field(default_factory=list)
    rss: list[CampaignRun] = field(default_factory=list)
    map: list[MapRun] = field(default_factory=list)
    profile: dict[str, Any] | None = None

    def ceiling_run(self) -> CeilingRun | None:
        """The fastest httpx + aiohttp-transport loop: the issue's raw ceiling."""
        runs = [r for r in self.ceiling if r.stack == "httpx-aiohttp"]
        return max(runs, key=lambda r: r.rate, default=None)
