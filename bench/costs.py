"""What each part of a scaled-out wxpush costs, on PostgreSQL (docs/scaling.md, "What each
component costs"): the figures the capacity plan multiplies.

    .venv/bin/python -m bench.costs [--messages 20000] [--batch-size 2000] [--repeat 3]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

It reuses bench.campaign's services and child runner: the simulator (faults off, no added
latency, daily quota 10^9), a temporary `prefect server start`, a fresh schema on the
PostgreSQL server (dropped at the end), the seeded audience, `push_campaign` in a child
process. Here the simulator also pushes a receipt for every accepted send (safe mode, the
demo's receipt mix) to one `wxpush receiver` process (bench.receiver's launcher) writing to
the same schema, so the ledger rows get their receipts as in production.

Runs: two `refresh-access-token` runs (no token stored yet, then a fresh one), then one
campaign of exactly one batch, then `--repeat` campaigns of `--messages` recipients in
batches of `--batch-size` (about 8 minutes with the defaults on a loaded 2-core box). It
prints one table:

- **campaign CPU per message**: the child's CPU time over the `push_campaign` call ÷ messages
  sent (median of the repeats), its peak RSS, and the CPU of its PostgreSQL backends;
- **PostgreSQL backends' CPU**: each side's sessions carry an application_name (the audience
  SQL is told by its role); `BackendCpu` samples `pg_stat_activity` and the backends' CPU
  from /proc every 0.25 s, so other clients of the same server are left out;
- **Prefect API calls**: every HTTP request the flow run makes to the Prefect API (by method
  and path, ids replaced by `{id}`) and every event it sends over the events websocket (by
  event name), counted inside the child from the flow run's creation (`POST /flow_runs/`)
  until Prefect's event and log queues are drained. Per batch is the difference between a
  full campaign and the one-batch campaign ÷ the difference in batches; the rest is per
  run. The same for each token run. The Prefect server's CPU per call is its process
  tree's CPU over a campaign, less its idle rate, ÷ the run's calls;
- **ledger bytes per delivery row**: `pg_total_relation_size('deliveries')` (heap, indexes,
  TOAST) ÷ rows, as left by the campaigns and their receipts (dead row versions included)
  and after `VACUUM FULL` (packed); the same for `callback_events` per stored push, and
  `callback_nonces` when the receiver writes it;
- **WAL bytes per message**: the server's WAL position over a campaign and its receipts; an
  upper bound, since every client of the server writes WAL;
- **receiver CPU per callback**: the receiver's process tree CPU over a campaign, from its
  start until every receipt is written, ÷ receipts written (its idle CPU is shown too), and
  its PostgreSQL backends' CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from bench.campaign.campaigns import CampaignSpec, run_campaign
from bench.campaign.child import child_main
from bench.campaign.common import APP, say
from bench.campaign.population import seed_population
from bench.campaign.results import CampaignRun, Report
from bench.campaign.runner import run_child
from bench.campaign.services import Bench, bench_database, prefect_server, tree_cpu
from bench.receiver import ReceiverProcess, start_receiver, wait_written
from cli.services import point_simulator_at
from db.engine import audience_database_url, make_engine
from wechat.simulator import defaults
from wechat.simulator.process import start_simulator

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONCURRENCY = 16  # CampaignParams' default
CALLS_SUFFIX = ".prefect-calls.json"
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TABLES = ("deliveries", "callback_events", "callback_nonces")
#: application_name of each side's database sessions, so their backends can be told apart
#: from other clients of the same PostgreSQL server (the audience SQL's: by its role).
CAMPAIGN_SESSIONS = "wxpush-costs-campaign"
RECEIVER_SESSIONS = "wxpush-costs-receiver"


# -- inside the child: count what the flow run asks of the Prefect API ------------------------


class PrefectCalls:
    """HTTP requests to the Prefect API and events sent over its websocket, counted from the
    flow run's creation on. Installed by patching httpx's `send` (Prefect's clients subclass
    httpx's and call it once per attempt) and the events client's `_emit` (one websocket
    message per event)."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.started = False
        self.requests: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.log_records = 0

    def key(self, request: httpx.Request) -> str | None:
        url = str(request.url)
        if not url.startswith(self.api_url):
            return None
        path = _ID.sub("{id}", url[len(self.api_url) :].split("?", 1)[0])
        return f"{request.method} {path}"

    def saw(self, request: httpx.Request) -> None:
        key = self.key(request)
        if key is None:
            return
        if key == "POST /flow_runs/":
            self.started = True
        if not self.started:
            return
        self.requests[key] += 1
        if key == "POST /logs/":
            with contextlib.suppress(ValueError, TypeError):
                self.log_records += len(json.loads(request.content))

    def install(self) -> None:
        from prefect.events.clients import PrefectEventsClient

        calls = self
        async_send, sync_send = httpx.AsyncClient.send, httpx.Client.send
        emit = PrefectEventsClient._emit

        async def counted_async(client: Any, request: httpx.Request, *a: Any, **k: Any) -> Any:
            calls.saw(request)
            return await async_send(client, request, *a, **k)

        def counted_sync(client: Any, request: httpx.Request, *a: Any, **k: Any) -> Any:
            calls.saw(request)
            return sync_send(client, request, *a, **k)

        async def counted_emit(client: Any, event: Any) -> None:
            if calls.started:
                calls.events[event.event] += 1
            await emit(client, event)

        httpx.AsyncClient.send = counted_async  # type: ignore[method-assign]
        httpx.Client.send = counted_sync  # type: ignore[method-assign]
        PrefectEventsClient._emit = counted_emit  # type: ignore[method-assign]

    def reset(self) -> None:
        """Count afresh, from the next flow run's creation."""
        self.started = False
        self.requests.clear()
        self.events.clear()
        self.log_records = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "events": dict(self.events),
            "log_records": self.log_records,
        }


