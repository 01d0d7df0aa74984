"""Account-wide rate limiter candidates, measured before one is chosen (issue 12, point 2).

Several processes (as separate campaign runs of one account would be) share one account
limit through one of: a Prefect global concurrency limit with slot decay (`rate_limit`, N
slots per call), the `limits` library's moving window on Redis (`hit(cost=N)`), or a GCRA
row in PostgreSQL (one UPDATE ... RETURNING per N messages). The "send" is a no-op, so every
CPU second a worker spends is the limiter's. For each candidate it reports:

- latency: one process, a limit it never reaches, acquires back to back (wall and CPU);
- accuracy: P processes at the configured rate for D seconds, combined rate vs configured;
- restart: the same with the component restarted mid-run (Prefect: the temporary server;
  Redis: a temporary redis-server on another port, never the shared one; PostgreSQL: the
  workers' backends terminated with pg_terminate_backend);
- the daily quota (PostgreSQL): the processes race for one account's quota of the Beijing
  day in chunks, and the sum granted must equal it.

Everything runs against services on 127.0.0.1 that this command starts and stops itself
(the shared PostgreSQL only gets a scratch table, or a scratch database for the Prefect
server on PostgreSQL, both dropped at the end). `.venv/bin/python -m bench.limiter --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

CANDIDATES = ("prefect", "redis", "postgres")
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
APP_NAME = "wxpush-bench-limiter"


@dataclass
class Spec:
    """What a worker process needs: which candidate, where it is, the limit and the run."""

    candidate: str
    rate: float
    chunk: int
    seconds: float
    key: str
    env: dict[str, str] = field(default_factory=dict)
    redis_url: str = ""
    pg_url: str = ""
    pg_table: str = ""
    latency_only: bool = False
    latency_count: int = 0
    quota: int = 0


class Acquirer(Protocol):
    """One candidate's client in one worker: `acquire(n)` returns once n sends may go."""

    calls: int

    async def open(self) -> None: ...

    async def acquire(self, n: int) -> None: ...

    async def close(self) -> None: ...

    def server_cpu(self) -> float | None: ...


class PrefectAcquirer:
    """`prefect.concurrency.asyncio.rate_limit(name, occupy=n)`: the server decays the slots
    at `slot_decay_per_second`; a full limit answers 423 and the client sleeps Retry-After."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.calls = 0

    async def open(self) -> None:
        from prefect.client.orchestration import PrefectClient
        from prefect.concurrency.asyncio import rate_limit

        self._rate_limit = rate_limit
        original = PrefectClient.increment_concurrency_slots
        outer = self

        async def counted(client: Any, *args: Any, **kwargs: Any) -> Any:
            outer.calls += 1  # each POST, the 423 retries of Prefect's client included
            return await original(client, *args, **kwargs)

        PrefectClient.increment_concurrency_slots = counted  # type: ignore[method-assign]

    async def acquire(self, n: int) -> None:
        await self._rate_limit(self.spec.key, occupy=n, timeout_seconds=30, strict=True)

    async def close(self) -> None:
        return None

    def server_cpu(self) -> float | None:
        return None


class RedisAcquirer:
    """`limits`' moving window on Redis through redis-py: `hit(cost=n)` is one Lua call; a
    refused hit sleeps until the window's oldest entry expires (or 10 ms) and tries again."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.calls = 0

    async def open(self) -> None:
        from limits import RateLimitItemPerSecond
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        self._storage = RedisStorage(
            self.spec.redis_url, implementation="redispy", socket_timeout=2.0
        )
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._item = RateLimitItemPerSecond(int(self.spec.rate))

    async def acquire(self, n: int) -> None:
        while True:
            self.calls += 1
            if await self._limiter.hit(self._item, self.spec.key, cost=n):
                return
            self.calls += 1
            stats = await self._limiter.get_window_stats(self._item, self.spec.key)
            await asyncio.sleep(min(max(stats.reset_time - time.time(), 0.01), 0.1))

    async def close(self) -> None:
        return None

    def server_cpu(self) -> float | None:
        return None


