"""How many signed requests the push API (`wxpush api`) answers per second, how much latency it
adds over a direct call to WeChat, and what a `kill -9` in the middle of the load costs.

    .venv/bin/python -m bench.api [--requests 5000] [--concurrency 32] [--batches 20]
        [--batch-size 1000] [--kill-requests 3000] [--kill-after 0.4] [--database-url URL]
        [--parts direct single batch kill]

Starts a Prefect server (for the blocks: the app, its token, the API key), the simulator
(latency 0), a fresh database (SQLite, or a new schema on `--database-url`'s PostgreSQL) and
`wxpush api` in a child process, then from this process (one aiohttp client):

- direct: `--requests` template sends straight to the simulator, the floor any API adds to;
- single: `--requests` signed `POST /v1/messages` at `--concurrency` in flight (signed before
  the clock starts): requests/s, p50/p99 answer time, and p99 over the direct call's p99;
- batch: `--batches` signed `POST /v1/messages/batch` of `--batch-size` messages each, two in
  flight: messages/s;
- kill: `--kill-requests` requests, each with its own idempotency key, at `--concurrency` in
  flight; once `--kill-after` of them are answered the API gets SIGKILL and is started again,
  and every request not answered 2xx is retried (freshly signed, same key) until it is. Then
  it counts: requests answered 2xx whose row is missing (lost), rows per key (must be one),
  and what the simulator accepted per client_msg_id (a duplicate is a key delivered twice).

Every answer is checked: a request that was not answered as it should be is counted and
printed, not hidden in the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from sqlalchemy import text

from api.process import ApiProcess, start_api
from api.signing import signed_headers
from bench.campaign.services import bench_database, prefect_server, tree_cpu
from db.engine import make_engine
from processes import free_port
from wechat.simulator.defaults import DEMO_APP_ID, DEMO_TEMPLATE_ID, DEMO_TEMPLATE_VALUES
from wechat.simulator.process import SimulatorProcess, start_simulator

APP = "bench"
MESSAGES_PATH = "/v1/messages"
BATCH_PATH = "/v1/messages/batch"


def say(line: str) -> None:
    print(line, flush=True)


def openids(n: int) -> list[str]:
    return [f"oApiBench{i:019d}" for i in range(n)]


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Key:
    key_id: str
    secret: str


@dataclass
class Figures:
    """One part's figures, printed as a row and kept for --json-out."""

    part: str
    count: int
    seconds: float
    latencies: list[float] = field(default_factory=list, repr=False)
    statuses: Counter[str] = field(default_factory=Counter)
    server_cpu: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.rate, 1),
            "p50_ms": round(quantile(self.latencies, 0.5) * 1000, 2),
            "p99_ms": round(quantile(self.latencies, 0.99) * 1000, 2),
            "statuses": dict(self.statuses),
            "server_cpu_s": None if self.server_cpu is None else round(self.server_cpu, 2),
            **self.extra,
        }


def message(openid: str, n: int, *, key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "app": APP,
        "kind": "template",
        "openid": openid,
        "template_id": DEMO_TEMPLATE_ID,
        "data": {**dict(DEMO_TEMPLATE_VALUES), "character_string2": f"BENCH{n:08d}"},
    }
    if key is not None:
        body["idempotency_key"] = key
    return body


def signed(key: Key, path: str, payload: Any) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(payload)
    headers = signed_headers(key.key_id, key.secret, "POST", path, body)
    headers["Content-Type"] = "application/json"
    return body, headers


# -- the services ------------------------------------------------------------------------------