def drain_prefect() -> None:
    """Send what Prefect's event and log queues still hold (they send in the background)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


def token_runs(spec: dict[str, Any], calls: PrefectCalls) -> list[dict[str, Any]]:
    """`refresh-access-token` twice, as its schedule runs it: the first run finds no token
    (the parent runs this before any campaign) and fetches one, the second finds it fresh;
    each run's calls counted on their own."""
    import asyncio

    from bench.campaign.child import prepare_app
    from flows.token import refresh_access_token

    asyncio.run(prepare_app(spec["app"], need_token=False))
    counted = []
    for _ in range(2):
        calls.reset()
        state = asyncio.run(refresh_access_token(app=spec["app"]["name"], return_state=True))
        drain_prefect()
        counted.append({"state": state.name, **calls.as_json()})
    return counted


def counted_child(mode: str, spec_path: str, out_path: str) -> None:
    """bench.campaign's child (or, mode `token`, the token refresher), with the flow run's
    Prefect calls counted into a file beside its answer."""
    from prefect.settings import PREFECT_API_URL

    calls = PrefectCalls(str(PREFECT_API_URL.value()))
    calls.install()
    counted: Any
    if mode == "token":
        counted = token_runs(json.loads(Path(spec_path).read_text()), calls)
        Path(out_path).write_text(json.dumps({"runs": len(counted)}))
    else:
        child_main(mode, spec_path, out_path)
        drain_prefect()
        counted = calls.as_json()
    Path(out_path.removesuffix(".out.json") + CALLS_SUFFIX).write_text(json.dumps(counted))


# -- in the parent ----------------------------------------------------------------------------


def named(url: str, application_name: str) -> str:
    """`url` whose sessions show `application_name` in pg_stat_activity."""
    return (
        make_url(url)
        .update_query_dict({"application_name": application_name})
        .render_as_string(hide_password=False)
    )


