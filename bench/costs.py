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

Runs: one campaign of exactly one batch, then `--repeat` campaigns of `--messages`
recipients in batches of `--batch-size`. It prints:

- **campaign CPU per message**: the child's CPU time over the `push_campaign` call ÷ messages
  sent (median of the repeats), and the Prefect server's CPU per message beside it;
- **Prefect API calls**: every HTTP request the flow run makes to the Prefect API (by method
  and path, ids replaced by `{id}`) and every event it sends over the events websocket (by
  event name), counted inside the child from the flow run's creation (`POST /flow_runs/`)
  until Prefect's event and log queues are drained. Per batch is the difference between a
  full campaign and the one-batch campaign ÷ the difference in batches; the rest is per run;
- **ledger bytes per delivery row**: `pg_total_relation_size('deliveries')` (heap, indexes,
  TOAST) ÷ rows, as left by the campaigns and their receipts (dead row versions included)
  and after `VACUUM FULL` (packed); the same for `callback_events` per stored push, and
  `callback_nonces` when the receiver writes it;
- **receiver CPU per callback**: the receiver's process tree CPU over a campaign, from its
  start until every receipt is written, ÷ receipts written (its idle CPU is shown too).
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
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from bench.campaign.campaigns import CampaignSpec, run_campaign
from bench.campaign.child import child_main
from bench.campaign.common import say
from bench.campaign.population import seed_population
from bench.campaign.results import CampaignRun, Report
from bench.campaign.services import Bench, bench_database, prefect_server, tree_cpu
from bench.receiver import ReceiverProcess, start_receiver, wait_written
from cli.services import point_simulator_at
from db.engine import make_engine
from wechat.simulator import defaults
from wechat.simulator.process import start_simulator

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONCURRENCY = 16  # CampaignParams' default
CALLS_SUFFIX = ".prefect-calls.json"
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TABLES = ("deliveries", "callback_events", "callback_nonces")


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

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "events": dict(self.events),
            "log_records": self.log_records,
        }


def counted_child(mode: str, spec_path: str, out_path: str) -> None:
    """bench.campaign's child, with the flow run's Prefect calls counted into a file beside
    its answer (after draining Prefect's event and log queues, which send in the background)."""
    import os

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    calls = PrefectCalls(os.environ["PREFECT_API_URL"])
    calls.install()
    child_main(mode, spec_path, out_path)
    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)
    Path(out_path.removesuffix(".out.json") + CALLS_SUFFIX).write_text(json.dumps(calls.as_json()))


# -- in the parent ----------------------------------------------------------------------------


@dataclass
class Measured:
    """One campaign: the bench's figures plus the flow run's Prefect calls and the
    receiver's CPU for its receipts."""

    run: CampaignRun
    batches: int
    calls: dict[str, Any]
    receipts: int = 0
    receiver_cpu: float | None = None

    @property
    def cpu_per_message_us(self) -> float | None:
        return self.run.per_message_us(self.run.campaign_cpu)

    @property
    def server_per_message_us(self) -> float | None:
        return self.run.per_message_us(self.run.server_cpu)

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