async def prepare(sim: SimulatorProcess, followers: int) -> tuple[Key, str]:
    """The app's block (no account rate, a quota far above the bench), its token, an API key;
    returns the key and the token (for the direct part)."""
    from cli.setup import asetup_app
    from tasks.api_keys import create_key
    from tasks.token import ensure_token, read_token

    await asetup_app(
        APP,
        app_id=sim.app_id,
        app_secret=sim.app_secret,
        api_base_url=sim.base_url,
        daily_quota=1_000_000_000,
    )
    await ensure_token(APP, 0)
    token = await read_token(APP)
    assert token is not None
    api_key, _ = await create_key(f"bench-{uuid.uuid4().hex[:8]}")
    sim.admin.set_config(daily_quota=10**9)
    ids = openids(followers)
    for start in range(0, len(ids), 50_000):
        sim.admin.add_followers({"openid": openid} for openid in ids[start : start + 50_000])
    return Key(api_key.key_id, api_key.secret.get_secret_value()), (
        token.access_token.get_secret_value()
    )


# -- the parts ---------------------------------------------------------------------------------


async def timed_posts(
    session: aiohttp.ClientSession,
    requests: Sequence[tuple[str, bytes, dict[str, str]]],
    concurrency: int,
) -> tuple[float, list[float], list[tuple[int, Any]]]:
    """POST every (url, body, headers) with `concurrency` in flight; (seconds, latencies,
    answers as (status, json))."""
    queue = list(reversed(requests))
    latencies: list[float] = []
    answers: list[tuple[int, Any]] = []

    async def worker() -> None:
        while queue:
            url, body, headers = queue.pop()
            began = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                raw = await response.read()
            latencies.append(time.perf_counter() - began)
            answers.append((response.status, orjson.loads(raw) if raw else None))

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies, answers


async def part_direct(sim: SimulatorProcess, token: str, n: int, concurrency: int) -> Figures:
    url = f"{sim.base_url}/cgi-bin/message/template/send?access_token={token}"
    ids = openids(n)
    requests = []
    for i in range(n):
        payload = {
            "touser": ids[i],
            "template_id": DEMO_TEMPLATE_ID,
            "data": {k: {"value": v} for k, v in message(ids[i], i)["data"].items()},
            "client_msg_id": f"direct-{uuid.uuid4().hex}",
        }
        requests.append((url, orjson.dumps(payload), {"Content-Type": "application/json"}))
    async with aiohttp.ClientSession() as session:
        seconds, latencies, answers = await timed_posts(session, requests, concurrency)
    statuses = Counter(
        "ok" if status == 200 and (body or {}).get("errcode") == 0 else f"{status}"
        for status, body in answers
    )
    return Figures("direct call to the simulator", n, seconds, latencies, statuses)


async def part_single(api_url: str, key: Key, n: int, concurrency: int, pid: int) -> Figures:
    ids = openids(n)
    requests = []
    for i in range(n):
        body, headers = signed(key, MESSAGES_PATH, message(ids[i], i))
        requests.append((api_url + MESSAGES_PATH, body, headers))
    cpu = tree_cpu(pid)
    async with aiohttp.ClientSession() as session:
        seconds, latencies, answers = await timed_posts(session, requests, concurrency)
    after = tree_cpu(pid)
    statuses = Counter(f"{status} {(body or {}).get('status')}" for status, body in answers)
    used = None if cpu is None or after is None else after - cpu
    return Figures("single messages", n, seconds, latencies, statuses, used)


async def part_batch(
    api_url: str, key: Key, batches: int, size: int, followers: int, pid: int
) -> Figures:
    ids = openids(followers)
    requests = []
    n = 0
    for _ in range(batches):
        items = []
        for _ in range(size):
            items.append(message(ids[n % followers], n))
            n += 1
        body, headers = signed(key, BATCH_PATH, {"messages": items})
        requests.append((api_url + BATCH_PATH, body, headers))
    cpu = tree_cpu(pid)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        seconds, latencies, answers = await timed_posts(session, requests, 2)
    after = tree_cpu(pid)
    statuses: Counter[str] = Counter()
    for status, body in answers:
        for result in (body or {}).get("results", []) if status in (200, 202) else [None]:
            statuses[f"{status} {(result or {}).get('status')}"] += 1
    used = None if cpu is None or after is None else after - cpu
    return Figures(f"batch of {size}", n, seconds, latencies, statuses, used)


