"""How many WeChat callbacks one receiver process takes per second, and how fast it answers.

    .venv/bin/python -m bench.receiver [--callbacks 20000] [--concurrency 64]
        [--modes plaintext safe] [--database-url URL]

Starts `wxpush receiver` (uvicorn, one process) on a fresh database, then for each mode
sends `--callbacks` TEMPLATESENDJOBFINISH pushes exactly as WeChat would (signed; in safe
mode encrypted, with msg_signature), each a different receipt, from `--concurrency`
connections of one aiohttp client process. The pushes are built and signed before the clock
starts. It prints callbacks/s over the send span, p50/p99/max answer time, and then waits
for the writer and counts the rows in `callback_events`: zero lost means every acknowledged
push is there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
from sqlalchemy import func, select

from db.engine import make_engine
from db.migrate import upgrade
from db.models import callback_events
from processes import Child, http_ok, pick_port, start
from wechat.crypto import MessageCrypto, signed_query
from wechat.events import to_xml

APP_ID = "wx0123456789abcdef"
TOKEN = "bench-callback-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
STATUSES = ("success", "failed:user block", "failed: system failed")


@dataclass
class Result:
    mode: str
    offered: float
    callbacks: int
    seconds: float
    latencies: list[float]
    refused: int
    stored: int

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
    """What one burst got back: per push index, whether it was acknowledged (`success`)."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    refused: int = 0


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
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'receiver-bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(callback_events.delete().where(callback_events.c.app_id == APP_ID))
        receiver = start_receiver(url)
        base = receiver.base
        try:
            results = []
            sent = 0
            for mode in args.modes:
                for rate in args.rates:
                    pushes = build(mode, args.callbacks, first_msgid=10**15 + sent)
                    url_ = f"{base}/wechat/callback"
                    asyncio.run(send_all(url_, pushes[:200], 16))  # warm-up
                    answers = asyncio.run(
                        send_all(url_, pushes[200:], args.concurrency, rate or None)
                    )
                    sent += len(pushes)
                    wait_written(base, sent)
                    with engine.connect() as conn:
                        stored = conn.execute(
                            select(func.count()).select_from(callback_events)
                        ).scalar_one()
                    callbacks = len(pushes) - 200
                    results.append(
                        Result(
                            mode,
                            rate,
                            callbacks,
                            answers.seconds,
                            answers.latencies,
                            answers.refused,
                            stored,
                        )
                    )
        finally:
            # Graceful: bounded however the database is doing (docs/receiver.md).
            stopped_in = receiver.stop(timeout=60)
            # uvicorn re-raises the signal once it has shut down cleanly.
            if receiver.process.returncode not in (0, -signal.SIGTERM):
                raise SystemExit(f"the receiver stopped badly: {receiver.output()[-2000:]}")
        engine.dispose()

    print(
        f"\nreceiver: one uvicorn process, {url.split(':')[0]}, client concurrency "
        f"{args.concurrency}, {os.cpu_count()} cores shared with the client; "
        f"it stopped {stopped_in:.1f} s after SIGTERM\n"
    )
    print(
        "| mode | offered/s | callbacks | callbacks/s | p50 ms | p99 ms | max ms | refused "
        "| rows | lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    expected = 0
    for r in results:
        expected += r.callbacks + 200
        print(
            f"| {r.mode} | {f'{r.offered:,.0f}' if r.offered else 'max'} | {r.callbacks:,} | "
            f"{r.rate:,.0f} | {r.quantile(0.5):.1f} | "
            f"{r.quantile(0.99):.1f} | {max(r.latencies) * 1000:.1f} | {r.refused} | "
            f"{r.stored:,} | {expected - r.stored} |"
        )


if __name__ == "__main__":
    main()