class PostgresAcquirer:
    """A GCRA row per account: one UPDATE ... RETURNING reserves the next n slots on the
    server's clock and answers how long to wait for the first; the client sleeps that long.
    No polling, and the schedule is a row, so a restart of a connection loses nothing."""

    SQL = (
        "WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now) "
        "UPDATE {table} AS g SET tat = GREATEST(g.tat, c.now) + %(cost)s FROM c "
        "WHERE g.account = %(account)s RETURNING g.tat - %(cost)s - c.now"
    )

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.calls = 0
        self._conn: Any = None
        self._backend_cpu = 0.0
        self._sql = self.SQL.format(table=spec.pg_table)

    async def open(self) -> None:
        import psycopg

        self._psycopg = psycopg
        self._conn = await psycopg.AsyncConnection.connect(
            self.spec.pg_url, autocommit=True, application_name=APP_NAME
        )
        self._backend = await self._backend_pid()

    async def _backend_pid(self) -> int:
        cur = await self._conn.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        return int(row[0])

    async def acquire(self, n: int) -> None:
        self.calls += 1
        params = {"cost": n / self.spec.rate, "account": self.spec.key}
        try:
            cur = await self._conn.execute(self._sql, params)
            row = await cur.fetchone()
        except self._psycopg.OperationalError:
            with contextlib.suppress(Exception):
                await self._conn.close()
            await self.open()  # a failed reconnect raises: the worker counts it and retries
            raise
        wait = float(row[0])
        if wait > 0:
            await asyncio.sleep(wait)

    def server_cpu(self) -> float | None:
        """CPU of this worker's backend (same machine): the database's share of the work."""
        import psutil

        try:
            times = psutil.Process(self._backend).cpu_times()
        except psutil.Error:
            return None
        return times.user + times.system

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


def make_acquirer(spec: Spec) -> Acquirer:
    kinds: dict[str, Callable[[Spec], Acquirer]] = {
        "prefect": PrefectAcquirer,
        "redis": RedisAcquirer,
        "postgres": PostgresAcquirer,
    }
    return kinds[spec.candidate](spec)


# --- the worker process ---------------------------------------------------------------------


READY, RESULT = "LIMITER-WORKER-READY", "LIMITER-WORKER-RESULT "
WORKER = (sys.executable, "-m", "bench.limiter", "--worker")


def worker_main(spec_json: str, go: Path) -> int:
    """A worker process (`--worker`, started by `_spawn` with the candidate's environment):
    set up the client, say READY, wait for the `go` file, acquire chunks until the time is
    up, and print what happened as one RESULT line."""
    spec = Spec(**json.loads(spec_json))
    try:
        out = asyncio.run(_work(spec, go))
    except Exception as exc:  # the parent must hear of it rather than wait
        out = {"failed": f"{type(exc).__name__}: {exc}"}
    print(RESULT + json.dumps(out), flush=True)
    return 0


async def _wait_for(go: Path) -> None:
    print(READY, flush=True)
    deadline = time.monotonic() + 180
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no go from the parent")
        await asyncio.sleep(0.002)


async def _work(spec: Spec, go: Path) -> dict[str, Any]:
    acq = make_acquirer(spec)
    await acq.open()
    if spec.latency_only:
        return await _latency(spec, acq)
    await _wait_for(go)
    if spec.quota:
        return await _reserve_quota(spec, acq)
    grants: list[tuple[float, int]] = []
    errors: list[tuple[float, str]] = []
    cpu0, wall0 = time.process_time(), time.time()
    end = wall0 + spec.seconds
    while time.time() < end:
        try:
            await acq.acquire(spec.chunk)
        except Exception as exc:
            errors.append((time.time(), type(exc).__name__))
            await asyncio.sleep(0.1)
            continue
        grants.append((time.time(), spec.chunk))
    cpu = time.process_time() - cpu0
    server_cpu = acq.server_cpu()
    await acq.close()
    return {
        "grants": grants,
        "errors": errors,
        "cpu": cpu,
        "calls": acq.calls,
        "server_cpu": server_cpu,
    }


