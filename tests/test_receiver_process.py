"""`wxpush receiver` as a process, on SQLite and PostgreSQL: what only a real process shows.

- It refuses to start on a database that is not at the newest schema, in one line.
- Pushes that do not fit their columns get 400, the next good one is written, and SIGTERM
  ends it within 10 s.
- SIGTERM ends it within 10 s even while its database is locked (a writer stuck inside a
  statement), and the push it could not store was answered 503, not `success`.
- `kill -9` in the middle of a burst (5,000 signed pushes, 32 in flight) loses no push it
  acknowledged: every `success` has its row in `callback_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench.receiver import (
    TOKEN,
    Answers,
    build,
    launch_receiver,
    send_all,
    start_receiver,
)
from db.engine import make_engine
from tests.waiting import wait_until
from wechat.crypto import signed_query
from wechat.events import to_xml

pytestmark = pytest.mark.process  # each test starts a receiver process


def test_start_up_refuses_a_database_behind_the_newest_schema(blank_db_url: str) -> None:
    receiver = launch_receiver(blank_db_url)
    try:
        code = receiver.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        receiver.stop()
        pytest.fail(f"the receiver started on an unmigrated database: {receiver.output()}")
    output = receiver.output()
    assert code == 1
    assert "wxpush db upgrade" in output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if line.strip()]) == 1, output


@contextlib.contextmanager
def _locked(db_url: str) -> Iterator[None]:
    """Hold the write lock of the receiver's table until the block ends: its writer blocks
    inside the statement (SQLite: busy for 30 s, then an error; PostgreSQL: for ever)."""
    if db_url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(db_url).database, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            connection.rollback()
            connection.close()
        return
    engine = create_engine(db_url, poolclass=NullPool)
    with engine.connect() as connection:
        connection.execute(text("LOCK TABLE callback_events IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            connection.rollback()
    engine.dispose()


def _push(base: str, msgid: int) -> httpx.Response:
    query, body = build("plaintext", 1, first_msgid=msgid)[0]
    return httpx.post(f"{base}/wechat/callback", params=query, content=body, timeout=30)


def test_sigterm_ends_the_receiver_within_10_s_while_its_database_is_locked(
    db_url: str,
) -> None:
    receiver = start_receiver(db_url)
    try:
        assert _push(receiver.base, 1).text == "success"
        with _locked(db_url):
            started = time.monotonic()
            answer = _push(receiver.base, 2)
            waited = time.monotonic() - started
            assert answer.status_code == 503, "not stored, so not acknowledged"
            assert waited < 5, "answered before WeChat's 5 s are up"
            late: list[httpx.Response] = []
            pending = threading.Thread(target=lambda: late.append(_push(receiver.base, 3)))
            pending.start()  # a push waiting for its commit (or refused) when SIGTERM comes
            wait_until(
                lambda: late or httpx.get(f"{receiver.base}/health").json()["backlog"] >= 2,
                "the third push is queued behind the locked database, or already refused",
            )
            took = receiver.stop(timeout=30)
            pending.join(timeout=10)
            assert took < 10, f"SIGTERM took {took:.1f} s"
            assert late and late[0].status_code == 503
    finally:
        if receiver.process.poll() is None:
            receiver.process.kill()


def _signed(fields: dict[str, str | int]) -> tuple[dict[str, str], bytes]:
    stamp = str(int(time.time()))
    return signed_query(TOKEN, stamp, f"poison{next(_nonces)}"), to_xml(fields)


_nonces = iter(range(10**9))


def test_poison_pushes_get_400_the_next_is_written_and_sigterm_ends_it(db_url: str) -> None:
    now = int(time.time())
    base: dict[str, str | int] = {
        "ToUserName": "gh_test",
        "FromUserName": "o-good",
        "CreateTime": now,
        "MsgType": "text",
        "MsgId": 1,
    }
    poison = [
        {**base, "FromUserName": "o" * 65},
        {**base, "MsgType": "event", "Event": "E" * 65},
        {**base, "MsgType": "t" * 33},
        {**base, "MsgId": 2**63},
        {**base, "CreateTime": now + 86_400},
    ]
    receiver = start_receiver(db_url)
    try:
        url = f"{receiver.base}/wechat/callback"
        for fields in poison:
            query, body = _signed(fields)
            assert httpx.post(url, params=query, content=body, timeout=10).status_code == 400
        query, body = _signed({**base, "MsgId": 42})
        assert httpx.post(url, params=query, content=body, timeout=10).text == "success"
        health = httpx.get(f"{receiver.base}/health", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        took = receiver.stop(timeout=30)
    assert took < 10, f"SIGTERM took {took:.1f} s"
    engine = make_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            keys = list(connection.execute(text("SELECT dedupe_key FROM callback_events")))
    finally:
        engine.dispose()
    assert [key for (key,) in keys] == ["msg:42"]


async def _burst_then_kill(base: str, pid: int, count: int, kill_after: int) -> Answers:
    """5,000 signed pushes from 32 connections; SIGKILL once `kill_after` were acknowledged."""
    pushes = build("plaintext", count, first_msgid=7 * 10**15)
    answers = Answers()
    burst = asyncio.create_task(send_all(f"{base}/wechat/callback", pushes, 32, None, answers))
    while len(answers.acknowledged) < kill_after and not burst.done():
        await asyncio.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    return await burst


def test_kill_9_mid_burst_loses_no_acknowledged_push(db_url: str) -> None:
    receiver = start_receiver(db_url)
    try:
        answers = asyncio.run(_burst_then_kill(receiver.base, receiver.process.pid, 5000, 1500))
    finally:
        receiver.process.kill()
        receiver.process.wait()
    acknowledged = {f"receipt:{7 * 10**15 + n}" for n in answers.acknowledged}
    assert len(acknowledged) >= 1500 and answers.refused > 0, "killed mid-burst"
    engine = make_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            stored = {
                key for (key,) in connection.execute(text("SELECT dedupe_key FROM callback_events"))
            }
    finally:
        engine.dispose()
    missing = acknowledged - stored
    print(f"acknowledged {len(acknowledged)}, stored {len(stored)}, missing {len(missing)}")
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged pushes lost"
