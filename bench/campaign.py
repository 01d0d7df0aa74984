"""wxpush end to end against its raw ceiling, on one simulator, in one run.

    .venv/bin/python -m bench.campaign                  # everything, SQLite (~15 min)
    .venv/bin/python -m bench.campaign --parts ceiling,e2e --sizes 10000
    .venv/bin/python -m bench.campaign --database-url postgresql://postgres@127.0.0.1:5432/test

Run it as a module from the repository root (it imports `bench.simulator` and
`bench.sender`, whose bare loops it reuses). It starts, and stops at the end:

- the WeChat API simulator (`python -m wechat.simulator`, faults off, daily quota 10^9);
- a Prefect server: `prefect server start` in a subprocess with a temporary PREFECT_HOME
  (a real API server with its services, as an operator runs it; not
  `prefect_test_harness`, which the tests use);
- a temporary database: a SQLite file, or with `--database-url` a fresh schema on that
  PostgreSQL server (dropped at the end).

The audience is `db.seed.seed_recipients` data (Chinese and Latin nicknames, interaction ages
0-10 days, some unsubscribed, blocked or with names too long for a `thing` field), registered
as followers in the simulator and analyzed once written (the planner knows them before the
first campaign), and a custom audience SQL (`audience_sql` below) that picks
the sendable rows: subscribed, not blocked, interacted, nickname ≤ 20 characters, the first
N by openid. `window_hours` is 264 (11 days): the window CASE still runs on every row, and
every row is inside it. The message is the demo template with `{nickname}` in `thing1`.

Parts (`--parts`, in this order):

1. `ceiling` — bare async loops in this process, no database, no Prefect, sending the same
   template message to the same followers: httpx + `httpx_aiohttp.AiohttpTransport` (the
   transport wxpush uses) and, for context, raw aiohttp, at the campaign's concurrency and
   twice it (a campaign runs two batches at once). **The ceiling** is the fastest httpx +
   aiohttp-transport run (the issue's definition of the raw ceiling).
2. `e2e` — `push_campaign` in a child process (`--child campaign`): audience SQL → window →
   `send_batch` tasks → ledger → report, rate limit off, for each `--grid` batch × concurrency
   at the first `--sizes` size, then the best of them at the other sizes. msg/s = sent ÷ the
   wall time of the `push_campaign` call, and sent ÷ the send span in the ledger (first
   attempt → last sent_at); the longest pause is the widest gap between two consecutive
   first attempts (a campaign waiting for its next batch). The simulator is reset before
   each campaign, and its accepted count must equal the ledger's sent count. With several
   sizes, the goals compare msg/s at the largest and the smallest (issue 15: a campaign
   must not slow down as it runs), e.g. `--sizes 100000,300000 --grid 2000x16 --top 1`.
3. `rate` — campaigns with `rate_per_second` at each `--rates`, `--rate-seconds` of sends
   each; achieved = sent ÷ (last sent_at − first attempt) from the ledger.
4. `rss` — peak RSS (the child's `ru_maxrss` from wait4) of **dry-run** campaigns at each
   `--rss-sizes` (stream the whole audience, render and check every message, send nothing:
   sending a million messages takes too long here). Its audience is a second app, seeded
   without simulator followers; seeding is bounded by `--max-seed-seconds`.
5. `map` — one Prefect task per message (`.map` on a ThreadPoolTaskRunner with
   `--map-workers` threads), `--map-size` recipients, for contrast.

`--max-seconds` bounds each part; a campaign still running at its part's deadline is killed
and reported. `--profile-dir DIR` adds one e2e run of the best configuration at the largest
size under py-spy and prints where its CPU time went (that run's figures are not used).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench.sender import stable_token, workers
from bench.simulator import STACKS, Outcome, Send, cpu_seconds
from cli.seed import follower_payload
from config import overridden
from db.audience_role import ensure_audience_role
from db.engine import AUDIENCE_ENV_VAR, ENV_VAR, audience_database_url, database_url, make_engine
from db.migrate import upgrade
from db.models import deliveries
from db.seed import analyze, seed_recipients
from tasks.message import client_msg_id_for
from wechat.simulator.defaults import DEMO_TEMPLATE_ID, DEMO_TEMPLATE_VALUES
from wechat.simulator.process import SimulatorProcess, free_port, start_simulator

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("ceiling", "e2e", "rate", "rss", "map")
APP = "bench"  # wechat-app block of the sending population (the simulator's app)
RSS_APP = "bench-rss"  # block of the dry-run population (no simulator followers needed)
RSS_APP_ID = "wx00000000000000b1"  # an AppID of the right form (wechat/identifiers.py)
#: Every seeded interaction is at most 240 h old: a wider window keeps every row inside it
#: while the window CASE still runs on each row.
WINDOW_HOURS = 264
#: Share of seed_recipients rows the audience SQL keeps (≈0.90 measured); seeding aims a
#: little above the need and tops up if short.
ELIGIBLE_SHARE = 0.88
CONSTANT_FIELDS = {k: v for k, v in DEMO_TEMPLATE_VALUES if k != "thing1"}
TEMPLATE_DATA = {"thing1": "{nickname}", **CONSTANT_FIELDS}
URL_TEMPLATE = "https://shop.example/u/{openid}"
#: Rate runs cut their audience into batches of this many seconds of sending, so batch
#: hand-overs fall inside the measurement (4 batches, two at a time).
RATE_BATCH_SECONDS = 2.5
RATE_CONCURRENCY = 16
WARM_UP_MESSAGES = 300
MIB = 1024 * 1024


def audience_sql(limit: int) -> str:
    """The bench audience: the first `limit` sendable recipients of the app, by openid."""
    return (
        "SELECT openid, nickname, city, last_interaction_at\n"
        "FROM recipients\n"
        "WHERE app_id = :app_id AND subscribed AND blocked IS NULL\n"
        "  AND last_interaction_at IS NOT NULL AND length(nickname) <= 20\n"
        f"ORDER BY openid\nLIMIT {int(limit)}"
    )


def wire(row: dict[str, Any], campaign: str) -> dict[str, Any]:
    """The JSON body `push_campaign` sends for this row (same keys, order and values)."""
    openid = row["openid"]
    data = {"thing1": {"value": row["nickname"]}}
    data.update({key: {"value": value} for key, value in CONSTANT_FIELDS.items()})
    return {
        "touser": openid,
        "template_id": DEMO_TEMPLATE_ID,
        "data": data,
        "url": URL_TEMPLATE.format(openid=openid),
        "client_msg_id": client_msg_id_for(campaign, openid),
    }


# -- results ------------------------------------------------------------------------------------


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
class Child:
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


# -- processes ------------------------------------------------------------------------------------


def say(text_: str) -> None:
    print(text_, flush=True)


def tree_cpu(pid: int) -> float | None:
    """CPU seconds of a process and its live children (the Prefect server forks uvicorn)."""
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total
    except psutil.Error:
        return None


def postgres_cpu() -> float | None:
    """CPU seconds of the `postgres` processes on the machine, including backends that
    already exited (the postmaster reaps them: their time is in its children's times)."""
    total, found = 0.0, False
    for proc in psutil.process_iter(["name"]):
        if (proc.info.get("name") or "").startswith("postgres"):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
                found = True
    return total if found else None


@dataclass
class PrefectServer:
    """`prefect server start` in its own process group, with a temporary PREFECT_HOME."""

    process: subprocess.Popen[bytes]
    api_url: str
    home: Path
    log_path: Path

    def env(self) -> dict[str, str]:
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def stop(self) -> None:
        stop_group(self.process)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers (only this process's group)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextlib.contextmanager
def prefect_server(folder: Path, startup_timeout: float = 120.0) -> Iterator[PrefectServer]:
    """A real Prefect API server for the children; stopped (whole group) on exit."""
    home = folder / "prefect-home"
    home.mkdir()
    port = free_port()
    log_path = folder / "prefect-server.log"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*argv, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    server = PrefectServer(process, f"http://127.0.0.1:{port}/api", home, log_path)
    try:
        wait_healthy(server, startup_timeout)
        yield server
    finally:
        server.stop()


def wait_healthy(server: PrefectServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{tail(server.log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.api_url}/health", timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(
        f"prefect server not healthy after {timeout:.0f} s:\n{tail(server.log_path)}"
    )


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@contextlib.contextmanager
def bench_database(url: str | None, folder: Path) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file in `folder`, or a new schema on the
    PostgreSQL server of `url` (reached through search_path, dropped on exit) with its own
    audience role, the audience URL of this process while the block runs (`overridden`) and
    of its children (`Bench.child_env`): campaigns run as they should in production, not as
    the server's superuser."""
    if not url:
        path = folder / "wxpush-bench.db"
        resolved = f"sqlite:///{path}"
        upgrade(resolved)
        with overridden(audience_database_url=resolved):
            yield resolved
        return
    server_url = database_url(url)
    schema = f"wxpush_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        parsed = make_url(server_url)
        options = f"{parsed.query.get('options', '')} -csearch_path={schema}".strip()
        resolved = parsed.update_query_dict({"options": options}).render_as_string(
            hide_password=False
        )
        upgrade(resolved)
        owner = make_engine(resolved, poolclass=NullPool)
        try:
            audience = ensure_audience_role(owner, schema).url
        finally:
            owner.dispose()
        with overridden(audience_database_url=audience):
            yield resolved
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            role = text("SELECT 1 FROM pg_roles WHERE rolname = :name")
            if conn.execute(role, {"name": schema}).scalar():  # the audience role, by name
                conn.execute(text(f'DROP OWNED BY "{schema}"'))
                conn.execute(text(f'DROP ROLE "{schema}"'))
        admin.dispose()


# -- the child process --------------------------------------------------------------------------


@dataclass
class Bench:
    """What every part needs: the services, the database and where to put files."""

    args: argparse.Namespace
    folder: Path
    sim: SimulatorProcess
    server: PrefectServer
    db_url: str
    engine: Engine
    report: Report
    children: int = 0

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def child_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            **self.server.env(),
            ENV_VAR: self.db_url,
            AUDIENCE_ENV_VAR: audience_database_url(),  # bench_database's, explicitly
        }
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def app_values(self, name: str, app_id: str) -> dict[str, str]:
        return {
            "name": name,
            "app_id": app_id,
            "app_secret": self.sim.app_secret,
            "api_base_url": self.sim.base_url,
        }


class Profiler:
    """py-spy attached to a child only around its flow call: the child touches `ready` just
    before the flow and waits for `go`, so imports and setup stay out of the profile."""

    def __init__(self, output: Path, stem: Path) -> None:
        self.output = output
        self.ready = Path(f"{stem}.ready")
        self.go = Path(f"{stem}.go")
        self.process: subprocess.Popen[bytes] | None = None

    def poll(self, child_pid: int) -> None:
        """Start py-spy once the child is ready, then let the child go."""
        if self.process is not None or not self.ready.exists():
            return
        py_spy = Path(sys.executable).with_name("py-spy")
        argv = [str(py_spy), "record", "--pid", str(child_pid), "--rate", "200"]
        argv += ["--format", "raw", "--threads", "--nonblocking", "--output", str(self.output)]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(1.0)  # py-spy attaches in well under a second
        self.go.touch()

    def finish(self) -> None:
        """py-spy stops when the child exits; wait for it to write the profile."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_group(self.process, timeout=5)


def wait_child(
    process: subprocess.Popen[bytes], deadline: float, profiler: Profiler | None = None
) -> tuple[Any, bool]:
    """Reap the child with wait4 (its own rusage: peak RSS, CPU); kill it at `deadline`."""
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return usage, timed_out
        if profiler is not None:
            profiler.poll(process.pid)
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10  # then SIGKILL
        elif timed_out and time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        time.sleep(0.05)


def run_child(
    bench: Bench, mode: str, spec: dict[str, Any], deadline: float, profile: Path | None = None
) -> Child:
    """`python -m bench.campaign --child MODE SPEC OUT`, optionally profiled by py-spy."""
    bench.children += 1
    stem = bench.folder / f"child-{bench.children:02d}-{mode}"
    spec_path, out_path, log_path = (Path(f"{stem}{s}") for s in (".in.json", ".out.json", ".log"))
    profiler = None if profile is None else Profiler(profile, stem)
    if profiler is not None:
        spec = {**spec, "ready_file": str(profiler.ready), "go_file": str(profiler.go)}
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, "-m", "bench.campaign", "--child", mode, str(spec_path), str(out_path)]
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=bench.child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        usage, timed_out = wait_child(process, deadline, profiler)
    finally:
        if process.returncode is None:  # interrupted: leave nothing behind
            stop_group(process, timeout=5)
        if profiler is not None:
            profiler.finish()
    wall = time.perf_counter() - started
    payload = json.loads(out_path.read_text()) if out_path.exists() else None
    return Child(
        payload=payload,
        returncode=process.returncode,
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        max_rss=usage.ru_maxrss * 1024,  # KiB on Linux
        timed_out=timed_out,
        log_tail=tail(log_path),
    )


def child_main(mode: str, spec_path: str, out_path: str) -> None:
    """Entry point of a child process: run one thing, write its JSON answer."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        answer = {"campaign": child_campaign, "map": child_map}[mode](spec)
    except Exception as exc:  # reported by the parent, with the log tail
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    Path(out_path).write_text(json.dumps(answer))


def wait_for_profiler(spec: dict[str, Any], timeout: float = 30.0) -> None:
    """When profiled, say "ready" and wait until py-spy is attached (see `Profiler`)."""
    if "ready_file" not in spec:
        return
    Path(spec["ready_file"]).touch()
    go = Path(spec["go_file"])
    deadline = time.monotonic() + timeout
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def rss_now() -> int:
    return psutil.Process().memory_info().rss


async def prepare_app(app: dict[str, str], need_token: bool) -> None:
    """The wechat-app block (idempotent) and, for real sends, a token the simulator accepts:
    the parent resets the simulator before each campaign, which forgets every token."""
    from cli.setup import asetup_app
    from tasks.token import ensure_token, verify_token

    await asetup_app(
        app["name"],
        app_id=app["app_id"],
        app_secret=app["app_secret"],
        api_base_url=app["api_base_url"],
    )
    if need_token:
        await ensure_token(app["name"], 0)
        await verify_token(app["name"])


def child_campaign(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `push_campaign` once; time only the flow call (not imports, setup or token)."""
    from flows.campaign import push_campaign
    from tasks.params import CampaignParams

    params = CampaignParams.model_validate(spec["params"])
    asyncio.run(prepare_app(spec["app"], need_token=not params.dry_run))
    wait_for_profiler(spec)
    answer: dict[str, Any] = {"rss_ready": rss_now()}
    cpu = time.process_time()
    started = time.perf_counter()
    state = push_campaign(params, return_state=True)
    answer["wall"] = time.perf_counter() - started
    answer["cpu"] = time.process_time() - cpu
    if state.is_completed():
        answer["result"] = state.result().model_dump(mode="json")
    else:
        answer["error"] = f"flow run ended {state.name}: {state.message}"
    return answer


def child_map(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the one-task-per-message flow once; time only the flow call."""
    asyncio.run(prepare_app(spec["app"], need_token=True))
    flow_fn = build_map_flow(spec["workers"])
    started = time.perf_counter()
    state = flow_fn(
        spec["app"]["name"], spec["sql"], spec["n"], spec["campaign"], return_state=True
    )
    answer: dict[str, Any] = {"wall": time.perf_counter() - started}
    if state.is_completed():
        answer["outcomes"] = state.result()
    else:
        answer["error"] = f"flow run ended {state.name}: {state.message}"
    return answer


def build_map_flow(max_workers: int) -> Any:
    """A flow that sends one message per Prefect task: the design docs/performance.md rejects.

    Same audience query, renderer, client and send as the campaign; no ledger (so it is an
    upper bound for that design). An async task runs in its own event loop on a pool
    thread, so each task opens its own `WeChatClient` (one connection).
    """
    from prefect import flow, task, unmapped
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.utilities.asyncutils import run_coro_as_sync
    from pydantic import SecretStr

    from db.audience import preview_audience
    from tasks.database import audience_engine
    from tasks.message import MessageSpec, render
    from tasks.token import get_access_token, load_app
    from wechat.client import WeChatClient

    @task(name="send-one-message", cache_policy=NO_CACHE, persist_result=False)
    async def send_one(
        row: dict[str, Any], spec: MessageSpec, campaign: str, base_url: str, token: SecretStr
    ) -> str:
        message = render(spec, row, client_msg_id=client_msg_id_for(campaign, row["openid"]))
        if isinstance(message, list):
            return "invalid"
        async with WeChatClient(base_url, max_connections=1) as client:
            await client.send_template(token, message)  # type: ignore[arg-type]
        return "sent"

    @flow(
        name="bench-one-task-per-message",
        task_runner=ThreadPoolTaskRunner(max_workers=max_workers),
    )
    def one_task_per_message(app: str, sql: str, n: int, campaign: str) -> dict[str, int]:
        block = run_coro_as_sync(load_app(app))
        rows = preview_audience(
            audience_engine(), sql, {"app_id": block.app_id}, sample_size=n
        ).rows
        spec = MessageSpec(template_id=DEMO_TEMPLATE_ID, data=TEMPLATE_DATA, url=URL_TEMPLATE)
        token = run_coro_as_sync(get_access_token(app))
        futures = send_one.map(
            rows, unmapped(spec), unmapped(campaign), unmapped(block.api_base_url), unmapped(token)
        )
        outcomes: Counter[str] = Counter()
        for future in futures:
            result = future.result(raise_on_failure=False)
            outcomes[result if isinstance(result, str) else type(result).__name__] += 1
        return dict(outcomes)

    return one_task_per_message


# -- the population -------------------------------------------------------------------------------


def eligible_count(engine: Engine, app_id: str) -> int:
    sql = f"SELECT count(*) FROM ({audience_sql(10**9)}) AS q"
    with engine.connect() as conn:
        return int(conn.execute(text(sql), {"app_id": app_id}).scalar_one())


class SeedTimeUp(Exception):
    """Raised from seed_recipients' chunk callback when `--max-seed-seconds` is over."""


def seed_population(
    bench: Bench, app_id: str, need: int, *, register: bool, deadline: float
) -> int:
    """Seed until the audience SQL has `need` rows (or time is up); returns how many it has.

    One `seed_recipients` call per round (a new seed value each: disjoint openids), committed
    chunk by chunk so a time-out keeps what was written. With `register`, every chunk also
    becomes followers in the simulator (as `wxpush seed --simulator-url` does).
    """
    have = eligible_count(bench.engine, app_id)
    round_ = 0
    while have < need and time.monotonic() < deadline:
        count = math.ceil((need - have) / ELIGIBLE_SHARE)
        started = time.perf_counter()
        written = seed_round(bench, app_id, count, 1000 + round_, register, deadline)
        seconds = time.perf_counter() - started
        have = eligible_count(bench.engine, app_id)
        bench.report.seeding.append(
            {"app_id": app_id, "rows": written, "seconds": round(seconds, 1), "eligible": have}
        )
        say(
            f"  seeded {written:,} recipients of {app_id} in {seconds:.1f} s "
            f"({written / seconds:,.0f}/s{', + simulator followers' if register else ''}); "
            f"{have:,} sendable"
        )
        round_ += 1
    return have


def seed_round(
    bench: Bench, app_id: str, count: int, seed: int, register: bool, deadline: float
) -> int:
    """One `seed_recipients` call, committed after every chunk (its callback commits the
    connection opened below), stopped at `deadline`; returns the rows written."""
    written = 0

    def on_chunk(chunk: Sequence[Any]) -> None:
        nonlocal written
        if register:
            bench.sim.admin.add_followers(follower_payload(r) for r in chunk)
        written += len(chunk)
        conn.commit()
        if time.monotonic() > deadline:
            raise SeedTimeUp

    with bench.engine.connect() as conn:
        try:
            seed_recipients(conn, app_id=app_id, count=count, seed=seed, on_chunk=on_chunk)
        except SeedTimeUp:
            analyze(conn)  # seed_recipients' own ANALYZE did not run: the campaigns need it
        conn.commit()
    return written


def audience_rows(engine: Engine, app_id: str, n: int) -> list[dict[str, Any]]:
    """The first `n` audience rows, read before a bare loop starts (the loop has no DB)."""
    with engine.connect() as conn:
        result = conn.execute(text(audience_sql(n)), {"app_id": app_id}).mappings()
        return [dict(row) for row in result]


# -- part 1: the ceiling --------------------------------------------------------------------------


class Until:
    """Rows until a deadline; shared by every worker of a bare loop (one event loop)."""

    def __init__(self, rows: Sequence[dict[str, Any]], deadline: float) -> None:
        self._rows = iter(rows)
        self._deadline = deadline
        self.taken = 0

    def __iter__(self) -> Until:
        return self

    def __next__(self) -> dict[str, Any]:
        if time.perf_counter() > self._deadline:
            raise StopIteration
        row = next(self._rows)
        self.taken += 1
        return row


async def bare_loop(
    stack: str, concurrency: int, url: str, rows: list[dict[str, Any]], tag: str, seconds: float
) -> Outcome:
    """`concurrency` workers building each row's JSON and POSTing it (bench.sender's
    `workers`, over bench.simulator's client stacks); a short warm-up first, uncounted."""

    async def job(send: Send) -> Outcome:
        def sender(campaign: str) -> Callable[[dict[str, Any]], Awaitable[bool]]:
            async def one(row: dict[str, Any]) -> bool:
                return await send(url, orjson.dumps(wire(row, campaign))) == 0

            return one

        await workers(concurrency, rows[:WARM_UP_MESSAGES], sender(f"{tag}-warm"))
        started = time.perf_counter()
        items = Until(rows, started + seconds)
        ok = await workers(concurrency, items, sender(tag))  # type: ignore[arg-type]
        return items.taken, ok, time.perf_counter() - started

    return await STACKS[stack](concurrency, job)


def part_ceiling(bench: Bench, deadline: float) -> None:
    args = bench.args
    concurrencies = sorted({c for _, c in args.grid} | {2 * c for _, c in args.grid})
    say(f"\n[ceiling] {args.ceiling_messages:,} messages per run, concurrency {concurrencies}")
    for stack in ("httpx-aiohttp", "aiohttp"):
        for concurrency in concurrencies:
            if deadline - time.monotonic() <= 5:
                say("  --max-seconds reached: skipping the remaining ceiling runs")
                return
            measure_bare(bench, stack, concurrency, deadline, when="before")


def measure_bare(
    bench: Bench, stack: str, concurrency: int, deadline: float, when: str
) -> CeilingRun:
    """One bare loop over the first `--ceiling-messages` audience rows (simulator reset
    first, so its counters measure this loop); checks accepted = answered 0 = sent."""
    rows = audience_rows(bench.engine, bench.sim.app_id, bench.args.ceiling_messages)
    bench.sim.admin.reset()
    token = stable_token(bench.sim)
    url = f"{bench.sim.base_url}/cgi-bin/message/template/send?access_token={token}"
    cpu_before = cpu_seconds(bench.sim.process.pid)
    tag = f"ceiling-{stack}-{concurrency}-{when}"
    seconds = max(1.0, deadline - time.monotonic() - 5)
    own_cpu = time.process_time()
    sent, ok, elapsed = asyncio.run(bare_loop(stack, concurrency, url, rows, tag, seconds))
    own_cpu = time.process_time() - own_cpu
    cpu_after = cpu_seconds(bench.sim.process.pid)
    warm = min(WARM_UP_MESSAGES, len(rows))
    accepted = bench.sim.admin.counters().accepted - warm
    sim_us = None
    if cpu_before is not None and cpu_after is not None and sent:
        sim_us = (cpu_after - cpu_before) / (sent + warm) * 1e6
    client_us = own_cpu / (sent + warm) * 1e6 if sent else None
    run = CeilingRun(stack, concurrency, sent, ok, elapsed, accepted, sim_us, client_us, when)
    bench.report.ceiling.append(run)
    check = "ok" if sent == ok == accepted else f"MISMATCH ok={ok} accepted={accepted}"
    say(f"  {stack:<14} {concurrency:>3} in flight ({when}): {run.rate:>7,.0f}/s  ({check})")
    return run


# -- parts 2-4: campaigns --------------------------------------------------------------------------


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
            tree_cpu(bench.server.process.pid),
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


def as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


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


def pause_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.0f}"


def part_e2e(bench: Bench, deadline: float) -> None:
    """The grid at the first size; the `--top` fastest configurations at the other sizes;
    then the ceiling once more, right after, to show how much the machine drifted."""
    args = bench.args
    first, *others = args.sizes
    say(f"\n[e2e] {first:,} recipients for each of {len(args.grid)} batch × concurrency")
    tried: list[CampaignRun] = []
    for batch_size, concurrency in args.grid:
        if time.monotonic() > deadline:
            break
        run = run_campaign(bench, CampaignSpec("e2e", first, batch_size, concurrency), deadline)
        tried.append(run)
        bench.report.e2e.append(run)
        say(f"  batch {batch_size:>5} × {concurrency:>3} in flight: {describe(run)}")
    ranked = sorted((r for r in tried if r.consistent), key=lambda r: -r.wall_rate)
    ceiling = bench.report.ceiling_run()
    if ceiling is not None and others and ranked:  # bracket the long runs (a noisy machine)
        measure_bare(bench, ceiling.stack, ceiling.concurrency, deadline, when="again")
    for size in others:
        for best in ranked[: args.top]:
            if time.monotonic() > deadline:
                say(f"  --max-seconds reached: {size:,} not run")
                break
            spec = CampaignSpec("e2e", size, best.batch_size, best.concurrency)
            run = run_campaign(bench, spec, deadline)
            bench.report.e2e.append(run)
            say(f"  {size:,}, batch {best.batch_size} × {best.concurrency}: {describe(run)}")
    if ceiling is not None and ranked and time.monotonic() < deadline - 30:
        measure_bare(bench, ceiling.stack, ceiling.concurrency, deadline, when="after")


def part_rate(bench: Bench, deadline: float) -> None:
    args = bench.args
    say(f"\n[rate] ~{args.rate_seconds:g} s of sends at each of {args.rates} msg/s")
    for rate in args.rates:
        if time.monotonic() > deadline:
            break
        n = max(2, int(rate * args.rate_seconds))
        batch = max(1, round(rate * RATE_BATCH_SECONDS))
        spec = CampaignSpec("rate", n, batch, RATE_CONCURRENCY, rate_per_second=rate)
        run = run_campaign(bench, spec, deadline)
        bench.report.rate.append(run)
        if run.span_rate:
            say(
                f"  configured {rate:g}/s: achieved {run.span_rate:.2f}/s "
                f"({run.span_rate / rate - 1:+.2%}), {describe(run)}"
            )
        else:
            say(f"  configured {rate:g}/s: {describe(run)}")


def part_rss(bench: Bench, deadline: float) -> None:
    args = bench.args
    say(f"\n[rss] dry-run campaigns (nothing sent) at {args.rss_sizes} recipients")
    seed_deadline = min(deadline, time.monotonic() + args.max_seed_seconds)
    have = seed_population(
        bench, RSS_APP_ID, max(args.rss_sizes), register=False, deadline=seed_deadline
    )
    batch_size, concurrency = best_config(bench.report)
    for size in args.rss_sizes:
        if time.monotonic() > deadline:
            break
        if have < size:
            say(f"  only {have:,} rows seeded in time: {size:,} measured at {have:,}")
            size = have
        spec = CampaignSpec("rss", size, batch_size, concurrency, dry_run=True, app=RSS_APP)
        run = run_campaign(bench, spec, deadline)
        bench.report.rss.append(run)
        say(f"  {size:,} recipients: {describe(run)}")


def best_config(report: Report) -> tuple[int, int]:
    """The e2e grid's fastest (batch, concurrency), or the defaults if e2e did not run."""
    good = [r for r in report.e2e if r.consistent]
    if not good:
        return 1000, 16
    best = max(good, key=lambda r: (r.recipients, r.wall_rate))
    return best.batch_size, best.concurrency


# -- part 5: one task per message ---------------------------------------------------------------


def part_map(bench: Bench, deadline: float) -> None:
    args = bench.args
    say(f"\n[map] one Prefect task per message, {args.map_size:,} messages")
    bench.sim.admin.reset()
    spec = {
        "app": bench.app_values(APP, bench.sim.app_id),
        "sql": audience_sql(args.map_size),
        "n": args.map_size,
        "workers": args.map_workers,
        "campaign": f"bench-map-{uuid.uuid4().hex[:8]}",
    }
    child = run_child(bench, "map", spec, deadline)
    payload = child.payload or {}
    sent = int((payload.get("outcomes") or {}).get("sent", 0))
    run = MapRun(
        messages=args.map_size,
        workers=args.map_workers,
        sent=sent,
        flow_seconds=float(payload.get("wall", 0.0)),
        accepted=bench.sim.admin.counters().accepted,
        peak_rss=child.max_rss,
        error=child.error,
    )
    bench.report.map.append(run)
    if run.error:
        say(f"  FAILED: {run.error}")
    else:
        check = "accepted = sent" if run.accepted == sent else f"MISMATCH accepted={run.accepted}"
        say(f"  {sent:,} sent in {run.flow_seconds:.1f} s: {run.rate:,.0f}/s; {check}")


# -- profile -------------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
#: Components, by the file of the innermost frame that belongs to one (py-spy prints paths
#: relative to sys.path, so a prefix names the package). Stdlib frames are skipped, so a
#: socket write made by aiohttp counts as the HTTP client.
COMPONENTS = (
    ("wxpush: render + field rules", ("tasks/message.py", "wechat/fields.py")),
    ("wxpush: send engine + WeChat client", ("tasks/sender.py", "tasks/ratelimit.py", "wechat/")),
    ("wxpush: audience, ledger, batch, flow", ("db/", "flows/", "tasks/")),
    ("HTTP client: httpx, httpx_aiohttp, aiohttp", ("httpx", "aiohttp/", "yarl/", "multidict/")),
    ("database: SQLAlchemy + driver", ("sqlalchemy/", "psycopg/")),
    ("Prefect (engine, client, events, logs)", ("prefect/", "websockets/", "anyio/", "coolname/")),
    ("pydantic", ("pydantic",)),
)
STDLIB = (  # categories of a sample with no package frame at all, by its leaf
    ("event loop: select, sockets, TLS", ("asyncio/", "selectors.py", "socket.py", "ssl.py")),
    ("threads, queues, locks", ("threading.py", "queue.py", "concurrent/")),
    ("logging", ("logging/",)),
)


def frame_file(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    return (match.group("func"), match.group("file")) if match else (frame, "")


def categorize(frames: Sequence[str]) -> str:
    """The component of the innermost package frame, else the stdlib category of the leaf."""
    for frame in reversed(frames):
        _, file_ = frame_file(frame)
        for label, prefixes in COMPONENTS:
            if file_.startswith(prefixes):
                return label
    _, leaf = frame_file(frames[-1])
    for label, prefixes in STDLIB:
        if leaf.startswith(prefixes):
            return label
    return "other: interpreter, GC, stdlib"


def thread_name(frames: Sequence[str]) -> str:
    name = next((f for f in frames if f.startswith("thread (")), "thread (?): ?")
    return re.sub(r"[-_]\d+(_\d+)?$", "", name.split(": ", 1)[-1])


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Where on-CPU samples went, from py-spy's raw (collapsed) output: by component
    (innermost package frame), by thread, and the top leaf functions."""
    by_component: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        total += count
        by_component[categorize(frames)] += count
        by_thread[thread_name(frames)] += count
        func_, file_ = frame_file(frames[-1])
        by_function[f"{func_} ({'/'.join(file_.split('/')[-2:])})"] += count
    if not total:
        return {"samples": 0, "file": str(path)}

    def shares(counter: Counter[str], n: int | None = None) -> dict[str, float]:
        return {k: round(v / total, 3) for k, v in counter.most_common(n)}

    return {
        "samples": total,
        "by_component": shares(by_component),
        "by_thread": shares(by_thread),
        "top_leaf_functions": shares(by_function, top),
        "file": str(path),
    }


def part_profile(bench: Bench, deadline: float) -> None:
    """One extra e2e run under py-spy (timings perturbed, not reported as figures)."""
    folder = Path(bench.args.profile_dir)
    folder.mkdir(parents=True, exist_ok=True)
    batch_size, concurrency = best_config(bench.report)
    size = max(bench.args.sizes)
    say(f"\n[profile] {size:,} recipients, batch {batch_size} × {concurrency}, under py-spy")
    output = folder / f"campaign-{size}.txt"
    spec = CampaignSpec("profile", size, batch_size, concurrency)
    run = run_campaign(bench, spec, deadline, profile=output)
    say(f"  (profiled, slower) {describe(run)}")
    if not output.exists():
        say("  py-spy wrote no profile")
        return
    summary = summarize_profile(output)
    bench.report.profile = summary
    if not summary["samples"]:
        say("  the profile is empty")
        return
    say(f"  {summary['samples']:,} on-CPU samples (200/s, every thread) during the flow call")
    for title, key in (
        ("by component (innermost package frame)", "by_component"),
        ("by thread", "by_thread"),
        ("top leaf functions", "top_leaf_functions"),
    ):
        say(f"  {title}:")
        for label, share in summary[key].items():
            say(f"    {share:>6.1%}  {label}")


# -- output --------------------------------------------------------------------------------------


def us(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def print_tables(report: Report) -> None:
    ceiling = report.ceiling_run()
    say("\n" + "=" * 100)
    say("RESULTS — " + ", ".join(f"{k}: {v}" for k, v in report.conditions.items()))
    if report.ceiling:
        say("\nBare loops, no database, no Prefect (same messages, same followers)")
        say(
            f"{'client stack':<28} {'in flight':>9} {'when':>22} {'msg/s':>7} "
            f"{'CPU µs/msg: client':>18} {'sim':>5}"
        )
        for r in report.ceiling:
            mark = "  ← the ceiling" if r is ceiling else ""
            when = {"again": "before the large runs", "after": "after the large runs"}.get(
                r.when, "before the campaigns"
            )
            say(
                f"{stack_name(r.stack):<28} {r.concurrency:>9} {when:>22} {r.rate:>7,.0f} "
                f"{us(r.client_cpu_us):>18} {us(r.sim_cpu_us):>5}{mark}"
            )
    if report.e2e:
        print_e2e(report.e2e, ceiling)
    if report.rate:
        say("\nAchieved vs configured rate (achieved = sent ÷ (last sent_at − first attempt))")
        say(
            f"{'configured':>10} {'sent':>6} {'batch':>6} {'span s':>7} {'achieved':>9} "
            f"{'dev':>7} {'longest pause':>13}"
        )
        for r in report.rate:
            achieved = r.span_rate or 0.0
            rate = r.rate_per_second or 1.0
            say(
                f"{rate:>8g}/s {r.sent:>6} {r.batch_size:>6} {r.span_seconds or 0:>7.2f} "
                f"{achieved:>7.2f}/s {achieved / rate - 1:>+7.2%} "
                f"{(r.longest_pause or 0) * 1000:>10.0f} ms"
            )
    if report.rss:
        print_rss(report)
    if report.map:
        say("\nOne Prefect task per message (.map), ThreadPoolTaskRunner, no ledger")
        for m in report.map:
            if m.error:
                say(f"  FAILED: {m.error}")
                continue
            say(
                f"  {m.sent:,} messages, {m.workers} workers: {m.flow_seconds:.1f} s, "
                f"{m.rate:,.0f} msg/s, peak RSS {m.peak_rss / MIB:,.0f} MiB"
            )
    print_goals(report)


def stack_name(stack: str) -> str:
    return {"httpx-aiohttp": "httpx + AiohttpTransport", "aiohttp": "raw aiohttp"}.get(stack, stack)


def print_e2e(runs: list[CampaignRun], ceiling: CeilingRun | None) -> None:
    say(
        "\nwxpush end to end (rate limit off): msg/s = sent ÷ push_campaign wall time; "
        "span = ledger first attempt → last sent_at"
    )
    say(
        f"{'recipients':>10} {'batch':>5} {'conc':>4} {'flow s':>7} {'msg/s':>7} "
        f"{'span s':>7} {'msg/s':>7} {'÷ceiling':>8} {'(span)':>7} "
        f"{'CPU µs/msg: wxpush':>18} {'sim':>5} {'prefect':>7} {'db':>5} {'RSS MiB':>8} "
        f"{'pause ms':>8} check"
    )
    for r in runs:
        if r.error:
            say(f"{r.recipients:>10} {r.batch_size:>5} {r.concurrency:>4} FAILED: {r.error}")
            continue
        ratio = f"{r.wall_rate / ceiling.rate:.0%}" if ceiling else "—"
        span_ratio = f"{(r.span_rate or 0) / ceiling.rate:.0%}" if ceiling else "—"
        check = "ok" if r.consistent else f"accepted {r.accepted}"
        say(
            f"{r.recipients:>10,} {r.batch_size:>5} {r.concurrency:>4} {r.flow_seconds:>7.1f} "
            f"{r.wall_rate:>7,.0f} {r.span_seconds or 0:>7.1f} {r.span_rate or 0:>7,.0f} "
            f"{ratio:>8} {span_ratio:>7} {us(r.per_message_us(r.campaign_cpu)):>18} "
            f"{us(r.per_message_us(r.sim_cpu)):>5} {us(r.per_message_us(r.server_cpu)):>7} "
            f"{us(r.per_message_us(r.db_cpu)):>5} {r.peak_rss / MIB:>8,.0f} "
            f"{pause_ms(r.longest_pause):>8} {check}"
        )


def print_rss(report: Report) -> None:
    say(
        "\nPeak RSS of the campaign process — DRY RUN (streams the whole audience, renders and "
        "checks every message, sends nothing)"
    )
    say(f"{'recipients':>10} {'batch':>5} {'rows':>9} {'flow s':>7} {'RSS ready':>10} {'peak':>8}")
    for r in report.rss:
        if r.error:
            say(f"{r.recipients:>10,} FAILED: {r.error}")
            continue
        say(
            f"{r.recipients:>10,} {r.batch_size:>5} {r.rows:>9,} {r.flow_seconds:>7.1f} "
            f"{r.rss_ready / MIB:>6,.0f} MiB {r.peak_rss / MIB:>4,.0f} MiB"
        )


def goals(report: Report) -> dict[str, Any]:
    """The issue's three goals, measured."""
    out: dict[str, Any] = {}
    ceiling = report.ceiling_run()
    big = [r for r in report.e2e if r.consistent and r.recipients >= 100_000]
    if big:  # the goal is at 100k: the runs of the smallest size from 100k up, not a larger one
        big = [r for r in big if r.recipients == min(b.recipients for b in big)]
    if ceiling and big:
        run = max(big, key=lambda r: r.wall_rate)
        ratio = run.wall_rate / ceiling.rate
        same = [
            r.rate
            for r in report.ceiling
            if (r.stack, r.concurrency) == (ceiling.stack, ceiling.concurrency)
        ]
        out["e2e_vs_ceiling_at_100k"] = {
            "msg_per_s": round(run.wall_rate, 1),
            "ceiling_msg_per_s": round(ceiling.rate, 1),
            "ratio": round(ratio, 3),
            "span_ratio": round((run.span_rate or 0) / ceiling.rate, 3),
            # against the mean of every run of the ceiling's stack and concurrency (before,
            # and bracketing the large runs): less conservative, shows the machine's drift
            "ratio_vs_mean_ceiling": round(run.wall_rate / (sum(same) / len(same)), 3),
            # CPU per message of the bare loop ÷ of the campaign process: steadier than
            # wall-clock rates on a machine whose speed drifts
            "cpu_efficiency": cpu_efficiency(report, run),
            "goal": 0.70,
            "met": ratio >= 0.70,
        }
    by_size = size_scaling(report)
    if by_size is not None:
        out["e2e_by_size"] = by_size
    rss = {r.recipients: r.peak_rss for r in report.rss if not r.error}
    if 100_000 in rss and 1_000_000 in rss:
        ratio = rss[1_000_000] / rss[100_000]
        out["rss_1m_vs_100k"] = {"ratio": round(ratio, 3), "goal": 1.2, "met": ratio <= 1.2}
    deviations = [
        (r.rate_per_second, (r.span_rate or 0) / (r.rate_per_second or 1) - 1)
        for r in report.rate
        if r.span_rate and not r.error
    ]
    if deviations:
        out["rate_deviation"] = {
            "by_rate": {str(rate): round(dev, 4) for rate, dev in deviations},
            "goal": 0.05,
            "met": all(abs(dev) <= 0.05 for _, dev in deviations),
        }
    return out


def size_scaling(report: Report) -> dict[str, Any] | None:
    """Issue 15's goals: msg/s at the largest size within 15% of msg/s at the smallest, for
    the configuration run at the most sizes, and no pause between batches of 1 s or more."""
    runs: dict[tuple[int, int], dict[int, CampaignRun]] = {}
    for r in report.e2e:
        if r.consistent:
            runs.setdefault((r.batch_size, r.concurrency), {})[r.recipients] = r
    config, sized = max(runs.items(), key=lambda kv: len(kv[1]), default=((0, 0), {}))
    if len(sized) < 2:
        return None
    small, large = sized[min(sized)], sized[max(sized)]
    ratio = large.wall_rate / small.wall_rate if small.wall_rate else 0.0
    pauses = [r.longest_pause for r in sized.values() if r.longest_pause is not None]
    pause = max(pauses, default=None)
    return {
        "batch_x_concurrency": f"{config[0]}x{config[1]}",
        "msg_per_s": {str(size): round(r.wall_rate, 1) for size, r in sorted(sized.items())},
        "ratio_largest_vs_smallest": round(ratio, 3),
        "longest_pause_s": None if pause is None else round(pause, 3),
        "goal": {"ratio": 0.85, "longest_pause_s": 1.0},
        "met": ratio >= 0.85 and pause is not None and pause < 1.0,
    }


def cpu_efficiency(report: Report, run: CampaignRun) -> float | None:
    """Bare-loop CPU per message (mean of the ceiling's stack and concurrency) ÷ the
    campaign process's CPU per message."""
    ceiling = report.ceiling_run()
    if ceiling is None or not run.sent or not run.campaign_cpu:
        return None
    costs = [
        r.client_cpu_us
        for r in report.ceiling
        if (r.stack, r.concurrency) == (ceiling.stack, ceiling.concurrency) and r.client_cpu_us
    ]
    if not costs:
        return None
    return round((sum(costs) / len(costs)) / (run.campaign_cpu / run.sent * 1e6), 3)


def print_goals(report: Report) -> None:
    measured = goals(report)
    if not measured:
        return
    say("\nGoals (issue 3)")
    if "e2e_vs_ceiling_at_100k" in measured:
        g = measured["e2e_vs_ceiling_at_100k"]
        say(
            f"  end to end ≥ 70% of the ceiling at 100k: {g['msg_per_s']:,.0f} ÷ "
            f"{g['ceiling_msg_per_s']:,.0f} = {g['ratio']:.0%} ({g['span_ratio']:.0%} over the "
            f"send span; {g['ratio_vs_mean_ceiling']:.0%} of the mean of that loop's runs "
            f"before and around them) — {met(g['met'])}"
        )
        if g["cpu_efficiency"] is not None:
            say(
                f"    CPU per message: the bare loop needs {g['cpu_efficiency']:.0%} of what "
                "the campaign process spends"
            )
    if "e2e_by_size" in measured:
        g = measured["e2e_by_size"]
        rates = ", ".join(f"{int(n):,}: {v:,.0f}" for n, v in g["msg_per_s"].items())
        say(
            f"  (issue 15) msg/s by size, batch × concurrency {g['batch_x_concurrency']}: "
            f"{rates}; largest ÷ smallest {g['ratio_largest_vs_smallest']:.0%} (goal ≥ 85%), "
            f"longest pause {pause_ms(g['longest_pause_s'])} ms (goal < 1,000) — "
            f"{met(g['met'])}"
        )
    if "rss_1m_vs_100k" in measured:
        g = measured["rss_1m_vs_100k"]
        say(f"  peak RSS at 1M ≤ 1.2× at 100k (dry run): {g['ratio']:.2f}× — {met(g['met'])}")
    if "rate_deviation" in measured:
        g = measured["rate_deviation"]
        devs = ", ".join(f"{r}/s {d:+.2%}" for r, d in g["by_rate"].items())
        say(f"  achieved rate within ±5%: {devs} — {met(g['met'])}")


def met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def report_json(report: Report) -> dict[str, Any]:
    def campaign(r: CampaignRun) -> dict[str, Any]:
        return {
            **asdict(r),
            "msg_per_s": round(r.wall_rate, 1),
            "msg_per_s_span": None if r.span_rate is None else round(r.span_rate, 1),
        }

    ceiling = report.ceiling_run()
    return {
        "conditions": report.conditions,
        "seeding": report.seeding,
        "ceiling": None if ceiling is None else {**asdict(ceiling), "msg_per_s": ceiling.rate},
        "bare_loops": [{**asdict(r), "msg_per_s": round(r.rate, 1)} for r in report.ceiling],
        "e2e": [campaign(r) for r in report.e2e],
        "rate": [campaign(r) for r in report.rate],
        "rss_dry_run": [campaign(r) for r in report.rss],
        "map": [{**asdict(m), "msg_per_s": round(m.rate, 1)} for m in report.map],
        "profile": report.profile,
        "goals": goals(report),
    }


# -- main ------------------------------------------------------------------------------------------


def int_list(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v.strip()]


def grid_list(value: str) -> list[tuple[int, int]]:
    pairs = []
    for item in value.split(","):
        batch, _, concurrency = item.strip().partition("x")
        pairs.append((int(batch), int(concurrency)))
    return pairs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.campaign", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {','.join(PARTS)}")
    parser.add_argument("--sizes", type=int_list, default=[10_000, 100_000])
    parser.add_argument(
        "--grid",
        type=grid_list,
        default=grid_list("500x16,1000x16,2000x16,1000x32,2000x32"),
        help="batch_size x concurrency pairs tried at the first size",
    )
    parser.add_argument(
        "--top", type=int, default=2, help="grid configurations run at the other sizes"
    )
    parser.add_argument("--ceiling-messages", type=int, default=20_000)
    parser.add_argument("--rates", type=int_list, default=[50, 200])
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--rss-sizes", type=int_list, default=[100_000, 1_000_000])
    parser.add_argument("--map-size", type=int, default=2_000)
    parser.add_argument("--map-workers", type=int, default=16)
    parser.add_argument("--database-url", default=None, help="PostgreSQL server (default SQLite)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="per part")
    parser.add_argument("--max-seed-seconds", type=float, default=600.0)
    parser.add_argument("--profile-dir", default=None, help="add a py-spy profiled e2e run")
    parser.add_argument("--json-out", default=None, help="also write the JSON to this file")
    parser.add_argument("--keep-temp", action="store_true", help="keep logs and the database")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    return args


def population_need(args: argparse.Namespace) -> int:
    """Sendable recipients of the simulator's app that the chosen parts use."""
    need = [0]
    if "ceiling" in args.parts:
        need.append(args.ceiling_messages)
    if "e2e" in args.parts:
        need.extend(args.sizes)
    if "rate" in args.parts:
        need.extend(max(2, int(r * args.rate_seconds)) for r in args.rates)
    if "map" in args.parts:
        need.append(args.map_size)
    return max(need)


def conditions(bench: Bench) -> dict[str, Any]:
    return {
        "database": bench.engine.dialect.name,
        "cores": os.cpu_count(),
        "prefect_server": "prefect server start (subprocess, temp PREFECT_HOME, SQLite)",
        "simulator": "python -m wechat.simulator, faults off",
        "python": sys.version.split()[0],
        "started": datetime.now().isoformat(timespec="seconds"),
    }


PART_FUNCTIONS: dict[str, Callable[[Bench, float], None]] = {
    "ceiling": part_ceiling,
    "e2e": part_e2e,
    "rate": part_rate,
    "rss": part_rss,
    "map": part_map,
}


def run(args: argparse.Namespace) -> Report:
    report = Report()
    folder = Path(tempfile.mkdtemp(prefix="wxpush-bench-"))
    say(f"temporary files: {folder}")
    try:
        with contextlib.ExitStack() as stack:
            say("starting the simulator, a Prefect server and the database …")
            sim = stack.enter_context(start_simulator(extra_args=["--daily-quota", "1000000000"]))
            server = stack.enter_context(prefect_server(folder))
            db_url = stack.enter_context(bench_database(args.database_url, folder))
            engine = make_engine(db_url)
            stack.callback(engine.dispose)
            bench = Bench(args, folder, sim, server, db_url, engine, report)
            report.conditions = conditions(bench)
            say(f"  simulator {sim.base_url}, Prefect API {server.api_url}, {engine.dialect.name}")
            need = population_need(args)
            if need:
                say(f"seeding {need:,} sendable recipients (+ simulator followers) …")
                seed_deadline = time.monotonic() + args.max_seed_seconds
                seed_population(bench, sim.app_id, need, register=True, deadline=seed_deadline)
            for part in PARTS:
                if part in args.parts:
                    PART_FUNCTIONS[part](bench, time.monotonic() + args.max_seconds)
            if args.profile_dir:
                part_profile(bench, time.monotonic() + args.max_seconds)
    finally:
        if args.keep_temp:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(*args.child)
        return
    started = time.monotonic()
    report = run(args)
    print_tables(report)
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    say(f"\ntotal {time.monotonic() - started:,.0f} s; this process peak RSS {own_rss:,.0f} MiB")
    payload = report_json(report)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
