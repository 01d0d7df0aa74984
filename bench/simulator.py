"""How fast the WeChat API simulator answers template sends, from one client process.

    .venv/bin/python bench/simulator.py [--followers 20000] [--messages 20000]
        [--concurrency 16 64] [--stacks httpx-aiohttp aiohttp] [--admin-scale 0]

Starts `python -m wechat.simulator` in a subprocess, registers the followers and fetches a
stable token, then for each client stack and concurrency sends `--messages` template messages
(each with its own client_msg_id, as wxpush does) and prints sends/s, the simulator's CPU per
send, and checks that /_sim/counters accepted exactly the sends that were answered errcode 0.
`--admin-scale N` also fills N messages into an in-process state and times the admin queries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from wechat.simulator.config import AccountConfig
from wechat.simulator.defaults import (
    DEMO_APP_ID,
    DEMO_APP_SECRET,
    DEMO_TEMPLATE_ID,
    demo_template_data,
)
from wechat.simulator.process import SimulatorProcess, start_simulator
from wechat.simulator.state import SimulatorState

Send = Callable[[str, bytes], Awaitable[int]]  # (url, body) -> errcode
Outcome = tuple[int, int, float]  # (sent, answered errcode 0, seconds)
Job = Callable[[Send], Awaitable[Outcome]]


@dataclass
class Run:
    stack: str
    concurrency: int
    sent: int
    ok: int
    seconds: float
    server_cpu: float | None
    accepted_delta: int

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process from /proc (Linux); None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def openids(n: int) -> list[str]:
    return [f"oBench{i:022d}" for i in range(n)]


def body(openid: str, client_msg_id: str) -> bytes:
    return orjson.dumps(
        {
            "touser": openid,
            "template_id": DEMO_TEMPLATE_ID,
            "url": "https://example.com/orders/1",
            "client_msg_id": client_msg_id,
            "data": demo_template_data(),
        }
    )


async def drive(
    send: Send,
    url: str,
    users: list[str],
    run_id: str,
    total: int,
    workers: int,
    max_seconds: float,
) -> Outcome:
    """`workers` coroutines share one counter; returns (sent, ok, seconds)."""
    next_index = 0
    ok = 0
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal next_index, ok
        while next_index < total and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            if await send(url, body(users[i % len(users)], f"{run_id}-{i}")) == 0:
                ok += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return next_index, ok, time.perf_counter() - started


async def with_httpx_aiohttp(concurrency: int, job: Job) -> Outcome:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits)) as client:

        async def send(url: str, payload: bytes) -> int:
            response = await client.post(url, content=payload)
            return int(orjson.loads(response.content)["errcode"])

        return await job(send)


async def with_httpx_default(concurrency: int, job: Job) -> Outcome:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def send(url: str, payload: bytes) -> int:
            response = await client.post(url, content=payload)
            return int(orjson.loads(response.content)["errcode"])

        return await job(send)


async def with_aiohttp(concurrency: int, job: Job) -> Outcome:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(url: str, payload: bytes) -> int:
            async with session.post(url, data=payload) as response:
                return int(orjson.loads(await response.read())["errcode"])

        return await job(send)


STACKS = {
    "httpx-aiohttp": with_httpx_aiohttp,
    "aiohttp": with_aiohttp,
    "httpx-default": with_httpx_default,
}


def seed(sim: SimulatorProcess, users: list[str]) -> float:
    started = time.perf_counter()
    for start in range(0, len(users), 50_000):
        sim.admin.add_followers({"openid": openid} for openid in users[start : start + 50_000])
    return time.perf_counter() - started


def stable_token(sim: SimulatorProcess) -> str:
    answer = httpx.post(
        f"{sim.base_url}/cgi-bin/stable_token",
        json={"grant_type": "client_credential", "appid": sim.app_id, "secret": sim.app_secret},
    ).json()
    return str(answer["access_token"])


def bench_http(args: argparse.Namespace) -> None:
    users = openids(args.followers)
    with start_simulator() as sim:
        sim.admin.set_config(daily_quota=10**9)
        seconds = seed(sim, users)
        print(
            f"seeded {sim.admin.follower_count():,} followers in {seconds:.2f}s "
            f"({len(users) / seconds:,.0f}/s)"
        )
        url = f"{sim.base_url}/cgi-bin/message/template/send?access_token={stable_token(sim)}"
        rss_before = rss_bytes(sim.process.pid)
        runs: list[Run] = []
        for stack in args.stacks:
            for concurrency in args.concurrency:
                run_id = f"{stack}-{concurrency}-{time.monotonic_ns()}"

                async def job(send: Send, c: int = concurrency, rid: str = run_id) -> Outcome:
                    # warm up the connections, uncounted
                    await drive(send, url, users, rid + "-warm", min(500, args.messages), c, 10)
                    return await drive(send, url, users, rid, args.messages, c, args.max_seconds)

                before = sim.admin.counters().accepted
                cpu_before = cpu_seconds(sim.process.pid)
                sent, ok, elapsed = asyncio.run(STACKS[stack](concurrency, job))
                cpu_after = cpu_seconds(sim.process.pid)
                warm = min(500, args.messages)
                delta = sim.admin.counters().accepted - before - warm
                cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
                runs.append(Run(stack, concurrency, sent, ok, elapsed, cpu, delta))
        print_table(runs)
        rss_after = rss_bytes(sim.process.pid)
        accepted = sim.admin.counters().accepted
        if rss_before is not None and rss_after is not None and accepted:
            grown = rss_after - rss_before
            print(
                f"\nsimulator RSS grew {grown / 2**20:,.0f} MB for {accepted:,} accepted "
                f"messages (~{grown / accepted:,.0f} B each)"
            )
        time_queries(sim, users)
        failures = [r for r in runs if r.accepted_delta != r.ok or r.ok != r.sent]
        if failures:
            raise SystemExit(f"accepted count mismatch: {failures}")


def print_table(runs: list[Run]) -> None:
    print(
        f"\n{'client stack':<15} {'in flight':>9} {'sends':>8} {'sends/s':>9} "
        f"{'server CPU/send':>16} {'accepted==ok':>12}"
    )
    for r in runs:
        cpu = f"{r.server_cpu / r.sent * 1e6:,.0f} µs" if r.server_cpu and r.sent else "n/a"
        print(
            f"{r.stack:<15} {r.concurrency:>9} {r.sent:>8,} {r.rate:>9,.0f} {cpu:>16} "
            f"{r.accepted_delta == r.ok!s:>12}"
        )


def time_queries(sim: SimulatorProcess, users: list[str]) -> None:
    total = sim.admin.messages(limit=1).total
    print(f"\nadmin queries with {total:,} messages recorded (ms, one call each, over HTTP):")
    with httpx.Client(base_url=f"{sim.base_url}/_sim", timeout=60) as http:
        http.get("/health")  # connect first: time the query, not the client's set-up
        for label, params in (
            ("newest 100 (offset)", {"offset": max(total - 100, 0), "limit": 100}),
            ("by openid", {"openid": users[7], "limit": 100}),
            ("by template_id, 1,000", {"template_id": DEMO_TEMPLATE_ID, "limit": 1000}),
            ("by client_msg_id (scan)", {"client_msg_id": "nope", "limit": 100}),
        ):
            started = time.perf_counter()
            http.get("/messages", params=params).raise_for_status()
            print(f"  {label:<26} {(time.perf_counter() - started) * 1000:8.1f}")


def bench_admin_scale(n: int) -> None:
    """Fill `n` accepted messages into an in-process state, then time the admin queries."""
    state = SimulatorState(
        AccountConfig(app_id=DEMO_APP_ID, app_secret=DEMO_APP_SECRET, daily_quota=10**9)
    )
    users = openids(20_000)
    for openid in users:
        state.registry.upsert_follower(openid, {}, state.clock.now())
    token = state.stable_token(
        {"grant_type": "client_credential", "appid": DEMO_APP_ID, "secret": DEMO_APP_SECRET}
    )["access_token"]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for i in range(n):
        # bytes(bytearray(...)): orjson over-allocates its output (~4 KB for a 330 B body);
        # the server stores what aiohttp read, which is sized exactly.
        state.send_template(token, bytes(bytearray(body(users[i % len(users)], f"scale-{i}"))))
    fill = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"\nin-process: {n:,} sends in {fill:.1f}s ({n / fill:,.0f}/s without HTTP); "
        f"max RSS grew {(rss_after - rss_before) / 1024:,.0f} MB "
        f"(~{(rss_after - rss_before) * 1024 / n:,.0f} B per message)"
    )
    for label, query in (
        ("newest 100 (offset)", {"offset": n - 100, "limit": 100}),
        ("since=<seq>, 100", {"since": n - 100, "limit": 100}),
        ("by openid", {"openid": users[7], "limit": 100}),
        ("by template_id, 1,000", {"template_id": DEMO_TEMPLATE_ID, "limit": 1000}),
        ("by client_msg_id (scan)", {"client_msg_id": "scale-5", "limit": 100}),
    ):
        started = time.perf_counter()
        total, page = state.log.query(**query)
        listed = [m.to_json() for m in page]
        assert len(listed) == len(page)
        print(f"  {label:<26} {(time.perf_counter() - started) * 1000:8.1f} ms (total {total:,})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=20_000, help="per stack and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument(
        "--stacks", nargs="+", choices=list(STACKS), default=["httpx-aiohttp", "aiohttp"]
    )
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap per run")
    parser.add_argument(
        "--admin-scale",
        type=int,
        default=0,
        help="also fill this many messages in-process and time admin queries",
    )
    args = parser.parse_args()
    bench_http(args)
    if args.admin_scale:
        bench_admin_scale(args.admin_scale)


if __name__ == "__main__":
    main()
