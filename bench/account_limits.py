"""The account-wide limits as the engine integrates them (issue 12, point 2): overhead per
message and accuracy of `sending.account.AccountGate` over `tasks.account_limits`
(db/account_limits.py), the code path every campaign run takes.

P worker processes (as P campaign runs of one account on P workers) each run `concurrency`
sender coroutines that do what `CampaignRun.attempt` does around a send: the account's slot
(wait for it), then one message of its daily quota; the "send" itself is a no-op, so the
CPU a worker spends is the limits' (plus the event loop's sleeping). A baseline row runs the
same senders on the per-campaign in-memory `RateLimiter` alone, one process at the full rate.

- achieved: messages from 1 s after the start to the deadline, over all processes (after
  it the workers stop taking slots and leave what they reserved unused);
- longest gap, idle: the longest time without a message, and the time lost in gaps over
  two intervals, in that window;
- max in 1 s: the most "sent" in any 1 s window (a burst check);
- CPU / message: the workers' `process_time()` over their messages;
- statements / s: reservations (slots + quota) per second, all processes;
- quota: the day's row against the messages counted (what is not sent went back).

The database is a scratch schema on the PostgreSQL server (dropped after) or a temporary
SQLite file, migrated to head. `.venv/bin/python -m bench.account_limits --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULT = "RESULT "
READY = "READY"
WORKER = [sys.executable, "-m", "bench.account_limits", "--worker"]
COLUMNS = (
    "limiter",
    "processes",
    "configured",
    "achieved",
    "error",
    "max in 1 s",
    "CPU / message",
    "statements / s",
    "quota row = sent",
)


# -- a worker -------------------------------------------------------------------------------------


async def _work(spec: dict[str, Any], go: Path) -> dict[str, Any]:
    from sending.account import AccountGate
    from sending.ratelimit import RateLimiter
    from tasks.account_limits import SqlAccountLimits
    from tasks.database import engine

    gate: AccountGate | None = None
    limiter: RateLimiter | None = None
    if spec["mode"] == "memory":
        limiter = RateLimiter(spec["rate"])
    else:
        limits = SqlAccountLimits(
            spec["app_id"],
            rate_per_second=spec["rate"],
            daily_quota=10**9,
            database=lambda: engine(spec["url"]),
        )
        gate = AccountGate(limits, counts_quota=True)
        await asyncio.to_thread(lambda: engine(spec["url"]).connect().close())  # warm pool
    print(READY, flush=True)
    while not go.exists():
        await asyncio.sleep(0.005)
    stamps: list[float] = []
    deadline = time.monotonic() + spec["seconds"]
    cpu = time.process_time()

    async def sender() -> None:
        while time.monotonic() < deadline:
            if gate is not None:
                wait = await gate.slot()
                if wait > 0:
                    await asyncio.sleep(wait)
                assert await gate.take_unit()
            elif limiter is not None and (wait := limiter.reserve()) > 0:
                await asyncio.sleep(wait)
            stamps.append(time.time())

    await asyncio.gather(*(sender() for _ in range(spec["concurrency"])))
    cpu = time.process_time() - cpu
    held = 0
    statements = 0
    if gate is not None:
        held = gate.units_held
        statements = gate.slot_reservations + gate.quota_reservations
        await gate.close()
    return {"stamps": stamps, "cpu": cpu, "statements": statements, "given_back": held}


def worker_main(spec_json: str, go: str) -> int:
    result = asyncio.run(_work(json.loads(spec_json), Path(go)))
    print(RESULT + json.dumps(result), flush=True)
    return 0


# -- the parent -----------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(url: str | None) -> Iterator[str]:
    """A migrated database of its own: a new schema on PostgreSQL, else a SQLite file."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from db.migrate import upgrade

    if url is None:
        with tempfile.TemporaryDirectory(prefix="wxpush-bench-limits-") as tmp:
            sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            upgrade(sqlite_url)
            yield sqlite_url
        return
    schema = f"wxpush_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        scoped_url = scoped.render_as_string(hide_password=False)
        upgrade(scoped_url)
        yield scoped_url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def run(mode: str, url: str, rate: float, processes: int, args: argparse.Namespace) -> dict:
    """P workers released together; their stamps, CPU and statements combined."""
    from processes import start

    app_id = f"wxbench{uuid.uuid4().hex[:10]}"
    spec = {
        "mode": mode,
        "url": url,
        "rate": rate,
        "app_id": app_id,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
    }
    with tempfile.TemporaryDirectory(prefix="wxpush-bench-go-") as tmp:
        go = Path(tmp) / "go"
        with contextlib.ExitStack() as stack:
            children = [
                stack.enter_context(
                    start([*WORKER, json.dumps(spec), "--go", str(go)], name=f"worker {i}")
                )
                for i in range(processes)
            ]
            deadline = time.monotonic() + 120
            while not all(READY in c.output() for c in children):
                if time.monotonic() > deadline or any(
                    c.process.poll() is not None for c in children
                ):
                    raise RuntimeError(f"a worker did not get ready: {children[0].log_tail()}")
                time.sleep(0.01)
            started = time.time()
            go.touch()
            for child in children:
                child.process.wait(timeout=args.seconds + 60)
            results = []
            for child in children:
                line = [x for x in child.output().splitlines() if x.startswith(RESULT)]
                if not line:
                    raise RuntimeError(f"a worker failed: {child.log_tail()}")
                results.append(json.loads(line[-1][len(RESULT) :]))
    stamps = sorted(t for r in results for t in r["stamps"])
    # From 1 s after the start to the deadline: after it, each process leaves the slots it
    # reserved and did not deal unused (holes among the others' last sends).
    end = started + args.seconds
    counted = [t for t in stamps if started + 1.0 <= t < end]
    achieved = len(counted) / (args.seconds - 1.0)
    gaps = [b - a for a, b in itertools.pairwise(counted)]
    longest_gap = max(gaps, default=0.0)
    burst, j = 0, 0
    for i, t in enumerate(stamps):
        while stamps[j] < t - 1.0:
            j += 1
        burst = max(burst, i - j + 1)
    used = None
    if mode != "memory":
        used = _quota_used(url, app_id)
    return {
        "mode": mode,
        "rate": rate,
        "processes": processes,
        "messages": len(stamps),
        "achieved": round(achieved, 2),
        "error_pct": round(100 * (achieved - rate) / rate, 2),
        "max_in_1s": burst,
        "cpu_us_per_message": round(1e6 * sum(r["cpu"] for r in results) / len(stamps), 1),
        "statements_per_s": round(sum(r["statements"] for r in results) / args.seconds, 1),
        "quota_row": used,
        "longest_gap_ms": round(1000 * longest_gap, 1),
        "idle_s": round(sum(g - 1 / rate for g in gaps if g > 2 / rate), 3),
        "given_back": sum(r["given_back"] for r in results),
    }


