"""How many WeChat callbacks the receiver takes per second, and how fast it answers, with
one process and with several on one port.

    .venv/bin/python -m bench.receiver [--callbacks 20000] [--concurrency 64]
        [--modes plaintext safe] [--rates 0 1000] [--processes 1 2] [--database-url URL]

For each `--processes` count, starts `wxpush receiver --processes N` (uvicorn) on a fresh
database, then for each mode and rate sends `--callbacks` TEMPLATESENDJOBFINISH pushes
exactly as WeChat would (signed; in safe mode encrypted, with msg_signature), each a
different receipt, from `--concurrency` connections of one aiohttp client process. The
pushes are built and signed before the clock starts. It prints callbacks/s over the send
span, p50/p99/max answer time, the receiver's CPU per callback (its process tree, the
supervisor included) and, on PostgreSQL, its database backends' CPU per callback; then it
counts the rows in `callback_events`: zero lost means every acknowledged push is there.
Every push claims its key in `callback_nonces` (the replay memory the processes share).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
from sqlalchemy import select, text

from bench.campaign.services import tree_cpu
from db.engine import make_engine
from db.migrate import upgrade
from db.models import callback_events, callback_nonces
from processes import Child, http_ok, pick_port, start
from wechat.crypto import MessageCrypto, signed_query
from wechat.events import to_xml

APP_ID = "wx0123456789abcdef"
TOKEN = "bench-callback-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
STATUSES = ("success", "failed:user block", "failed: system failed")


@dataclass
class Result:
    processes: int
    mode: str
    offered: float
    callbacks: int
    seconds: float
    latencies: list[float]
    refused: int
    stored: int
    lost: int
    receiver_cpu: float | None
    database_cpu: float | None

    @property
    def rate(self) -> float:
        return self.callbacks / self.seconds

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def build(mode: str, count: int, first_msgid: int) -> list[tuple[dict[str, str], bytes]]:
    """Every push of a run, signed (and encrypted) as WeChat would send it."""
    crypto = MessageCrypto(TOKEN, AES_KEY, APP_ID)
    stamp = str(int(time.time()))
    pushes = []
    for n in range(count):
        xml = to_xml(
            {
                "ToUserName": "gh_bench",
                "FromUserName": f"o-bench-{n % 5000}",
                "CreateTime": int(stamp),
                "MsgType": "event",
                "Event": "TEMPLATESENDJOBFINISH",
                "MsgID": first_msgid + n,
                "Status": STATUSES[n % 3],
            }
        )
        nonce = f"{mode[0]}{first_msgid + n}"  # unique across runs of one receiver
        if mode == "safe":
            body, query = crypto.encrypted_push(xml, stamp, nonce, to_user="gh_bench")
        else:
            body, query = xml, signed_query(TOKEN, stamp, nonce)
        pushes.append((query, body))
    return pushes


@dataclass
class Answers:
    """What one burst got back: per push index, whether it was acknowledged (`success`),
    and each push's HTTP status (0: no answer)."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    refused: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


async def send_all(
    url: str,
    pushes: list[tuple[dict[str, str], bytes]],
    concurrency: int,
    rate: float | None = None,
    answers: Answers | None = None,
) -> Answers:
    """Send every push; with `rate`, push n is due at n/rate s (open loop) and its answer
    time counts from when it was due, so a receiver that falls behind shows it. A push that
    gets no answer (the receiver died) counts as refused. Pass `answers` to watch it fill."""
    answers = answers or Answers()
    todo = iter(enumerate(pushes))
    t0 = time.perf_counter()

    async def worker(session: aiohttp.ClientSession) -> None:
        for n, (query, body) in todo:
            started = time.perf_counter()
            if rate:
                due = t0 + n / rate
                if due > started:
                    await asyncio.sleep(due - started)
                started = due
            try:
                async with session.post(url, params=query, data=body) as answer:
                    status, text = answer.status, await answer.text()
            except aiohttp.ClientError:
                status, text = 0, ""
            answers.latencies.append(time.perf_counter() - started)
            answers.statuses[n] = status
            if status == 200 and text == "success":
                answers.acknowledged.append(n)
            else:
                answers.refused += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        answers.seconds = time.perf_counter() - t0
        return answers