async def _latency(spec: Spec, acq: Acquirer) -> dict[str, Any]:
    """Acquires back to back under a limit never reached: the pure cost of one call."""
    await acq.acquire(spec.chunk)  # warm up (connections, imports)
    walls: list[float] = []
    cpus: list[float] = []
    deadline = time.monotonic() + spec.seconds
    for _ in range(spec.latency_count):
        if time.monotonic() > deadline:
            break
        c0, w0 = time.process_time(), time.perf_counter()
        await acq.acquire(spec.chunk)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    await acq.close()
    return {"walls": walls, "cpus": cpus}


QUOTA_SQL = (
    "WITH old AS (SELECT used FROM {table} WHERE app_id = %(app)s AND day = %(day)s FOR UPDATE)"
    " UPDATE {table} AS q SET used = q.used + LEAST(%(n)s, GREATEST(%(quota)s - old.used, 0))"
    " FROM old WHERE q.app_id = %(app)s AND q.day = %(day)s"
    " RETURNING LEAST(%(n)s, GREATEST(%(quota)s - old.used, 0))"
)
QUOTA_DAY_SQL = (
    "INSERT INTO {table} (app_id, day, used) VALUES"
    " (%(app)s, (now() AT TIME ZONE 'Asia/Shanghai')::date, 0)"
    " ON CONFLICT DO NOTHING"
)


async def _reserve_quota(spec: Spec, acq: Acquirer) -> dict[str, Any]:
    """Take chunks of the account's daily quota until a reservation grants nothing. The day
    is Beijing's (WeChat's quota resets at midnight there): a new day is a new row."""
    assert isinstance(acq, PostgresAcquirer)
    conn, table = acq._conn, spec.pg_table + "_quota"
    cur = await conn.execute("SELECT (now() AT TIME ZONE 'Asia/Shanghai')::date")
    day = (await cur.fetchone())[0]
    params = {"app": spec.key, "day": day, "n": spec.chunk, "quota": spec.quota}
    sql = QUOTA_SQL.format(table=table)
    granted, walls = 0, []
    c0 = time.process_time()
    while True:
        w0 = time.perf_counter()
        cur = await conn.execute(sql, params)
        got = int((await cur.fetchone())[0])
        walls.append(time.perf_counter() - w0)
        if got == 0:
            break
        granted += got
    cpu = time.process_time() - c0
    await acq.close()
    return {"granted": granted, "calls": len(walls), "walls": walls, "cpu": cpu}


def measure_quota(service: Service, args: argparse.Namespace) -> dict:
    """Several processes race for one account's daily quota: the sum granted must be exact."""
    import psycopg

    key = f"acct-quota-{uuid.uuid4().hex[:6]}"
    table = service.pg_table + "_quota"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(QUOTA_DAY_SQL.format(table=table), {"app": key})
    specs = []
    for _ in range(args.procs):
        spec = _spec("postgres", service, key, 1.0, args)
        spec.quota = args.quota
        specs.append(spec)
    out, started = _spawn(specs, timeout=120)
    took = time.time() - started
    walls = [w for o in out for w in o["walls"]]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        row = conn.execute(f"SELECT used FROM {table} WHERE app_id = %s", (key,)).fetchone()
    return {
        "quota": args.quota,
        "granted": sum(o["granted"] for o in out),
        "row_used": row[0] if row else None,
        "reservations": len(walls),
        "per_proc": [o["granted"] for o in out],
        "wall_median_us": statistics.median(walls) * 1e6,
        "client_cpu_per_reservation_us": sum(o["cpu"] for o in out) / len(walls) * 1e6,
        "took_s": took,
    }


