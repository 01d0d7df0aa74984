"""One campaign across several workers: the parent run's side of `shards` > 1.

The parent `push-campaign` run starts one `push-campaign-shard` flow run per shard
(`run_deployment`, linked as its subflows, so the UI shows them under it), and any worker
of the pool picks each up. It then watches them: the ledger's counts move its progress
bar (one bar for every shard), each shard's heartbeat row (db/shards.py) says it is
alive. A shard that stopped beating (its worker was killed: Prefect 3.9 keeps such a run
Running forever) or that crashed is marked Crashed, in Prefect and in its row, and run
again; its rows in flight are sent again with the same client_msg_id inside WeChat's
dedupe window, so nobody gets the message twice (db/ledger.py). What the shards ended as
becomes the parent's one stop; the parent closes the campaign from the ledger.
docs/scaling.md, "One campaign across several workers", has the measurements behind this.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import arun_deployment
from prefect.states import Cancelled, Cancelling, Crashed, State

from db import shards as shard_rows
from db.ledger import status_counts
from sending.sender import StopKind, StopSignal
from tasks.database import audience_engine, engine
from tasks.ending import CampaignFailed
from tasks.report import Progress

#: The deployment each shard runs as ("<flow>/<deployment>", prefect.yaml).
SHARD_DEPLOYMENT = "push-campaign-shard/push-campaign-shard"
#: How often a shard's run writes its heartbeat.
HEARTBEAT_SECONDS = 2.0
#: A running shard whose heartbeat is older than this is declared crashed and run again.
STALE_AFTER_SECONDS = 12.0
#: How often the parent looks at its shards and moves the progress bar.
WATCH_SECONDS = 1.0
#: Runs per shard in one parent run before the campaign pauses instead of trying again.
MAX_RUNS_PER_SHARD = 3
#: After the parent stopped (Ctrl-C, cancel), how long the shards get to end.
SHARD_GRACE_SECONDS = 60.0


def sharding_refusal(shards: int) -> str | None:
    """Why `shards` cannot be used with this process's databases, in one line (None: it can).

    Several processes write one campaign's ledger at once, and the audience is split with
    md5() in SQL: both need PostgreSQL."""
    if shards <= 1:
        return None
    for setting, used in (
        ("WXPUSH_DATABASE_URL", engine()),
        ("WXPUSH_AUDIENCE_DATABASE_URL", audience_engine()),
    ):
        if used.dialect.name != "postgresql":
            return (
                f"shards={shards} needs PostgreSQL, and {setting} is {used.dialect.name}: set "
                "WXPUSH_DATABASE_URL=postgresql://… (docs/scaling.md), or send with shards=1"
            )
    return None


@dataclass
class ShardsDone:
    """What the shards did in this parent run, for its report."""

    sent: int = 0
    http_attempts: int = 0
    errcodes: Counter[str] = field(default_factory=Counter)
    reruns: int = 0


#: The parent's stop for how a shard ended (a shard that finished adds none).
_STOP_FOR: dict[str, StopKind] = {"paused": "pause", "failed": "stop", "cancelled": "cancel"}


class _Watch:
    """The parent's view of its shards while they send."""

    def __init__(self, campaign_id: str, shards: int, stop: StopSignal) -> None:
        self.campaign_id = campaign_id
        self.shards = shards
        self.stop = stop
        self.runs: dict[int, str] = {}  # shard → its current flow run
        self.reruns = 0
        self.log = get_run_logger()
        self.created: dict[int, float] = {}  # shard → when its current run was created

    async def start(self, shard: int) -> None:
        run = await arun_deployment(
            SHARD_DEPLOYMENT,
            parameters={"campaign_id": self.campaign_id, "shard": shard, "shards": self.shards},
            flow_run_name=f"shard-{shard + 1}-of-{self.shards}",
            timeout=0,
            as_subflow=True,
        )
        self.runs[shard] = str(run.id)
        self.created[shard] = time.monotonic()
        with engine().begin() as conn:
            shard_rows.assign(conn, self.campaign_id, shard, str(run.id))

    async def crashed(self, record: shard_rows.ShardRecord, why: str) -> None:
        """Declare the shard's run crashed (its row, and Prefect's state unless final) and
        run the shard again: not once the campaign stopped, and after MAX_RUNS_PER_SHARD
        runs the campaign pauses instead."""
        run_id = self.runs[record.shard]
        with engine().begin() as conn:
            shard_rows.mark_crashed(conn, self.campaign_id, record.shard, run_id, why)
        async with get_client() as client:
            run = await client.read_flow_run(UUID(run_id))
            if run.state is None or not run.state.is_final():
                state = run.state.name if run.state else "no state"
                self.log.warning(
                    "Shard %d: flow run %s %s; Prefect still says %s. Marking it Crashed.",
                    record.shard + 1,
                    run_id,
                    why,
                    state,
                )
                await client.set_flow_run_state(UUID(run_id), Crashed(message=why), force=True)
        if self.stop.is_set():
            return
        if record.runs >= MAX_RUNS_PER_SHARD:
            self.stop.pause(
                None,
                f"shard {record.shard + 1} of {self.shards} crashed {record.runs} times "
                f"(last: {why}); resume the campaign to try again",
            )
            return
        self.reruns += 1
        self.log.warning("Shard %d: running it again.", record.shard + 1)
        await self.start(record.shard)

    async def prefect_states(self, run_ids: list[str]) -> dict[str, Any]:
        if not run_ids:
            return {}
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(r) for r in run_ids]))
            )
        return {str(run.id): run.state for run in runs}

    async def check(self) -> list[shard_rows.ShardRecord]:
        """One look at the shards: re-run the dead ones; returns the rows as read."""
        with engine().connect() as conn:
            records = shard_rows.read_shards(conn, self.campaign_id)
        live = [r for r in records if r.status in shard_rows.LIVE]
        states = await self.prefect_states([self.runs[r.shard] for r in live])
        for record in records:
            if record.status == "crashed" and not self.stop.is_set():
                await self.crashed(record, record.reason or "its run crashed")
                continue
            if record.status not in shard_rows.LIVE:
                continue
            if record.status == "running" and record.shard in self.created:
                self.log.info(
                    "Shard %d sending on %s, %.1f s after its run was created.",
                    record.shard + 1,
                    record.worker,
                    time.monotonic() - self.created.pop(record.shard),
                )
            state = states.get(self.runs[record.shard])
            age = record.heartbeat_age
            if record.status == "running" and age is not None and age > STALE_AFTER_SECONDS:
                await self.crashed(record, f"sent no heartbeat for {age:.0f} s")
            elif state is not None and state.is_final():
                # Ended in Prefect without recording its end: it died before its hooks ran,
                # or was cancelled before it started.
                again = await asyncio.to_thread(self._reread, record.shard)
                if again is not None and again.status in shard_rows.LIVE:
                    await self.crashed(again, f"ended {state.name} without recording its end")
        return records

    def _reread(self, shard: int) -> shard_rows.ShardRecord | None:
        with engine().connect() as conn:
            found = [r for r in shard_rows.read_shards(conn, self.campaign_id) if r.shard == shard]
        return found[0] if found else None

    async def cancel_live(self) -> None:
        """The parent stopped: cancel the shards' runs. One still waiting for a worker is
        Cancelled at once (its row too, so no worker starts it); one sending gets
        Cancelling, and its worker stops it."""
        with engine().connect() as conn:
            records = shard_rows.read_shards(conn, self.campaign_id)
        async with get_client() as client:
            for record in records:
                if record.status not in shard_rows.LIVE or record.shard not in self.runs:
                    continue
                run_id = self.runs[record.shard]
                if record.status == "starting":
                    with engine().begin() as conn:
                        shard_rows.finish(
                            conn,
                            self.campaign_id,
                            record.shard,
                            run_id,
                            "cancelled",
                            "cancelled before a worker started it",
                        )
                    state: State[Any] = Cancelled(message="its campaign's run stopped")
                else:
                    state = Cancelling(message="its campaign's run stopped")
                await client.set_flow_run_state(UUID(run_id), state, force=True)