class BackendCpu(threading.Thread):
    """CPU seconds of the PostgreSQL backends serving one side, sampled every `interval` s:
    a backend's CPU is read from /proc while it lives (psutil), keyed by pid, so what a
    backend used after its last sample before it exited is lost (at most one interval).
    Sides are told apart by application_name, or by role for the audience SQL."""

    def __init__(self, engine: Engine, sides: dict[str, str], users: dict[str, str]) -> None:
        super().__init__(name="backend-cpu", daemon=True)
        self.engine, self.sides, self.users = engine, sides, users
        self.interval = 0.25
        self.seen: dict[int, tuple[str, float]] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def sample(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT pid, application_name, usename FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            ).all()
        for pid, app, user in rows:
            side = self.sides.get(app) or self.users.get(user)
            if side is None:
                continue
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                with self.lock:
                    self.seen[pid] = (side, times.user + times.system)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            with contextlib.suppress(Exception):  # a sample missed is a sample missed
                self.sample()

    def snapshot(self) -> dict[int, tuple[str, float]]:
        self.sample()
        with self.lock:
            return dict(self.seen)

    @staticmethod
    def used(
        before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
    ) -> dict[str, float]:
        """CPU seconds per side between two snapshots (a backend new since `before` from 0)."""
        totals: dict[str, float] = {}
        for pid, (side, cpu) in after.items():
            start = before.get(pid, (side, 0.0))[1]
            totals[side] = totals.get(side, 0.0) + cpu - start
        return totals


@dataclass
class Measured:
    """One campaign: the bench's figures plus the flow run's Prefect calls and the
    receiver's CPU for its receipts."""

    run: CampaignRun
    batches: int
    calls: dict[str, Any]
    receipts: int = 0
    receiver_cpu: float | None = None
    database_cpu: dict[str, float] = field(default_factory=dict)  # per side, seconds
    wal_bytes: int | None = None

    @property
    def cpu_per_message_us(self) -> float | None:
        return self.run.per_message_us(self.run.campaign_cpu)

    @property
    def server_per_message_us(self) -> float | None:
        return self.run.per_message_us(self.run.server_cpu)

    def per_sent_us(self, seconds: float | None) -> float | None:
        return self.run.per_message_us(seconds)

    def total_calls(self) -> int:
        return sum(self.calls["requests"].values()) + sum(self.calls["events"].values())


@dataclass
class TableSize:
    table: str
    rows: int
    total: int  # heap + indexes + TOAST
    heap: int
    indexes: int
    dead_rows: int | None = None

    def per_row(self) -> float | None:
        return self.total / self.rows if self.rows else None


@dataclass
class Costs:
    conditions: dict[str, Any] = field(default_factory=dict)
    runs: list[Measured] = field(default_factory=list)
    sizes: list[TableSize] = field(default_factory=list)
    packed: list[TableSize] = field(default_factory=list)
    receiver_idle_cpu_per_s: float | None = None
    server_idle_cpu_per_s: float | None = None
    token_runs: list[dict[str, Any]] = field(default_factory=list)


def table_sizes(engine: Engine) -> list[TableSize]:
    """Sizes of the ledger tables in the bench schema (search_path), with live/dead rows."""
    sizes = []
    with engine.connect() as conn:
        for table in TABLES:
            exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar()
            if exists is None:
                continue
            rows = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            total, heap, indexes = conn.execute(
                text(
                    "SELECT pg_total_relation_size(:t), pg_relation_size(:t), pg_indexes_size(:t)"
                ),
                {"t": table},
            ).one()
            dead = conn.execute(
                text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = to_regclass(:t)"),
                {"t": table},
            ).scalar()
            sizes.append(TableSize(table, rows, total, heap, indexes, dead))
    return sizes


def vacuum(engine: Engine, full: bool = False) -> None:
    """VACUUM (FULL) ANALYZE the ledger tables: `--vacuum` stands in for an autovacuum that
    keeps up, on a server where it is off."""
    verb = "VACUUM FULL ANALYZE" if full else "VACUUM ANALYZE"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in TABLES:
            if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is not None:
                conn.execute(text(f"{verb} {table}"))


def receipts_written(receiver: ReceiverProcess) -> int:
    return int(httpx.get(f"{receiver.base}/health", timeout=5).json()["written"])


def token_calls(bench: Bench, deadline: float) -> list[dict[str, Any]]:
    """The Prefect calls of two `refresh-access-token` runs (fetch, then fresh), in a child."""
    spec = {"app": bench.app_values(APP, bench.sim.app_id)}
    child = run_child(bench, "token", spec, deadline)
    stem = bench.folder / f"child-{bench.children:02d}-token"  # runner.run_child's name
    if child.error:
        raise SystemExit(f"the token runs failed: {child.error}")
    return json.loads(Path(f"{stem}{CALLS_SUFFIX}").read_text())


def wal_position(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).scalar_one())


