"""One campaign across several workers (`shards`, issue 12 point 3), end to end: a real
Prefect server, two real `prefect worker start` processes each taking one flow run at a
time, the simulator over HTTP, the ledger on PostgreSQL. The push-campaign run itself runs
in the test's process, so the workers' two slots are the shards'.

- shards=2 on two workers: each worker ran one shard, the report is whole, everybody once;
- SIGKILL of one worker and its flow-run process mid-shard: the parent sees the shard's
  heartbeat stop, marks the run Crashed (Prefect still says Running), runs the shard again
  on the other worker, and every recipient is messaged once (the killed shard's rows in
  flight go again with the same client_msg_id, which the simulator dedupes);
- shards=2 on SQLite: refused in one line before a campaign row exists.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import Engine, text

from cli.deploy import deploy_one_on_pool, worker_argv
from db import shards as shard_rows
from db.audience import shard_of
from processes import Child, start
from tests.campaign_helpers import accepted_openids, assert_exactly_once, params

pytestmark = [pytest.mark.harness, pytest.mark.process, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Workers:
    """Process workers on their own pool, one flow run at a time each."""

    pool: str
    children: dict[str, Child]

    def owner(self, pid: int) -> str | None:
        """Which worker `pid` (a flow-run process) runs under."""
        for name, child in self.children.items():
            try:
                family = psutil.Process(child.pid).children(recursive=True)
            except psutil.Error:
                continue
            if any(p.pid == pid for p in family):
                return name
        return None


@contextmanager
def two_workers(prefect_harness: Any, db_url: str, tmp_path: Path) -> Iterator[Workers]:
    pool = f"shards-{uuid.uuid4().hex[:8]}"
    deploy_one_on_pool("push-campaign-shard", pool)
    env = {
        **prefect_harness.env(),
        "WXPUSH_HOME": str(REPO),  # prefect.yaml's pull step: the folder runs work in
        "WXPUSH_DATABASE_URL": db_url,
        "PYTHONPATH": str(REPO),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick a shard up within a second (default 10)
    }
    children: dict[str, Child] = {}
    try:
        for name in ("worker-a", "worker-b"):
            argv = [*worker_argv(pool), "--type", "process", "--limit", "1", "--name", name]
            children[name] = start(argv, name=name, log=tmp_path / f"{name}.log", env=env, cwd=REPO)
        yield Workers(pool, children)
    finally:
        for child in children.values():
            child.close()


def _postgres_audience(request: pytest.FixtureRequest) -> Any:
    if request.getfixturevalue("db_backend") != "postgresql":
        pytest.skip("shards need PostgreSQL")
    return request.getfixturevalue("audience")


def _run_parent(p: Any) -> Any:
    from flows.campaign import push_campaign

    return asyncio.run(push_campaign(p, return_state=True))


class ShardWatch(threading.Thread):
    """Notes, while the campaign runs, which worker each shard's running process is under;
    optionally SIGKILLs one worker (and its flow-run process) once its shard has sent."""

    def __init__(self, engine: Engine, workers: Workers, *, kill_after_sent: int | None) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.workers = workers
        self.kill_after_sent = kill_after_sent
        self.owners: dict[tuple[int, int], str] = {}  # (shard, pid) → worker
        self.killed: tuple[str, int, str] | None = None  # worker, shard, flow run
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while not self.done.is_set() and time.monotonic() < deadline:
            with self.engine.connect() as conn:
                campaign = conn.execute(
                    text("SELECT id FROM campaigns ORDER BY created_at DESC LIMIT 1")
                ).scalar()
                records = shard_rows.read_shards(conn, campaign) if campaign else []
                sent = conn.execute(
                    text(
                        "SELECT count(*) FROM deliveries WHERE campaign_id = :c AND status='sent'"
                    ),
                    {"c": campaign},
                ).scalar_one()
            for record in records:
                if record.status != "running" or not record.worker:
                    continue
                pid = int(record.worker.rsplit(":", 1)[1])
                owner = self.workers.owner(pid)
                if owner is not None:
                    self.owners[(record.shard, pid)] = owner
                if (
                    self.kill_after_sent is not None
                    and self.killed is None
                    and owner is not None
                    and sent >= self.kill_after_sent
                ):
                    child = self.workers.children[owner]
                    family = psutil.Process(child.pid).children(recursive=True)
                    child.send(signal.SIGKILL)  # the worker's group
                    for process in family:  # and its flow-run process, wherever it is
                        with_suppressed(process.kill)
                    self.killed = (owner, record.shard, str(record.flow_run_id))
            time.sleep(0.1)


def with_suppressed(call: Any) -> None:
    with suppress(psutil.Error):
        call()


def _shard_counts(engine: Engine, campaign_id: str, shards: int) -> dict[int, int]:
    with engine.connect() as conn:
        openids = conn.execute(
            text("SELECT openid FROM deliveries WHERE campaign_id = :c"), {"c": campaign_id}
        ).scalars()
        counts: dict[int, int] = {}
        for openid in openids:
            counts[shard_of(openid, shards)] = counts.get(shard_of(openid, shards), 0) + 1
    return counts


def test_two_shards_on_two_workers_each_worker_runs_one(
    request: pytest.FixtureRequest,
    prefect_harness: Any,
    db_url: str,
    db_engine: Engine,
    sim: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = _postgres_audience(request)
    # 30/s for the campaign, 15/s per shard: each shard sends for several seconds.
    p = params(app.name, shards=2, rate_per_second=30, batch_size=40)
    with two_workers(prefect_harness, db_url, tmp_path) as workers:
        watch = ShardWatch(db_engine, workers, kill_after_sent=None)
        watch.start()
        try:
            state = _run_parent(p)
        finally:
            watch.done.set()
            watch.join(10)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status in ("completed", "completed_with_failures")
    with db_engine.connect() as conn:
        records = shard_rows.read_shards(conn, result.campaign_id)
    assert [(r.shard, r.status, r.runs) for r in records] == [
        (0, "completed", 1),
        (1, "completed", 1),
    ]
    # Each worker ran one shard: the shards' processes were children of different workers.
    owners = {shard: worker for (shard, _), worker in watch.owners.items()}
    assert sorted(owners) == [0, 1], watch.owners
    assert sorted(owners.values()) == ["worker-a", "worker-b"], watch.owners
    # The UI shows each shard's run under the campaign's run (a subflow).
    parent_id = state.state_details.flow_run_id
    assert asyncio.run(_parents([str(r.flow_run_id) for r in records])) == {parent_id}
    # The report is whole: its counts are the audience, and both shards contributed.
    assert sum(result.counts.values()) == 300
    assert result.sent_this_run == result.counts["sent"] > 0
    assert all(n > 0 for n in _shard_counts(db_engine, result.campaign_id, 2).values())
    assert_exactly_once(db_engine, sim, sim.app_id, result.campaign_id)


def test_a_shard_whose_worker_is_killed_runs_again_and_nobody_gets_two(
    request: pytest.FixtureRequest,
    prefect_harness: Any,
    db_url: str,
    db_engine: Engine,
    sim: Any,
    tmp_path: Path,
) -> None:
    app = _postgres_audience(request)
    # Slow answers keep messages in flight when the worker dies.
    sim.admin.set_faults(seed=5, slow_rate=0.3, slow_seconds=1.0)
    p = params(app.name, shards=2, rate_per_second=30, batch_size=40, concurrency=8)
    with two_workers(prefect_harness, db_url, tmp_path) as workers:
        watch = ShardWatch(db_engine, workers, kill_after_sent=40)
        watch.start()
        try:
            state = _run_parent(p)
        finally:
            watch.done.set()
            watch.join(10)
    assert watch.killed is not None, "a worker was killed mid-shard"
    killed_worker, killed_shard, killed_run = watch.killed
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status in ("completed", "completed_with_failures"), result.reason
    with db_engine.connect() as conn:
        records = {r.shard: r for r in shard_rows.read_shards(conn, result.campaign_id)}
    assert records[killed_shard].runs == 2  # run again once
    assert records[killed_shard].status == "completed"
    assert records[killed_shard].flow_run_id != killed_run
    assert records[1 - killed_shard].runs == 1
    # Prefect never noticed the dead run itself; the parent marked it Crashed.
    run = asyncio.run(_flow_run(killed_run))
    assert run.state.type.value == "CRASHED"
    assert "heartbeat" in (run.state.message or "")
    assert sum(result.counts.values()) == 300
    assert result.counts.get("pending", 0) == 0 and result.counts.get("unknown", 0) == 0
    assert_exactly_once(db_engine, sim, sim.app_id, result.campaign_id)
    assert max(accepted_openids(sim).values()) == 1
    assert killed_worker in ("worker-a", "worker-b")


async def _parents(run_ids: list[str]) -> set[Any]:
    """The flow runs the given runs are subflows of."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        parents = set()
        for run_id in run_ids:
            run = await client.read_flow_run(uuid.UUID(run_id))
            assert run.parent_task_run_id is not None, run.name
            parents.add((await client.read_task_run(run.parent_task_run_id)).flow_run_id)
        return parents


async def _flow_run(run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(uuid.UUID(run_id))


def test_shards_on_sqlite_are_refused_in_one_line(
    request: pytest.FixtureRequest, db_engine: Engine, sim: Any
) -> None:
    if request.getfixturevalue("db_backend") != "sqlite":
        pytest.skip("the refusal is SQLite's")
    app = request.getfixturevalue("audience")
    state = _run_parent(params(app.name, shards=2))
    assert state.is_failed()
    assert state.message == (
        "shards=2 needs PostgreSQL, and WXPUSH_DATABASE_URL is sqlite: set "
        "WXPUSH_DATABASE_URL=postgresql://… (docs/scaling.md), or send with shards=1"
    )
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM campaigns")).scalar_one() == 0
    assert sim.admin.counters().accepted == 0
    assert os.environ.get("WXPUSH_DATABASE_URL", "").startswith("sqlite")