async def part_kill(
    api_url: str,
    key: Key,
    n: int,
    concurrency: int,
    kill_after: float,
    restart: Any,
    kill: Any,
    followers: int,
) -> Figures:
    """Load with idempotency keys, SIGKILL the API part-way, restart it, retry until every
    request has a 2xx answer; the counting is done by the caller (it needs the database)."""
    ids = openids(followers)
    keys = [f"kill-{uuid.uuid4().hex}" for _ in range(n)]
    bodies = [message(ids[i % followers], i, key=keys[i]) for i in range(n)]
    answered: dict[str, dict[str, Any]] = {}  # idempotency key -> first 2xx answer
    before_kill: dict[str, str] = {}  # idempotency key -> message id answered before the kill
    killed = asyncio.Event()
    restarted = asyncio.Event()
    errors: Counter[str] = Counter()
    todo = list(range(n))
    todo.reverse()
    retry: list[int] = []

    async def one(session: aiohttp.ClientSession, i: int) -> bool:
        body, headers = signed(key, MESSAGES_PATH + "?wait=10", bodies[i])
        try:
            async with session.post(
                api_url + MESSAGES_PATH + "?wait=10", data=body, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            errors[type(exc).__name__] += 1
            return False
        if status not in (200, 202):
            errors[f"http {status}"] += 1
            return False
        answer = orjson.loads(raw)
        answered.setdefault(keys[i], answer)
        if not killed.is_set():
            before_kill[keys[i]] = answer["id"]
        return True

    async def worker(session: aiohttp.ClientSession) -> None:
        while todo or retry:
            i = todo.pop() if todo else retry.pop()
            if not await one(session, i):
                if killed.is_set() and not restarted.is_set():
                    await restarted.wait()
                retry.append(i)
                await asyncio.sleep(0.05)
            if not killed.is_set() and len(answered) >= kill_after * n:
                killed.set()
                kill()
                await asyncio.get_running_loop().run_in_executor(None, restart)
                restarted.set()

    began = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    statuses = Counter(str(a.get("status")) for a in answered.values())
    return Figures(
        "kill -9 mid-load",
        n,
        seconds,
        [],
        statuses,
        extra={
            "keys": keys,
            "answered": {k: a["id"] for k, a in answered.items()},
            "before_kill": before_kill,
            "client_errors": dict(errors),
        },
    )


def count_kill(fig: Figures, db_url: str, sim: SimulatorProcess, settle: float) -> None:
    """Wait for the API to finish what it holds, then count lost rows and duplicates."""
    keys: list[str] = fig.extra.pop("keys")
    answered: dict[str, str] = fig.extra.pop("answered")
    before: dict[str, str] = fig.extra.pop("before_kill")
    engine = make_engine(db_url)
    deadline = time.monotonic() + settle
    try:
        while True:
            with engine.connect() as conn:
                open_rows = conn.execute(
                    text("SELECT count(*) FROM api_messages WHERE status = 'queued'")
                ).scalar_one()
            if not open_rows or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, idempotency_key, client_msg_id, status FROM api_messages "
                    "WHERE idempotency_key LIKE 'kill-%'"
                )
            ).all()
    finally:
        engine.dispose()
    ids = {row.id for row in rows}
    per_key = Counter(row.idempotency_key for row in rows)
    cmids = {row.client_msg_id for row in rows}
    accepted = Counter(
        m.client_msg_id
        for m in sim.admin.iter_messages(kind="template")
        if m.client_msg_id in cmids
    )
    fig.extra.update(
        answered_2xx_before_kill=len(before),
        lost=sum(1 for message_id in answered.values() if message_id not in ids),
        lost_before_kill=sum(1 for message_id in before.values() if message_id not in ids),
        keys_without_row=sum(1 for k in keys if per_key[k] == 0),
        keys_with_two_rows=sum(1 for v in per_key.values() if v > 1),
        delivered_keys=len(accepted),
        duplicate_deliveries=sum(v - 1 for v in accepted.values() if v > 1),
        rows_by_status=dict(Counter(row.status for row in rows)),
        simulator_deduplicated=sim.admin.counters().deduplicated,
    )


