"""The replay memory the receiver processes share (db/nonces.py, `callback_nonces`), on
SQLite and PostgreSQL, in one test process: two apps on one database stand for two
receiver processes (each has its own in-memory cache; tests/test_receiver_processes.py runs
real ones).

- A key is claimed once; a claim rolled back with its transaction is free again.
- A push stored through one receiver is refused (409) by another; stored once.
- A write that failed claims nothing: the writer's retry stores the push, and a push
  refused with 503 is received when WeChat sends the very same request again.
- Old keys are deleted, a bounded chunk at a time, by the receivers themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import OperationalError

from db.callbacks import CallbackCounts, CallbackRecord, apply_callbacks
from db.engine import make_engine
from db.models import callback_events, callback_nonces
from db.nonces import claim, forget_before, replay_key
from receiver.app import CALLBACK_PATH, create_app
from receiver.config import ReceiverConfig
from receiver.writer import BatchWriter, Replayed
from tests.waiting import wait_until
from wechat.crypto import signed_query
from wechat.events import to_xml

APP_ID = "wx0123456789abcdef"
TOKEN = "callback-token-for-replays"

_numbers = iter(range(10**9))


def _request(msg_id: int) -> tuple[dict[str, str], bytes]:
    """One signed plaintext push (a follower's text message), as WeChat sends it."""
    stamp = str(int(time.time()))
    body = to_xml(
        {
            "ToUserName": "gh_test",
            "FromUserName": "o-replay",
            "CreateTime": int(stamp),
            "MsgType": "text",
            "Content": "hi",
            "MsgId": msg_id,
        }
    )
    return signed_query(TOKEN, stamp, f"r{next(_numbers)}"), body


def _keys(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(callback_events.c.dedupe_key)).scalars())


def _nonce_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(callback_nonces)).scalar_one())


# -- db/nonces.py -------------------------------------------------------------------------------


def test_a_key_is_claimed_once_and_a_rolled_back_claim_is_free_again(db_engine: Engine) -> None:
    first, second = replay_key(APP_ID, "1732780000", "1"), replay_key(APP_ID, "1732780000", "2")
    assert len(first) == 64 and first != second
    assert replay_key(APP_ID, "1732780000", "1") == first, "the same in every process"
    with db_engine.begin() as conn:
        assert claim(conn, [first, first]) == {first}
    with db_engine.begin() as conn:
        assert claim(conn, [first, second]) == {second}, "first was claimed before"

    third = replay_key(APP_ID, "1732780000", "3")
    with pytest.raises(RuntimeError), db_engine.begin() as conn:
        assert claim(conn, [third]) == {third}
        raise RuntimeError("the push's write failed: the transaction rolls back")
    with db_engine.begin() as conn:
        assert claim(conn, [third]) == {third}, "not claimed by the failed transaction"
    assert _nonce_rows(db_engine) == 3


def test_old_keys_are_deleted_in_bounded_chunks(db_engine: Engine) -> None:
    now = datetime.now(UTC)
    with db_engine.begin() as conn:
        claim(conn, [f"old{n}" for n in range(12)], now=now - timedelta(hours=1))
        claim(conn, ["recent"], now=now)
    cutoff = now - timedelta(minutes=10)
    gone = []
    for _ in range(4):
        with db_engine.begin() as conn:
            gone.append(forget_before(conn, cutoff, limit=5))
    assert gone == [5, 5, 2, 0]
    with db_engine.connect() as conn:
        assert list(conn.execute(select(callback_nonces.c.key)).scalars()) == ["recent"]


def test_no_key_goes_before_the_push_apis_two_windows(db_engine: Engine) -> None:
    """A receiver with a 60 s window asks for keys older than 120 s; the push API's nonces
    (kept here too) must live 600 s, so only the key older than that goes."""
    now = datetime.now(UTC)
    with db_engine.begin() as conn:
        claim(conn, ["api-nonce"], now=now - timedelta(seconds=300))
        claim(conn, ["ancient"], now=now - timedelta(seconds=700))
    with db_engine.begin() as conn:
        assert forget_before(conn, now - timedelta(seconds=120), limit=10) == 1
    with db_engine.connect() as conn:
        assert list(conn.execute(select(callback_nonces.c.key)).scalars()) == ["api-nonce"]


# -- two receivers on one database --------------------------------------------------------------


def _config(**more: Any) -> ReceiverConfig:
    return ReceiverConfig(app_id=APP_ID, token=TOKEN, **more)


