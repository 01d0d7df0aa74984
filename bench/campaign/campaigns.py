"""One `push_campaign` run in a child, measured: the parent resets the simulator, runs the
child, reads the ledger and checks the simulator accepted exactly what the ledger says was sent.
Used by the e2e, rate, rss and profile parts."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from bench.campaign.common import (
    APP,
    MIB,
    RSS_APP,
    RSS_APP_ID,
    TEMPLATE_DATA,
    URL_TEMPLATE,
    WINDOW_HOURS,
    as_datetime,
    audience_sql,
    pause_ms,
)
from bench.campaign.results import CampaignRun, Report
from bench.campaign.runner import run_child
from bench.campaign.services import Bench, postgres_cpu, tree_cpu
from bench.simulator import cpu_seconds
from db.models import deliveries
from wechat.simulator.defaults import DEMO_TEMPLATE_ID


@dataclass(frozen=True)
class CampaignSpec:
    part: str
    recipients: int
    batch_size: int
    concurrency: int
    rate_per_second: float | None = None
    dry_run: bool = False
    app: str = APP

    def params(self) -> dict[str, Any]:
        name = f"bench-{self.part}-{self.recipients}-b{self.batch_size}-c{self.concurrency}"
        return {
            "name": name + ("-dry" if self.dry_run else ""),
            "app": self.app,
            "template_id": DEMO_TEMPLATE_ID,
            "data": TEMPLATE_DATA,
            "url": URL_TEMPLATE,
            "audience_sql": audience_sql(self.recipients),
            "window_hours": WINDOW_HOURS,
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            "rate_per_second": self.rate_per_second,
            "dry_run": self.dry_run,
            "max_error_ratio": 0.5,
        }


@dataclass
class CpuSnapshot:
    simulator: float | None
    server: float | None
    postgres: float | None

    @classmethod
    def take(cls, bench: Bench) -> CpuSnapshot:
        return cls(
            cpu_seconds(bench.sim.process.pid),
            tree_cpu(bench.server.child.pid),
            postgres_cpu() if bench.postgres else None,
        )


def delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def run_campaign(
    bench: Bench, spec: CampaignSpec, deadline: float, profile: Path | None = None
) -> CampaignRun:
    """Reset the simulator, run the campaign in a child, read the ledger, check the counts."""
    run = CampaignRun(
        spec.part,
        spec.recipients,
        spec.batch_size,
        spec.concurrency,
        spec.rate_per_second,
        spec.dry_run,
    )
    bench.sim.admin.reset()
    app_id = RSS_APP_ID if spec.app == RSS_APP else bench.sim.app_id
    child_spec = {"app": bench.app_values(spec.app, app_id), "params": spec.params()}
    before = CpuSnapshot.take(bench)
    child = run_child(bench, "campaign", child_spec, deadline, profile)
    after = CpuSnapshot.take(bench)
    run.sim_cpu = delta(after.simulator, before.simulator)
    run.server_cpu = delta(after.server, before.server)
    run.db_cpu = delta(after.postgres, before.postgres)
    run.peak_rss, run.campaign_cpu = child.max_rss, child.cpu
    run.error = child.error
    if child.payload is None or "result" not in child.payload:
        return run
    result = child.payload["result"]
    run.status = result["status"]
    run.flow_seconds = child.payload["wall"]
    run.campaign_cpu = child.payload["cpu"]  # the flow call only, not imports and setup
    run.rss_ready = child.payload["rss_ready"]
    counts = result["counts"]
    if spec.dry_run:
        run.rows = sum(counts.values())
        run.sent = counts.get("would_send", 0)
        return run
    run.sent, run.span_seconds = ledger_figures(bench.engine, result["campaign_id"])
    run.longest_pause, run.longest_pause_after = longest_pause(bench.engine, result["campaign_id"])
    run.rows = sum(counts.values())
    run.accepted = bench.sim.admin.counters().accepted
    return run


def ledger_figures(engine: Engine, campaign_id: str) -> tuple[int, float | None]:
    """(rows sent, seconds from the first attempt to the last sent_at) from the ledger."""
    query = select(
        func.count(),
        func.min(deliveries.c.first_attempt_at),
        func.max(deliveries.c.sent_at),
    ).where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == "sent")
    with engine.connect() as conn:
        sent, first, last = conn.execute(query).one()
    if first is None or last is None:
        return int(sent), None
    return int(sent), (as_datetime(last) - as_datetime(first)).total_seconds()


def longest_pause(engine: Engine, campaign_id: str) -> tuple[float | None, int | None]:
    """The widest gap between consecutive first attempts, and how many messages were attempted
    before it: where a run stopped sending, e.g. waiting for its next batch (issue 15: 5.2 s
    once each batch read the whole campaign; late in the run when it grows with it)."""
    query = (
        select(deliveries.c.first_attempt_at)
        .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == "sent")
        .order_by(deliveries.c.first_attempt_at)
    )
    with engine.connect() as conn:
        stamps = [as_datetime(value) for value in conn.execute(query).scalars()]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    if not gaps:
        return None, None
    widest = max(range(len(gaps)), key=gaps.__getitem__)
    return gaps[widest], widest + 1


def describe(run: CampaignRun) -> str:
    if run.error:
        return f"FAILED: {run.error}"
    if run.dry_run:
        return (
            f"{run.rows:,} rows ({run.sent:,} would send) in {run.flow_seconds:.1f} s, "
            f"peak RSS {run.peak_rss / MIB:,.0f} MiB"
        )
    span = f"{run.span_rate:,.0f}/s over the send span" if run.span_rate else "no span"
    check = "accepted = sent" if run.consistent else f"MISMATCH accepted={run.accepted}"
    return (
        f"{run.sent:,} sent in {run.flow_seconds:.1f} s: {run.wall_rate:,.0f}/s ({span}); "
        f"longest pause {pause_ms(run.longest_pause)} ms (after {run.longest_pause_after or 0:,} "
        f"sent); {run.status}; {check}"
    )


def best_config(report: Report) -> tuple[int, int]:
    """The e2e grid's fastest (batch, concurrency), or the defaults if e2e did not run."""
    good = [r for r in report.e2e if r.consistent]
    if not good:
        return 1000, 16
    best = max(good, key=lambda r: (r.recipients, r.wall_rate))
    return best.batch_size, best.concurrency