# --- the services ---------------------------------------------------------------------------


@dataclass
class Service:
    """A candidate's backend as the parent sees it: its restart, its CPU, the workers' env."""

    env: dict[str, str]
    restart: Callable[[float], None]
    cpu: Callable[[], float | None]
    redis_url: str = ""
    pg_table: str = ""


def _restart_child(child: Any, down: float, ready: Callable[[], bool], log: Path, env: Any):
    """Stop a processes.Child and start its same argv again (same port, same data)."""
    from processes import start_ready

    child.stop()
    time.sleep(down)
    return start_ready(
        [str(a) for a in child.process.args],
        name=child.name,
        ready=ready,
        timeout=120,
        log=log,
        env=env,
    )


@contextlib.contextmanager
def prefect_service(folder: Path, database: str) -> Iterator[Service]:
    """bench.campaign's temporary Prefect server (SQLite in its home, or a scratch PostgreSQL
    database), restarted on demand on the same port and data."""
    from bench.campaign.services import prefect_server, tree_cpu
    from processes import http_ok

    with contextlib.ExitStack() as stack:
        if database == "postgres":
            name = f"wxpush_bench_limiter_{uuid.uuid4().hex[:8]}"
            stack.enter_context(_scratch_database(name))
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        server = stack.enter_context(prefect_server(folder))
        holder = {"child": server.child}
        stack.callback(lambda: holder["child"].close())
        restarts = iter(range(1, 100))

        def restart(down: float) -> None:
            env = {**server.env(), "PREFECT_API_URL": None}
            if database == "postgres":
                env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url
            log = folder / f"prefect-server-{next(restarts)}.log"
            ready = http_ok(f"{server.api_url}/health")
            holder["child"] = _restart_child(holder["child"], down, ready, log, env)

        if database == "postgres":
            restart(0.0)  # the helper's server knows no database URL: start it again with one
        yield Service(server.env(), restart, lambda: tree_cpu(holder["child"].pid))


@contextlib.contextmanager
def _scratch_database(name: str) -> Iterator[None]:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _create_prefect_limit(env: dict[str, str], key: str, rate: float, capacity: int) -> None:
    """The account's limit: `capacity` slots (the burst), decaying at `rate` per second."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=key, limit=capacity, slot_decay_per_second=rate)
        )


@contextlib.contextmanager
def redis_service(folder: Path) -> Iterator[Service]:
    """A temporary redis-server (no persistence, as a cache-only Redis would run) on a free
    port: restarting it is safe, unlike the machine's shared one."""
    import shutil

    import redis

    from bench.campaign.services import tree_cpu
    from processes import free_port, running

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: the Redis candidate needs its own server")
    port = free_port()

    def ready() -> bool:
        try:
            return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--daemonize", "no"]
    with running(argv, name="redis-server", ready=ready, log=folder / "redis.log") as child:
        holder = {"child": child}
        try:

            def restart(down: float) -> None:
                log = folder / "redis-restarted.log"
                holder["child"] = _restart_child(holder["child"], down, ready, log, None)

            yield Service(
                {},
                restart,
                lambda: tree_cpu(holder["child"].pid),
                redis_url=f"async+redis://127.0.0.1:{port}/0",
            )
        finally:
            if holder["child"] is not child:
                holder["child"].close()


@contextlib.contextmanager
def postgres_service() -> Iterator[Service]:
    """A scratch table in the test database; a restart terminates the workers' backends."""
    import psycopg

    table = f"wxpush_bench_gcra_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (account text PRIMARY KEY, tat float8 NOT NULL)")
        conn.execute(
            f"CREATE TABLE {table}_quota (app_id text, day date, used bigint NOT NULL,"
            " PRIMARY KEY (app_id, day))"
        )

    def restart(down: float) -> None:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (APP_NAME,),
            )

    try:
        yield Service({}, restart, lambda: None, pg_table=table)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_quota")