def _quota_used(url: str, app_id: str) -> int:
    from sqlalchemy import select

    from db.account_limits import quota_used
    from db.engine import make_engine
    from db.models import AccountQuota

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            day = conn.execute(
                select(AccountQuota.day).where(AccountQuota.app_id == app_id)
            ).scalar_one()
            return quota_used(conn, app_id, day)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.account_limits", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--go", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", default=PG_URL, help="PostgreSQL server, or 'sqlite'")
    parser.add_argument("--rates", default="100,500", help="account rates, messages/s")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="senders per process")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker, args.go)
    url = None if args.database_url == "sqlite" else args.database_url
    rows = []
    with scratch_database(url) as db:
        for rate in (float(r) for r in args.rates.split(",")):
            rows.append(run("memory", db, rate, 1, args))
            rows.append(run("account", db, rate, args.processes, args))
            print(json.dumps(rows[-2]), json.dumps(rows[-1]), sep="\n", flush=True)
    print("\n" + "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|")
    for r in rows:
        memory = r["mode"] == "memory"
        cells = [
            "in-memory RateLimiter (one campaign)" if memory else "AccountGate + database",
            str(r["processes"]),
            f"{r['rate']:g}/s",
            f"{r['achieved']}/s",
            f"{r['error_pct']:+} %",
            str(r["max_in_1s"]),
            f"{r['cpu_us_per_message']} µs",
            str(r["statements_per_s"]),
            "" if memory else str(r["quota_row"] == r["messages"]),
        ]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