@dataclass
class ReceiverProcess:
    """A running `wxpush receiver`: its child process (output in an anonymous file, so a
    chatty receiver never blocks on a full pipe) and its base URL."""

    child: Child
    base: str

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.child.process

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.child.output()

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM, then wait; returns the seconds it took to exit (kills it past `timeout`)."""
        return self.child.stop(timeout)


def launch_receiver(
    database_url: str,
    *,
    app_id: str = APP_ID,
    token: str = TOKEN,
    aes_key: str = AES_KEY,
    args: Sequence[str] = (),
) -> ReceiverProcess:
    """Start `wxpush receiver` on a free port, writing to `database_url` (not waited for);
    `args` are more of its options."""
    port = pick_port(0)
    argv = [sys.executable, "-m", "cli.main", "receiver", "--port", str(port), *args]
    env = {
        "WXPUSH_DATABASE_URL": database_url,
        "WXPUSH_APP_ID": app_id,
        "WXPUSH_CALLBACK_TOKEN": token,
        "WXPUSH_CALLBACK_AES_KEY": aes_key,
    }
    return ReceiverProcess(start(argv, name="receiver", env=env), f"http://127.0.0.1:{port}")


def start_receiver(
    database_url: str, *, timeout: float = 30.0, args: Sequence[str] = (), **account: str
) -> ReceiverProcess:
    """`launch_receiver`, returned once /health answers (whatever its status);
    processes.ChildFailed, with its output, if it exits or does not answer in `timeout` s."""
    receiver = launch_receiver(database_url, args=args, **account)
    try:
        receiver.child.wait_ready(http_ok(f"{receiver.base}/health", status=None), timeout)
    except BaseException:
        receiver.child.close()
        raise
    return receiver


def wait_written(base: str, expected: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(f"{base}/health", timeout=5).json()
        if health["written"] >= expected and health["backlog"] == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"the receiver wrote only {health['written']} of {expected}")


def _backend_cpu(engine: Any) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to the bench's database but this
    one (the receivers' connections); {} on SQLite."""
    if engine.dialect.name != "postgresql":
        return {}
    with engine.connect() as conn:
        pids = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        ).scalars()
        found = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                found[pid] = times.user + times.system
    return found


def _vacuum(engine: Any) -> None:
    """VACUUM ANALYZE the receiver's tables after emptying them: every run starts from the
    same state even where autovacuum is off (as on the machine these figures come from),
    since the dead rows of earlier runs slow every index scan down. PostgreSQL only."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("callback_events", "callback_nonces"):
            conn.exec_driver_sql(f"VACUUM ANALYZE {table}")


def _stored(engine: Any) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(callback_events.c.dedupe_key)).scalars())


def run_receiver(args: argparse.Namespace, url: str, engine: Any, processes: int) -> list[Result]:
    """Every mode and rate against one `wxpush receiver --processes N` on a fresh table."""
    with engine.begin() as conn:
        conn.execute(callback_events.delete())
        conn.execute(callback_nonces.delete())
    _vacuum(engine)
    receiver = start_receiver(url, args=["--processes", str(processes)])
    base = f"{receiver.base}/wechat/callback"
    results = []
    acknowledged: set[str] = set()
    sent = 0
    try:
        for mode in args.modes:
            for rate in args.rates:
                first = 10**15 + sent
                pushes = build(mode, args.callbacks, first_msgid=first)
                sent += len(pushes)
                warm = asyncio.run(send_all(base, pushes[:200], 16))
                cpu0, db0 = tree_cpu(receiver.process.pid), _backend_cpu(engine)
                answers = asyncio.run(send_all(base, pushes[200:], args.concurrency, rate or None))
                cpu1, db1 = tree_cpu(receiver.process.pid), _backend_cpu(engine)
                acknowledged.update(f"receipt:{first + n}" for n in warm.acknowledged)
                acknowledged.update(f"receipt:{first + 200 + n}" for n in answers.acknowledged)
                callbacks = len(pushes) - 200
                stored = _stored(engine)
                results.append(
                    Result(
                        processes,
                        mode,
                        rate,
                        callbacks,
                        answers.seconds,
                        answers.latencies,
                        answers.refused,
                        len(stored),
                        len(acknowledged - stored),
                        None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / callbacks,
                        (sum(t - db0.get(pid, 0.0) for pid, t in db1.items()) / callbacks)
                        if db1
                        else None,
                    )
                )
    finally:
        # Graceful: bounded however the database is doing (docs/receiver.md).
        stopped_in = receiver.stop(timeout=60)
        # uvicorn re-raises the signal once it has shut down cleanly.
        if receiver.process.returncode not in (0, -signal.SIGTERM):
            raise SystemExit(f"the receiver stopped badly: {receiver.output()[-2000:]}")
    print(f"{processes} process(es): stopped {stopped_in:.1f} s after SIGTERM", flush=True)
    return results


def _us(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e6:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callbacks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=["plaintext", "safe"])
    parser.add_argument(
        "--rates",
        nargs="+",
        type=float,
        default=[0, 1000],
        help="Pushes per second, open loop; 0 = as fast as the receiver answers.",
    )
    parser.add_argument(
        "--processes",
        nargs="+",
        type=int,
        default=[1],
        help="Receiver processes on the one port; each count is a run of its own.",
    )
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'receiver-bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        results = [r for n in args.processes for r in run_receiver(args, url, engine, n)]
        engine.dispose()

    print(
        f"\nreceiver: {url.split(':')[0]}, client concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores shared with the client\n"
    )
    print(
        "| processes | mode | offered/s | callbacks | callbacks/s | p50 ms | p99 ms | max ms "
        "| refused | receiver CPU µs/callback | database CPU µs/callback | rows | lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.processes} | {r.mode} | {f'{r.offered:,.0f}' if r.offered else 'max'} | "
            f"{r.callbacks:,} | {r.rate:,.0f} | {r.quantile(0.5):.1f} | "
            f"{r.quantile(0.99):.1f} | {max(r.latencies) * 1000:.1f} | {r.refused} | "
            f"{_us(r.receiver_cpu)} | {_us(r.database_cpu)} | {r.stored:,} | "
            f"{r.lost} |"
        )


if __name__ == "__main__":
    main()