def _prepare_key(candidate: str, service: Service, key: str, rate: float, capacity: int) -> None:
    if candidate == "prefect":
        _create_prefect_limit(service.env, key, rate, capacity)
    elif candidate == "postgres":
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {service.pg_table} (account, tat) VALUES (%s, 0)", (key,))


# --- the runs -------------------------------------------------------------------------------


def _spawn(specs: list[Spec], timeout: float, during: Callable[[float], None] | None = None):
    """Start one worker process per spec (processes.start, each with its candidate's
    environment); once all are READY, let them go together. Returns their results and the
    time they started."""
    from processes import start

    with tempfile.TemporaryDirectory(prefix="wxpush-limiter-go-") as tmp:
        go = Path(tmp) / "go"
        with contextlib.ExitStack() as stack:
            children = [
                stack.enter_context(
                    start(
                        [*WORKER, json.dumps(asdict(s)), "--go", str(go)],
                        name=f"limiter worker {i}",
                        env=s.env,
                    )
                )
                for i, s in enumerate(specs)
            ]
            deadline = time.monotonic() + 120
            while not specs[0].latency_only and not all(READY in c.output() for c in children):
                exited = any(c.process.poll() is not None for c in children)
                if exited or time.monotonic() > deadline:
                    raise RuntimeError(f"a worker did not get ready: {children[0].log_tail()}")
                time.sleep(0.01)
            started = time.time()
            go.touch()
            if during is not None:
                during(started)
            for child in children:
                child.process.wait(timeout=timeout)
            out = [_result(c.output()) for c in children]
    failed = [o["failed"] for o in out if "failed" in o]
    if failed:
        raise RuntimeError(f"a worker failed: {failed[0]}")
    return out, started


def _result(output: str) -> dict[str, Any]:
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    return {"failed": f"no result; output ends: {output[-400:]}"}


def measure_latency(candidate: str, service: Service, args: argparse.Namespace) -> dict:
    key = f"acct-lat-{uuid.uuid4().hex[:6]}"
    big = 1_000_000.0
    _prepare_key(candidate, service, key, big, 1_000_000)
    spec = _spec(candidate, service, key, big, args)
    spec.latency_only, spec.latency_count, spec.seconds = True, args.latency_count, 10.0
    (out,), _ = _spawn([spec], timeout=120)
    walls, cpus = out["walls"], out["cpus"]
    return {
        "acquires": len(walls),
        "wall_median_us": statistics.median(walls) * 1e6,
        "wall_p95_us": _pct(walls, 95) * 1e6,
        "cpu_per_acquire_us": sum(cpus) / len(cpus) * 1e6,
    }