def measured_campaign(
    bench: Bench,
    receiver: ReceiverProcess,
    backends: BackendCpu,
    spec: CampaignSpec,
    deadline: float,
) -> Measured:
    """One campaign; then wait until the simulator pushed every receipt and the receiver
    wrote it (before the next campaign's simulator reset would drop the rest)."""
    written_before = receipts_written(receiver)
    cpu_before = tree_cpu(receiver.child.pid)
    db_before, wal_before = backends.snapshot(), wal_position(bench.engine)
    run = run_campaign(bench, spec, deadline)
    if run.error:
        raise SystemExit(f"the campaign failed: {run.error}")
    counters = bench.sim.admin.wait_callbacks_idle(timeout=300)
    delivered = sum(counters.receipts_delivered.values())
    wait_written(receiver.base, written_before + delivered, timeout=300)
    cpu_after = tree_cpu(receiver.child.pid)
    database_cpu = BackendCpu.used(db_before, backends.snapshot())
    wal_bytes = wal_position(bench.engine) - wal_before
    stem = bench.folder / f"child-{bench.children:02d}-campaign"  # runner.run_child's name
    calls = json.loads(Path(f"{stem}{CALLS_SUFFIX}").read_text())
    batches = -(-spec.recipients // spec.batch_size)
    receiver_cpu = None
    if cpu_before is not None and cpu_after is not None:
        receiver_cpu = cpu_after - cpu_before
    return Measured(run, batches, calls, delivered, receiver_cpu, database_cpu, wal_bytes)


@contextlib.contextmanager
def services(
    args: argparse.Namespace, folder: Path
) -> Iterator[tuple[Bench, ReceiverProcess, BackendCpu]]:
    """Simulator, Prefect server, bench schema, a receiver the simulator pushes to, and the
    sampler of the campaign's and the receiver's database backends."""
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(start_simulator(extra_args=["--daily-quota", "1000000000"]))
        server = stack.enter_context(prefect_server(folder))
        db_url = stack.enter_context(bench_database(args.database_url, folder))
        engine = make_engine(named(db_url, "wxpush-costs-bench"))
        stack.callback(engine.dispose)
        campaign_url = named(db_url, CAMPAIGN_SESSIONS)
        bench = Bench(
            args, folder, sim, server, campaign_url, engine, Report(), child_module="bench.costs"
        )
        receiver = start_receiver(
            named(db_url, RECEIVER_SESSIONS),
            app_id=sim.app_id,
            token=defaults.DEMO_CALLBACK_TOKEN,
            aes_key=defaults.DEMO_ENCODING_AES_KEY,
        )
        stack.callback(receiver.stop, 60)
        point_simulator_at(sim.base_url, receiver.base)
        sampler_engine = make_engine(named(db_url, "wxpush-costs-sampler"))
        stack.callback(sampler_engine.dispose)
        audience_user = make_url(audience_database_url()).username or ""
        backends = BackendCpu(
            sampler_engine,
            {CAMPAIGN_SESSIONS: "campaign", RECEIVER_SESSIONS: "receiver"},
            {audience_user: "campaign"},
        )
        backends.start()
        stack.callback(backends.done.set)
        yield bench, receiver, backends


def idle_cpu(pid: int, seconds: float = 5.0) -> float | None:
    """CPU seconds per second of a process tree left alone for `seconds`."""
    before = tree_cpu(pid)
    time.sleep(seconds)
    after = tree_cpu(pid)
    return None if before is None or after is None else (after - before) / seconds


def measure(args: argparse.Namespace) -> Costs:
    costs = Costs()
    folder = Path(tempfile.mkdtemp(prefix="wxpush-costs-"))
    try:
        with services(args, folder) as (bench, receiver, backends):
            if bench.engine.dialect.name != "postgresql":
                raise SystemExit("bench.costs measures PostgreSQL: give --database-url")
            costs.conditions = conditions(args, bench)
            say(f"seeding {args.messages:,} sendable recipients (+ simulator followers) …")
            deadline = time.monotonic() + args.max_seconds
            seed_population(
                bench, bench.sim.app_id, args.messages, register=True, deadline=deadline
            )
            costs.receiver_idle_cpu_per_s = idle_cpu(receiver.child.pid)
            costs.server_idle_cpu_per_s = idle_cpu(bench.server.child.pid, 10.0)
            costs.token_runs = token_calls(bench, deadline)  # before any token is stored
            sizes = [args.batch_size] + [args.messages] * args.repeat
            for recipients in sizes:
                if args.vacuum:
                    vacuum(bench.engine)
                spec = CampaignSpec("costs", recipients, args.batch_size, CONCURRENCY)
                measured = measured_campaign(bench, receiver, backends, spec, deadline)
                costs.runs.append(measured)
                say(describe(measured))
            costs.sizes = table_sizes(bench.engine)
            vacuum(bench.engine, full=True)
            costs.packed = table_sizes(bench.engine)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return costs


def conditions(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    import os

    with bench.engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar_one()
    return {
        "database": f"PostgreSQL {version}, a fresh schema on {bench.engine.url.host}",
        "prefect_server": "prefect server start (temporary PREFECT_HOME, SQLite)",
        "cores": os.cpu_count(),
        "batch_size": args.batch_size,
        "vacuum_between_campaigns": args.vacuum,
        "concurrency": CONCURRENCY,
        "python": sys.version.split()[0],
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# -- the report -------------------------------------------------------------------------------


def server_cpu(m: Measured, idle_per_s: float | None) -> float | None:
    """The Prefect server's CPU over a campaign less what it spends idle in that time."""
    if m.run.server_cpu is None:
        return None
    return m.run.server_cpu - (idle_per_s or 0.0) * m.run.flow_seconds


def describe(m: Measured) -> str:
    run = m.run
    rcv = (
        f"{m.receiver_cpu / m.receipts * 1e6:,.0f} µs receiver CPU per receipt"
        if m.receiver_cpu is not None and m.receipts
        else "no receipts"
    )
    db = m.per_sent_us(m.database_cpu.get("campaign"))
    return (
        f"  {run.sent:,} sent in {m.batches} batches, {run.flow_seconds:.1f} s: "
        f"{m.cpu_per_message_us or 0:,.0f} µs campaign CPU per message "
        f"(+ {db or 0:,.0f} µs in its PostgreSQL backends), {m.total_calls()} Prefect calls, "
        f"{m.receipts:,} receipts ({rcv})"
    )


def line(one: float, full: list[float], extra_batches: int) -> tuple[float, float]:
    """(per extra batch, per run): the line through the one-batch campaign and the median of
    the full ones."""
    slope = (statistics.median(full) - one) / extra_batches
    return slope, one - slope


def per_batch(costs: Costs) -> tuple[dict[str, float], dict[str, float]]:
    """Each Prefect call's count per extra batch and per run."""
    one, full = costs.runs[0], costs.runs[1:]
    keys = {
        f"{kind}:{key}"
        for m in costs.runs
        for kind in ("requests", "events")
        for key in m.calls[kind]
    }
    slope: dict[str, float] = {}
    fixed: dict[str, float] = {}
    for name in sorted(keys):
        kind, key = name.split(":", 1)
        slope[name], fixed[name] = line(
            one.calls[kind].get(key, 0),
            [m.calls[kind].get(key, 0) for m in full],
            full[0].batches - one.batches,
        )
    return slope, fixed


def mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def us_list(values: list[float | None]) -> str:
    return ", ".join(f"{v or 0:,.0f}" for v in values) + " µs"


def print_report(costs: Costs) -> None:
    one, full = costs.runs[0], costs.runs[1:]
    extra = full[0].batches - one.batches
    median = statistics.median
    slope, fixed = per_batch(costs)
    say("\nconditions: " + json.dumps(costs.conditions))
    say("\n| figure | value | how |")
    say("|---|---|---|")
    cpu = [m.cpu_per_message_us for m in full]
    say(
        f"| campaign CPU per message | {median(v or 0 for v in cpu):,.0f} µs | the flow-run "
        f"process, median of {len(full)} campaigns of {full[0].run.sent:,}: {us_list(cpu)} |"
    )
    db = [m.per_sent_us(m.database_cpu.get("campaign")) for m in full]
    say(
        f"| its PostgreSQL backends' CPU per message | {median(v or 0 for v in db):,.0f} µs | "
        f"ledger, audience, campaign row (sampled every 0.25 s): {us_list(db)} |"
    )
    idle = costs.server_idle_cpu_per_s
    server = [(v, m) for m in full if (v := server_cpu(m, idle)) is not None]
    if server:
        per_run = [v for v, _ in server]
        per_call = [v / m.total_calls() * 1000 for v, m in server]
        say(
            f"| Prefect server CPU per API call | {median(per_call):,.1f} ms | its process tree "
            f"over each full campaign less its idle {(idle or 0) * 1000:,.0f} ms/s, ÷ the "
            f"run's calls: {median(per_run):,.2f} s per run of {full[0].batches} batches |"
        )
    say(
        f"| Prefect API calls per batch | {sum(slope.values()):,.1f} | (median of the full "
        f"campaigns − the one-batch campaign) ÷ {extra} extra batches |"
    )
    say(f"| Prefect API calls per flow run | {sum(fixed.values()):,.1f} | the rest |")
    wal = [m.wal_bytes / m.run.sent for m in full if m.wal_bytes is not None and m.run.sent]
    if wal:
        say(
            f"| WAL bytes per message (upper bound) | {median(wal):,.0f} | the server's WAL "
            f"position over each campaign and its receipts, other clients' writes included: "
            + ", ".join(f"{v:,.0f}" for v in wal)
            + " |"
        )
    for size in costs.sizes:
        packed = next((p for p in costs.packed if p.table == size.table), None)
        if not size.rows or packed is None:
            continue
        unit = {"deliveries": "delivery row", "callback_events": "stored push"}.get(
            size.table, "row"
        )
        say(
            f"| {size.table} bytes per {unit} | {size.per_row() or 0:,.0f} (packed "
            f"{packed.per_row() or 0:,.0f}) | {mib(size.total)} for {size.rows:,} rows "
            f"({size.dead_rows or 0:,} dead); heap {mib(size.heap)}, indexes "
            f"{mib(size.indexes)}; after VACUUM FULL {mib(packed.total)} |"
        )
    receipts = [m for m in full if m.receiver_cpu is not None and m.receipts]
    if receipts:
        rcv = [(m.receiver_cpu or 0) / m.receipts * 1e6 for m in receipts]
        rdb = [m.database_cpu.get("receiver", 0.0) / m.receipts * 1e6 for m in receipts]
        say(
            f"| receiver CPU per callback | {median(rcv):,.0f} µs (+ {median(rdb):,.0f} µs in "
            f"its PostgreSQL backends) | one process, safe mode, the receipts of the full "
            f"campaigns: {us_list(rcv)} (backends {us_list(rdb)}); idle "
            f"{(costs.receiver_idle_cpu_per_s or 0) * 1000:,.1f} ms/s |"
        )
    for n, run in enumerate(costs.token_runs):
        kind = "finds no token and fetches one" if n == 0 else "finds the token fresh"
        total = sum(run["requests"].values()) + sum(run["events"].values())
        say(f"| Prefect API calls of a refresh-access-token run that {kind} | {total} | |")
    rss = [m.run.peak_rss for m in full if m.run.peak_rss]
    if rss:
        say(
            f"| campaign process peak RSS | {median(rss) / 2**20:,.0f} MiB | the child's "
            "ru_maxrss (wait4) |"
        )
    say("\nPrefect API calls of the flow run (per run | per extra batch):")
    for name in sorted(slope, key=lambda n: (-abs(slope[n]), n)):
        say(f"  {name:<70} {fixed[name]:>5.1f} | {slope[name]:>5.2f}")
    logs = [m.calls["log_records"] for m in costs.runs]
    say(f"  log records sent (one-batch run, full runs): {logs}")
    for n, run in enumerate(costs.token_runs):
        say(f"refresh-access-token run {n + 1} ({run['state']}; calls):")
        for kind in ("requests", "events"):
            for key, count in sorted(run[kind].items()):
                say(f"  {kind}:{key:<70} {count}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.costs", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3, help="full campaigns (≥ 1)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM ANALYZE the ledger tables before each campaign (a server without autovacuum)",
    )
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="for everything")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.messages <= args.batch_size:
        parser.error("--repeat must be ≥ 1 and --messages more than one --batch-size")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        counted_child(*args.child)
        return
    costs = measure(args)
    print_report(costs)


if __name__ == "__main__":
    main()
