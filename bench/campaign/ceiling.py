"""Part 1, `ceiling`: bare async loops in this process, no database, no Prefect, sending the
campaign's messages to its followers; the fastest httpx + aiohttp-transport run is the ceiling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from bench.campaign.common import WARM_UP_MESSAGES, say, wire
from bench.campaign.population import audience_rows
from bench.campaign.results import CeilingRun
from bench.campaign.services import Bench
from bench.sender import stable_token, workers
from bench.simulator import STACKS, Outcome, Send, cpu_seconds


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