def measure_run(
    candidate: str,
    service: Service,
    args: argparse.Namespace,
    rate: float,
    restart_at: float | None = None,
) -> dict:
    key = f"acct-{int(rate)}-{uuid.uuid4().hex[:6]}"
    capacity = max(args.chunk * args.procs, int(rate * args.burst_seconds))
    _prepare_key(candidate, service, key, rate, capacity)
    specs = [_spec(candidate, service, key, rate, args) for _ in range(args.procs)]
    marks: dict[str, float] = {}

    def during(started: float) -> None:
        if restart_at is None:
            return
        time.sleep(max(0.0, started + restart_at - time.time()))
        marks["down"] = time.time()
        service.restart(args.down)
        marks["up"] = time.time()

    cpu0 = service.cpu()
    out, started = _spawn(specs, timeout=args.seconds + 180, during=during)
    cpu1 = service.cpu()
    grants = sorted(g for o in out for g in o["grants"])
    sent = sum(n for _, n in grants)
    warm = started + args.warmup
    end = started + args.seconds
    steady = sum(n for t, n in grants if warm <= t < end) / (end - warm)
    client_cpu = sum(o["cpu"] for o in out)
    server_cpu = None
    if restart_at is not None:
        pass  # a restarted server's counters start again at zero: no figure
    elif cpu0 is not None and cpu1 is not None:
        server_cpu = cpu1 - cpu0
    elif all(o["server_cpu"] is not None for o in out):
        server_cpu = sum(o["server_cpu"] for o in out)
    row: dict[str, Any] = {
        "rate": rate,
        "sent": sent,
        "steady_rate": steady,
        "error_pct": (steady / rate - 1) * 100,
        "max_1s": _max_window(grants, 1.0),
        "acquires": len(grants),
        "calls": sum(o["calls"] for o in out),
        "errors": sum(len(o["errors"]) for o in out),
        "client_cpu_per_msg_us": client_cpu / max(sent, 1) * 1e6,
        "server_cpu_per_msg_us": None if server_cpu is None else server_cpu / max(sent, 1) * 1e6,
    }
    if restart_at is not None:
        up = marks["up"]
        after = [t for t, _ in grants if t >= up]
        row["down_s"] = up - marks["down"]
        row["first_grant_after_up_s"] = (after[0] - up) if after else None
        row["sent_1s_after_up"] = sum(n for t, n in grants if up <= t < up + 1.0)
        row["longest_gap_s"] = max(
            (b - a for (a, _), (b, _) in itertools.pairwise(grants)), default=0.0
        )
        row["error_kinds"] = sorted({k for o in out for _, k in o["errors"]})
    return row


def _spec(candidate: str, service: Service, key: str, rate: float, args) -> Spec:
    return Spec(
        candidate=candidate,
        rate=rate,
        chunk=args.chunk,
        seconds=args.seconds,
        key=key,
        env=service.env,
        redis_url=service.redis_url,
        pg_url=PG_URL,
        pg_table=service.pg_table,
    )


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def _max_window(grants: list[tuple[float, int]], width: float) -> int:
    """The most messages granted in any `width`-second window (the burst a component let
    through: WeChat counts per window too)."""
    best, total, lo = 0, 0, 0
    for t, n in grants:
        total += n
        while grants[lo][0] <= t - width:
            total -= grants[lo][1]
            lo += 1
        best = max(best, total)
    return best