def vacuum_full(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in TABLES:
            if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is not None:
                conn.execute(text(f"VACUUM FULL ANALYZE {table}"))


def receipts_written(receiver: ReceiverProcess) -> int:
    return int(httpx.get(f"{receiver.base}/health", timeout=5).json()["written"])


def measured_campaign(
    bench: Bench, receiver: ReceiverProcess, spec: CampaignSpec, deadline: float
) -> Measured:
    """One campaign; then wait until the simulator pushed every receipt and the receiver
    wrote it (before the next campaign's simulator reset would drop the rest)."""
    written_before = receipts_written(receiver)
    cpu_before = tree_cpu(receiver.child.pid)
    run = run_campaign(bench, spec, deadline)
    if run.error:
        raise SystemExit(f"the campaign failed: {run.error}")
    counters = bench.sim.admin.wait_callbacks_idle(timeout=300)
    delivered = sum(counters.receipts_delivered.values())
    wait_written(receiver.base, written_before + delivered, timeout=300)
    cpu_after = tree_cpu(receiver.child.pid)
    stem = bench.folder / f"child-{bench.children:02d}-campaign"  # runner.run_child's name
    calls = json.loads(Path(f"{stem}{CALLS_SUFFIX}").read_text())
    batches = -(-spec.recipients // spec.batch_size)
    receiver_cpu = None if None in (cpu_before, cpu_after) else cpu_after - cpu_before  # type: ignore[operator]
    return Measured(run, batches, calls, delivered, receiver_cpu)


@contextlib.contextmanager
def services(args: argparse.Namespace, folder: Path) -> Iterator[tuple[Bench, ReceiverProcess]]:
    """Simulator, Prefect server, bench schema and a receiver the simulator pushes to."""
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(start_simulator(extra_args=["--daily-quota", "1000000000"]))
        server = stack.enter_context(prefect_server(folder))
        db_url = stack.enter_context(bench_database(args.database_url, folder))
        engine = make_engine(db_url)
        stack.callback(engine.dispose)
        bench = Bench(
            args, folder, sim, server, db_url, engine, Report(), child_module="bench.costs"
        )
        receiver = start_receiver(
            db_url,
            app_id=sim.app_id,
            token=defaults.DEMO_CALLBACK_TOKEN,
            aes_key=defaults.DEMO_ENCODING_AES_KEY,
        )
        stack.callback(receiver.stop, 60)
        point_simulator_at(sim.base_url, receiver.base)
        yield bench, receiver


def measure(args: argparse.Namespace) -> Costs:
    costs = Costs()
    folder = Path(tempfile.mkdtemp(prefix="wxpush-costs-"))
    try:
        with services(args, folder) as (bench, receiver):
            if bench.engine.dialect.name != "postgresql":
                raise SystemExit("bench.costs measures PostgreSQL: give --database-url")
            costs.conditions = conditions(args, bench)
            say(f"seeding {args.messages:,} sendable recipients (+ simulator followers) …")
            deadline = time.monotonic() + args.max_seconds
            seed_population(
                bench, bench.sim.app_id, args.messages, register=True, deadline=deadline
            )
            idle_before = tree_cpu(receiver.child.pid)
            time.sleep(5)
            idle_after = tree_cpu(receiver.child.pid)
            if idle_before is not None and idle_after is not None:
                costs.receiver_idle_cpu_per_s = (idle_after - idle_before) / 5
            sizes = [args.batch_size] + [args.messages] * args.repeat
            for recipients in sizes:
                spec = CampaignSpec("costs", recipients, args.batch_size, CONCURRENCY)
                measured = measured_campaign(bench, receiver, spec, deadline)
                costs.runs.append(measured)
                say(describe(measured))
            costs.sizes = table_sizes(bench.engine)
            vacuum_full(bench.engine)
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
        "concurrency": CONCURRENCY,
        "python": sys.version.split()[0],
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# -- the report -------------------------------------------------------------------------------


def describe(m: Measured) -> str:
    run = m.run
    rcv = (
        f"{m.receiver_cpu / m.receipts * 1e6:,.0f} µs receiver CPU per receipt"
        if m.receiver_cpu is not None and m.receipts
        else "no receipts"
    )
    return (
        f"  {run.sent:,} sent in {m.batches} batches, {run.flow_seconds:.1f} s: "
        f"{m.cpu_per_message_us or 0:,.0f} µs campaign CPU per message, "
        f"{m.total_calls()} Prefect calls, {m.receipts:,} receipts ({rcv})"
    )


def per_batch(costs: Costs) -> tuple[dict[str, float], dict[str, float]]:
    """Each call's count per extra batch and per run: a line through the one-batch campaign
    and the median of the full ones."""
    one, full = costs.runs[0], costs.runs[1:]
    keys = {
        f"{kind}:{key}"
        for m in costs.runs
        for kind in ("requests", "events")
        for key in m.calls[kind]
    }
    slope: dict[str, float] = {}
    fixed: dict[str, float] = {}
    extra = full[0].batches - one.batches
    for name in sorted(keys):
        kind, key = name.split(":", 1)
        first = one.calls[kind].get(key, 0)
        later = statistics.median(m.calls[kind].get(key, 0) for m in full)
        slope[name] = (later - first) / extra if extra else 0.0
        fixed[name] = first - slope[name] * one.batches
    return slope, fixed


def mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def print_report(costs: Costs) -> None:
    full = costs.runs[1:]
    cpu = statistics.median(m.cpu_per_message_us or 0 for m in full)
    server = [m.server_per_message_us for m in full if m.server_per_message_us is not None]
    receipts = [m for m in full if m.receiver_cpu is not None and m.receipts]
    slope, fixed = per_batch(costs)
    say("\nconditions: " + json.dumps(costs.conditions))
    say("\n| figure | value | how |")
    say("|---|---|---|")
    say(
        f"| campaign CPU per message | {cpu:,.0f} µs | median of {len(full)} campaigns of "
        f"{full[0].run.sent:,}: "
        + ", ".join(f"{m.cpu_per_message_us or 0:,.0f}" for m in full)
        + " µs |"
    )
    if server:
        say(
            f"| Prefect server CPU per message | {statistics.median(server):,.1f} µs | "
            "its process tree over the same campaigns |"
        )
    say(
        f"| Prefect API calls per batch | {sum(slope.values()):,.1f} | "
        f"(full − one batch) ÷ {full[0].batches - costs.runs[0].batches} extra batches |"
    )
    say(
        f"| Prefect API calls per flow run | {sum(fixed.values()):,.1f} | "
        "the rest: created, started, reported, ended |"
    )
    for size in costs.sizes:
        packed = next((p for p in costs.packed if p.table == size.table), None)
        if not size.rows:
            continue
        unit = {"deliveries": "delivery row", "callback_events": "stored push"}.get(
            size.table, "row"
        )
        say(
            f"| {size.table} bytes per {unit} | {size.per_row() or 0:,.0f} "
            f"(packed {packed.per_row() if packed else 0:,.0f}) | {mib(size.total)} for "
            f"{size.rows:,} rows ({size.dead_rows or 0:,} dead); heap {mib(size.heap)}, "
            f"indexes {mib(size.indexes)}; after VACUUM FULL {mib(packed.total if packed else 0)} |"
        )
    if receipts:
        per = statistics.median(m.receiver_cpu / m.receipts * 1e6 for m in receipts)  # type: ignore[operator]
        idle = costs.receiver_idle_cpu_per_s
        say(
            f"| receiver CPU per callback | {per:,.0f} µs | one process, safe mode, "
            f"receipts of the full campaigns; idle {(idle or 0) * 1000:,.1f} ms/s |"
        )
    say("\nPrefect API calls of the flow run (per run | per extra batch):")
    for name in sorted(slope, key=lambda n: (-abs(slope[n]), n)):
        say(f"  {name:<60} {fixed[name]:>6.1f} | {slope[name]:>5.2f}")
    logs = [m.calls["log_records"] for m in costs.runs]
    say(f"  log records sent (one-batch run, full runs): {logs}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.costs", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3, help="full campaigns (≥ 1)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
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