def test_a_push_stored_by_one_receiver_is_refused_by_another(db_engine: Engine) -> None:
    query, body = _request(msg_id=501)
    with (
        TestClient(create_app(_config(), db_engine)) as one,
        TestClient(create_app(_config(), db_engine)) as two,
    ):
        assert one.post(CALLBACK_PATH, params=query, content=body).text == "success"
        replay = two.post(CALLBACK_PATH, params=query, content=body)
        assert (replay.status_code, replay.text) == (409, "replayed nonce")
        assert two.get("/health").json()["replays"] == 1, "refused by the database"
        again = one.post(CALLBACK_PATH, params=query, content=body)
        assert again.status_code == 409
        assert one.get("/health").json()["replays"] == 0, "refused by process one's cache"
        # The second receiver remembers it now: refused without asking the database.
        assert two.post(CALLBACK_PATH, params=query, content=body).status_code == 409
        assert two.get("/health").json()["replays"] == 1
        # WeChat's own retry carries a new timestamp and nonce: stored once, acknowledged.
        retry_query, _ = _request(msg_id=0)
        assert two.post(CALLBACK_PATH, params=retry_query, content=body).text == "success"
    assert _keys(db_engine) == ["msg:501"]


def test_a_push_refused_while_the_database_was_down_is_received_when_sent_again(
    blank_db_url: str,
) -> None:
    """WeChat may resend the very same request (timestamp and nonce): a push answered 503
    must not be taken for a replay once the database is back."""
    from db.migrate import upgrade

    engine = make_engine(blank_db_url)
    try:
        with TestClient(create_app(_config(commit_timeout_seconds=1.0), engine)) as client:
            queued = _request(msg_id=601)
            answer = client.post(CALLBACK_PATH, params=queued[0], content=queued[1])
            assert answer.status_code == 503, "no schema: not stored, stays queued"
            wait_until(lambda: client.get("/health").json()["refusing_pushes"], "refusing")
            refused = _request(msg_id=602)
            answer = client.post(CALLBACK_PATH, params=refused[0], content=refused[1])
            assert answer.status_code == 503, "refused at once, never queued"

            upgrade(blank_db_url)
            wait_until(
                lambda: client.get("/health").json()["status"] == "ok",
                "the writer stored the queued push once the schema was there",
                timeout=20,
            )
            again = client.post(CALLBACK_PATH, params=refused[0], content=refused[1])
            assert (again.status_code, again.text) == (200, "success")
            # The queued one was stored after its 503: the same request is a replay now.
            late = client.post(CALLBACK_PATH, params=queued[0], content=queued[1])
            assert late.status_code == 409
        assert sorted(_keys(engine)) == ["msg:601", "msg:602"]
    finally:
        engine.dispose()


# -- the writer ---------------------------------------------------------------------------------


def _record(n: int) -> CallbackRecord:
    return CallbackRecord(
        app_id=APP_ID,
        dedupe_key=f"msg:{n}",
        openid="o-writer",
        kind="other",
        occurred_at=datetime.now(UTC),
        msg_type="text",
    )


async def test_a_write_that_failed_claimed_nothing_and_its_retry_stores_the_push(
    db_engine: Engine,
) -> None:
    failures = iter([True])

    def fails_once(connection: Any, batch: Sequence[CallbackRecord]) -> CallbackCounts:
        counts = apply_callbacks(connection, batch)  # the keys are claimed by now
        if next(failures, False):
            raise OperationalError("INSERT …", {}, Exception("the connection dropped"))
        return counts

    writer = BatchWriter(db_engine, apply=fails_once)
    writer.start()
    key = replay_key(APP_ID, "1732780000", "701")
    try:
        await asyncio.wait_for(writer.put(_record(701), key), timeout=10)
        assert writer.stats.failures == 1 and writer.stats.replays == 0
    finally:
        await writer.close()
    assert _keys(db_engine) == ["msg:701"]
    with db_engine.connect() as conn:
        assert list(conn.execute(select(callback_nonces.c.key)).scalars()) == [key]


async def test_the_same_request_twice_in_one_batch_is_stored_once(db_engine: Engine) -> None:
    writer = BatchWriter(db_engine)
    key = replay_key(APP_ID, "1732780000", "801")
    first, second = writer.put(_record(801), key), writer.put(_record(801), key)
    writer.start()  # both are queued: one batch
    try:
        outcome = await asyncio.wait_for(
            asyncio.gather(first, second, return_exceptions=True), timeout=10
        )
    finally:
        await writer.close()
    assert outcome[0] is None and isinstance(outcome[1], Replayed)
    assert writer.stats.batches == 1 and writer.stats.replays == 1
    assert _keys(db_engine) == ["msg:801"]


def test_the_receiver_deletes_keys_older_than_two_windows(db_engine: Engine) -> None:
    now = datetime.now(UTC)
    with db_engine.begin() as conn:
        conn.execute(
            insert(callback_nonces),
            [
                {"key": "gone", "seen_at": now - timedelta(seconds=601)},
                {"key": "kept", "seen_at": now - timedelta(seconds=560)},
            ],
        )
    app = create_app(_config(timestamp_window_seconds=300), db_engine)
    with TestClient(app) as client:
        wait_until(
            lambda: client.get("/health").json()["forgotten_nonces"] >= 1,
            "the writer deleted the key older than 2 x 300 s",
        )
    with db_engine.connect() as conn:
        assert list(conn.execute(select(callback_nonces.c.key)).scalars()) == ["kept"]