@contextlib.contextmanager
def service_for(candidate: str, folder: Path, args: argparse.Namespace) -> Iterator[Service]:
    if candidate == "prefect":
        with prefect_service(folder, args.prefect_database) as service:
            yield service
    elif candidate == "redis":
        with redis_service(folder) as service:
            yield service
    else:
        with postgres_service() as service:
            yield service


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limiter",
        description="Measure account-wide rate limiter candidates shared by several processes: "
        "accuracy, CPU and wall overhead per message and per acquire, and a restart mid-run.",
    )
    parser.add_argument("--candidates", nargs="+", choices=CANDIDATES, default=list(CANDIDATES))
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 200.0])
    parser.add_argument("--procs", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--chunk", type=int, default=10, help="messages per acquire")
    parser.add_argument("--warmup", type=float, default=1.0, help="left out of the rate")
    parser.add_argument("--latency-count", type=int, default=200, help="at most, within 10 s")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart runs")
    parser.add_argument("--restart-at", type=float, default=4.0, help="seconds into the run")
    parser.add_argument("--down", type=float, default=0.3, help="seconds the component is down")
    parser.add_argument(
        "--prefect-database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the temporary Prefect server's database (postgres: a scratch database)",
    )
    parser.add_argument(
        "--burst-seconds",
        type=float,
        default=0.0,
        help="Prefect's limit = max(chunk x procs, rate x this): the burst it allows "
        "(Redis' moving window is 1 s by construction, the GCRA row allows one chunk)",
    )
    parser.add_argument(
        "--quota",
        type=int,
        default=5000,
        help="PostgreSQL only: the procs reserve a daily quota this big in chunks, as fast as "
        "they can; the sum granted must equal it (0: skip)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a worker process's spec
    parser.add_argument("--go", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (1 <= args.procs <= 8 and 1.0 <= args.seconds <= 60 and 1 <= args.chunk <= 1000):
        parser.error("bounds: 1-8 processes, 1-60 s, chunks of 1-1000")
    if not all(1 <= r <= 5000 for r in args.rates):
        parser.error("rates between 1 and 5000 per second")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.go)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="wxpush-bench-limiter-") as tmp:
        for candidate in args.candidates:
            folder = Path(tmp) / candidate
            folder.mkdir()
            with service_for(candidate, folder, args) as service:
                entry: dict[str, Any] = {"latency": measure_latency(candidate, service, args)}
                _say(candidate, "latency", entry["latency"])
                entry["runs"] = []
                for rate in args.rates:
                    entry["runs"].append(measure_run(candidate, service, args, rate))
                    _say(candidate, f"{rate:g}/s", entry["runs"][-1])
                if not args.no_restart:
                    rate = args.rates[0]
                    entry["restart"] = measure_run(candidate, service, args, rate, args.restart_at)
                    _say(candidate, f"restart at {rate:g}/s", entry["restart"])
                if candidate == "postgres" and args.quota:
                    entry["quota"] = measure_quota(service, args)
                    _say(candidate, "daily quota", entry["quota"])
                results[candidate] = entry
    print_table(results, args)
    quota = results.get("postgres", {}).get("quota")
    if quota:
        print(
            f"\nDaily quota on PostgreSQL: {args.procs} processes reserved {quota['granted']:,}"
            f" of {quota['quota']:,} (row: {quota['row_used']:,}; per process {quota['per_proc']})"
            f" in {quota['reservations']:,} reservations of {args.chunk},"
            f" {quota['wall_median_us'] / 1000:.2f} ms median each,"
            f" {quota['client_cpu_per_reservation_us']:.0f} µs client CPU each"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def _say(candidate: str, what: str, data: dict) -> None:
    short = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in data.items()}
    print(f"[{candidate}] {what}: {short}", file=sys.stderr, flush=True)


def _f(value: Any, fmt: str = "{:,.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n{args.procs} processes, chunks of {args.chunk}, {args.seconds:g} s per run\n")
    print(
        "| candidate | rate | achieved (steady) | error | max in 1 s | acquire wall (median)"
        " | client CPU/msg | server CPU/msg | round trips/acquire |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for candidate in CANDIDATES:
        entry = results.get(candidate)
        if not entry:
            continue
        lat = entry["latency"]
        for run in entry["runs"]:
            print(
                f"| {candidate} | {run['rate']:g}/s | {run['steady_rate']:.1f}/s"
                f" | {run['error_pct']:+.1f} % | {run['max_1s']}"
                f" | {lat['wall_median_us'] / 1000:.2f} ms"
                f" | {_f(run['client_cpu_per_msg_us'])} µs"
                f" | {_f(run['server_cpu_per_msg_us'])} µs"
                f" | {run['calls'] / max(run['acquires'], 1):.1f} |"
            )
    print(
        "\n| candidate | CPU per acquire (client, unthrottled) | restart: down"
        " | achieved (steady window) | max in 1 s | first grant after it is back | longest gap"
        " | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for candidate in CANDIDATES:
        entry = results.get(candidate)
        if not entry:
            continue
        r = entry.get("restart") or {}
        print(
            f"| {candidate} | {entry['latency']['cpu_per_acquire_us']:,.0f} µs"
            f" | {_f(r.get('down_s'), '{:.1f} s')}"
            f" | {_f(r.get('steady_rate'), '{:.1f}/s')} (limit {args.rates[0]:g})"
            f" | {_f(r.get('max_1s'))}"
            f" | {_f(r.get('first_grant_after_up_s'), '{:.1f} s')}"
            f" | {_f(r.get('longest_gap_s'), '{:.1f} s')}"
            f" | {r.get('errors', '—')} {', '.join(r.get('error_kinds', []))} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