async def run_shards(
    campaign_id: str, shards: int, stop: StopSignal, progress: Progress
) -> ShardsDone:
    """Send the campaign as `shards` flow runs and wait for all of them to end.

    The campaign row is the caller's (created, preflighted, closed afterwards from the
    ledger). How the shards ended is raised on `stop`: a paused shard pauses the campaign, a
    failed one fails it, a cancelled one cancels it (the most severe wins)."""
    log = get_run_logger()
    with engine().begin() as conn:
        try:
            shard_rows.prepare(conn, campaign_id, shards, stale_after=STALE_AFTER_SECONDS)
        except shard_rows.ShardTaken as exc:
            raise CampaignFailed(str(exc)) from exc
        before = status_counts(conn, campaign_id)
    watch = _Watch(campaign_id, shards, stop)
    started = time.monotonic()
    for shard in range(shards):
        await watch.start(shard)
    log.info(
        "Started %d shard runs of %s in %.2f s; waiting for workers to pick them up.",
        shards,
        SHARD_DEPLOYMENT,
        time.monotonic() - started,
    )
    stopped_at: float | None = None
    while True:
        records = await watch.check()
        with engine().connect() as conn:
            counts = status_counts(conn, campaign_id)
        handled = sum(n for status, n in counts.items() if status != "pending")
        await progress.update(
            handled - progress.done_before, {k: n for k, n in counts.items() if n}
        )
        if all(r.status not in shard_rows.LIVE for r in records) and (
            stop.is_set() or all(r.status != "crashed" for r in records)
        ):
            break
        if stop.is_set():
            if stopped_at is None:
                stopped_at = time.monotonic()
                log.warning("The campaign stopped (%s); cancelling its shards.", stop.reason)
                await watch.cancel_live()
            elif time.monotonic() - stopped_at > SHARD_GRACE_SECONDS:
                log.error("Shards still running %.0f s after the stop.", SHARD_GRACE_SECONDS)
                break
        await asyncio.sleep(WATCH_SECONDS)
    done = ShardsDone(reruns=watch.reruns)
    for record in records:
        done.http_attempts += record.http_attempts
        done.errcodes.update({str(k): int(v) for k, v in (record.errcodes or {}).items()})
        kind = _STOP_FOR.get(record.status)
        if kind == "cancel" and stopped_at is not None:
            continue  # cancelled because the campaign stopped: its stop says why
        if kind is not None:
            stop.set(kind, f"shard {record.shard + 1} of {shards}: {record.reason}")
    with engine().connect() as conn:
        done.sent = status_counts(conn, campaign_id).get("sent", 0) - before.get("sent", 0)
    log.info(
        "Shards ended: %s; %d run again after a crash.",
        ", ".join(f"{r.shard + 1} {r.status} on {r.worker}" for r in records),
        watch.reruns,
    )
    return done