# -- the run -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--kill-requests", type=int, default=3000)
    parser.add_argument("--kill-after", type=float, default=0.4)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["direct", "single", "batch", "kill"],
        choices=["direct", "single", "batch", "kill"],
    )
    parser.add_argument("--json-out", type=Path, default=None)
    return parser.parse_args(argv)


def print_table(figures: list[Figures], direct_p99: float | None) -> None:
    say("")
    say("| part | count | seconds | per second | p50 ms | p99 ms | API CPU per message | answers |")
    say("|---|---|---|---|---|---|---|---|")
    for fig in figures:
        cpu = "" if fig.server_cpu is None else f"{fig.server_cpu / fig.count * 1e6:.0f} µs"
        p50 = quantile(fig.latencies, 0.5) * 1000 if fig.latencies else float("nan")
        p99 = quantile(fig.latencies, 0.99) * 1000 if fig.latencies else float("nan")
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(fig.statuses.items()))
        say(
            f"| {fig.part} | {fig.count:,} | {fig.seconds:.1f} | {fig.rate:,.0f} | {p50:.1f} | "
            f"{p99:.1f} | {cpu} | {answers} |"
        )
    for fig in figures:
        if fig.part == "single messages" and direct_p99 is not None:
            over = (quantile(fig.latencies, 0.99) - direct_p99) * 1000
            say(f"\nsingle messages: p99 is {over:.1f} ms over the direct call's p99")
        if fig.extra:
            say(f"\n{fig.part}: " + json.dumps(fig.extra, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    figures: list[Figures] = []
    direct_p99: float | None = None
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wxpush-api-")))
        say("starting a Prefect server, the simulator and a fresh database …")
        server = stack.enter_context(prefect_server(folder))
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url}))
        db_url = stack.enter_context(bench_database(args.database_url, folder))
        sim = start_simulator(app_id=DEMO_APP_ID)
        stack.callback(sim.stop)
        followers = max(args.requests, args.kill_requests, 1000)
        key, token = asyncio.run(prepare(sim, followers))
        env = {**server.env(), "PYTHONUNBUFFERED": "1"}
        port = free_port()
        api_url = f"http://127.0.0.1:{port}"

        def launch() -> ApiProcess:
            log = folder / f"api-{time.time():.0f}.log"
            return start_api(db_url, env=env, port=port, log=log)

        holder: dict[str, ApiProcess] = {"api": launch()}
        stack.callback(lambda: holder["api"].stop())
        say(f"wxpush api on {api_url} (database: {make_engine(db_url).dialect.name})")

        if "direct" in args.parts:
            fig = asyncio.run(part_direct(sim, token, args.requests, args.concurrency))
            direct_p99 = quantile(fig.latencies, 0.99)
            figures.append(fig)
            say(f"direct: {fig.rate:,.0f}/s")
        if "single" in args.parts:
            pid = holder["api"].child.pid
            fig = asyncio.run(part_single(api_url, key, args.requests, args.concurrency, pid))
            figures.append(fig)
            say(f"single: {fig.rate:,.0f} req/s")
        if "batch" in args.parts:
            pid = holder["api"].child.pid
            fig = asyncio.run(
                part_batch(api_url, key, args.batches, args.batch_size, followers, pid)
            )
            figures.append(fig)
            say(f"batch: {fig.rate:,.0f} msg/s")
        if "kill" in args.parts:

            def kill() -> None:
                holder["api"].kill()

            def restart() -> None:
                holder["api"].stop()
                holder["api"] = launch()

            fig = asyncio.run(
                part_kill(
                    api_url,
                    key,
                    args.kill_requests,
                    args.concurrency,
                    args.kill_after,
                    restart,
                    kill,
                    followers,
                )
            )
            count_kill(fig, db_url, sim, settle=60)
            figures.append(fig)
    print_table(figures, direct_p99)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps([f.as_json() for f in figures], indent=2))


if __name__ == "__main__":
    main()
