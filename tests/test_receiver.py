"""The callback receiver (receiver/app.py) over HTTP, on SQLite and PostgreSQL: WeChat's URL
check, plaintext and safe-mode pushes, every refusal with its status and nothing written,
WeChat's retries applied once, and no acknowledged callback lost at shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from db.callbacks import CallbackRecord, apply_callbacks
from db.engine import make_engine
from db.models import callback_events, recipients
from receiver.app import CALLBACK_PATH, create_app
from receiver.config import ReceiverConfig
from receiver.writer import BatchWriter, RecordRefused, WriterClosed
from tests.waiting import await_until
from wechat.crypto import MessageCrypto, signature, signed_query
from wechat.events import to_xml

APP_ID = "wx0123456789abcdef"
TOKEN = "callback-token-for-tests"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OTHER_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"


@pytest.fixture
def config() -> ReceiverConfig:
    return ReceiverConfig(app_id=APP_ID, token=TOKEN, encoding_aes_key=AES_KEY)


@pytest.fixture
def client(config: ReceiverConfig, db_engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(config, db_engine)) as test_client:
        yield test_client


_nonces = iter(range(10**9))


def _query(timestamp: int | None = None, **extra: Any) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return signed_query(TOKEN, stamp, f"n{next(_nonces)}", **extra)


def _receipt(msgid: int = 4_000_000_001, status: str = "success", openid: str = "o-1") -> bytes:
    return to_xml(
        {
            "ToUserName": "gh_test",
            "FromUserName": openid,
            "CreateTime": int(time.time()),
            "MsgType": "event",
            "Event": "TEMPLATESENDJOBFINISH",
            "MsgID": msgid,
            "Status": status,
        }
    )


def _text(openid: str, msg_id: int) -> bytes:
    return to_xml(
        {
            "ToUserName": "gh_test",
            "FromUserName": openid,
            "CreateTime": int(time.time()),
            "MsgType": "text",
            "Content": "你好",
            "MsgId": msg_id,
        }
    )


def _safe(plaintext: bytes, *, key: str = AES_KEY, app_id: str = APP_ID) -> tuple[bytes, dict]:
    crypto = MessageCrypto(TOKEN, key, app_id)
    return crypto.encrypted_push(
        plaintext, str(int(time.time())), f"n{next(_nonces)}", to_user="gh_test"
    )


def _events(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(callback_events)).scalar_one())


def _written(client: TestClient, at_least: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = client.get("/health").json()
        if health["written"] >= at_least and health["backlog"] == 0:
            return health
        time.sleep(0.02)
    raise AssertionError(f"only {health['written']} callbacks written")


# -- URL verification ---------------------------------------------------------------------------


def test_url_verification_echoes_echostr_only_with_a_good_signature(client: TestClient) -> None:
    good = client.get(CALLBACK_PATH, params={**_query(), "echostr": "1234567890"})
    assert (good.status_code, good.text) == (200, "1234567890")
    bad = client.get(
        CALLBACK_PATH, params={**_query(), "signature": "0" * 40, "echostr": "1234567890"}
    )
    assert bad.status_code == 403 and "1234567890" not in bad.text


# -- accepted pushes ------------------------------------------------------------------------------


def test_plaintext_and_safe_mode_pushes_are_acknowledged_then_written(
    client: TestClient, db_engine: Engine
) -> None:
    plain = client.post(CALLBACK_PATH, params=_query(), content=_receipt(msgid=1))
    assert (plain.status_code, plain.text) == (200, "success")
    body, query = _safe(_receipt(msgid=2))
    safe = client.post(CALLBACK_PATH, params=query, content=body)
    assert (safe.status_code, safe.text) == (200, "success")
    health = _written(client, 2)
    assert health["receipts_unmatched"] == 2  # no campaign sent these msgids
    assert _events(db_engine) == 2


def test_wechats_retries_of_one_push_are_applied_once(
    client: TestClient, db_engine: Engine
) -> None:
    for _ in range(3):  # WeChat's three attempts: same XML, new timestamp/nonce each time
        answer = client.post(CALLBACK_PATH, params=_query(), content=_text("o-retry", 77))
        assert answer.status_code == 200
    health = _written(client, 3)
    assert health["new"] == 1 and health["duplicates"] == 2
    assert _events(db_engine) == 1


def test_a_message_from_a_follower_moves_their_window(
    client: TestClient, db_engine: Engine
) -> None:
    client.post(CALLBACK_PATH, params=_query(), content=_text("o-new", 78))
    _written(client, 1)
    with db_engine.connect() as conn:
        row = conn.execute(
            select(recipients.c.subscribed, recipients.c.last_interaction_at).where(
                recipients.c.openid == "o-new"
            )
        ).one()
    assert row.subscribed is True and row.last_interaction_at is not None


# -- refusals: the right status, nothing written -------------------------------------------------


def _xxe() -> bytes:
    return (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<xml><ToUserName>a</ToUserName><FromUserName>&e;</FromUserName>"
        b"<CreateTime>1</CreateTime><MsgType>text</MsgType><MsgId>1</MsgId></xml>"
    )


def _laughs() -> bytes:
    entities = '<!ENTITY l0 "lol">' + "".join(
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10)
    )
    return f'<?xml version="1.0"?><!DOCTYPE x [{entities}]><xml><A>&l9;</A></xml>'.encode()


def _cases() -> list[tuple[str, Any, int]]:
    """(name, a function returning (query, body), expected status)."""
    now = int(time.time())
    return [
        ("no signature", lambda: ({"timestamp": str(now), "nonce": "x"}, _receipt()), 403),
        ("bad signature", lambda: ({**_query(), "signature": "f" * 40}, _receipt()), 403),
        ("stale timestamp", lambda: (_query(timestamp=now - 3600), _receipt()), 403),
        ("future timestamp", lambda: (_query(timestamp=now + 3600), _receipt()), 403),
        ("xxe", lambda: (_query(), _xxe()), 400),
        ("billion laughs", lambda: (_query(), _laughs()), 400),
        ("malformed xml", lambda: (_query(), b"<xml><ToUserName>a</xml>"), 400),
        ("not xml at all", lambda: (_query(), b"{'json': true}"), 400),
        ("too large", lambda: (_query(), b"<xml>" + b"a" * 200_000 + b"</xml>"), 413),
        ("wrong appid", lambda: _swap(_safe(_receipt(), app_id="wxffffffffffffffff")), 403),
        ("wrong key", lambda: _swap(_safe(_receipt(), key=OTHER_KEY)), 400),
        ("tampered ciphertext", lambda: _swap(_tampered()), 403),
        ("bad msg_signature", lambda: _swap(_bad_msg_signature()), 403),
    ]


def _swap(pair: tuple[bytes, dict]) -> tuple[dict, bytes]:
    body, query = pair
    return query, body


def _tampered() -> tuple[bytes, dict]:
    body, query = _safe(_receipt())
    start = body.index(b"<Encrypt><![CDATA[") + len(b"<Encrypt><![CDATA[")
    flipped = b"A" if body[start + 10 : start + 11] != b"A" else b"B"
    return body[: start + 10] + flipped + body[start + 11 :], query


def _bad_msg_signature() -> tuple[bytes, dict]:
    body, query = _safe(_receipt())
    return body, {**query, "msg_signature": "0" * 40}


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_refusals_answer_their_status_and_write_nothing(
    config: ReceiverConfig,
    db_engine: Engine,
    case: tuple[str, Any, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _name, make, status = case
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(config, db_engine)) as client:
        query, body = make()
        answer = client.post(CALLBACK_PATH, params=query, content=body)
        assert answer.status_code == status, answer.text
        assert TOKEN not in answer.text and AES_KEY not in answer.text
        assert client.get("/health").json()["backlog"] == 0
    assert _events(db_engine) == 0  # the app has shut down: anything queued was written
    logged = caplog.text
    assert "Refused a callback" in logged, "the refusal is logged"
    assert TOKEN not in logged and AES_KEY not in logged and OTHER_KEY not in logged


# -- poison pushes: refused with 400, and the receiver goes on ----------------------------------


def _push(**fields: str | int) -> bytes:
    """A text message from a follower, with `fields` replacing or adding elements."""
    base: dict[str, str | int] = {
        "ToUserName": "gh_test",
        "FromUserName": "o-good",
        "CreateTime": int(time.time()),
        "MsgType": "text",
        "Content": "hi",
        "MsgId": 5_000_000_001,
    }
    return to_xml({**base, **fields})


def _event(**fields: str | int) -> bytes:
    return _push(**{"MsgType": "event", "Event": "CLICK", "EventKey": "menu", **fields})


POISON: list[tuple[str, Any]] = [
    ("FromUserName over 64", lambda: _push(FromUserName="o" * 65)),
    ("Event over 64", lambda: _event(Event="E" * 65)),
    ("MsgType over 32", lambda: _push(MsgType="t" * 33)),
    ("MsgId of 2^63", lambda: _push(MsgId=2**63)),
    ("receipt MsgID of 2^64-1", lambda: _receipt(msgid=2**64 - 1)),
    ("CreateTime a day ahead", lambda: _push(CreateTime=int(time.time()) + 86_400)),
    ("CreateTime in 1970", lambda: _push(CreateTime=1000)),
]


@pytest.mark.parametrize("poison", POISON, ids=lambda p: p[0])
def test_a_push_that_does_not_fit_its_columns_is_refused_and_the_next_is_written(
    client: TestClient, db_engine: Engine, poison: tuple[str, Any]
) -> None:
    _name, make = poison
    refused = client.post(CALLBACK_PATH, params=_query(), content=make())
    assert refused.status_code == 400, refused.text
    body, query = _safe(make())  # the same push in safe mode
    assert client.post(CALLBACK_PATH, params=query, content=body).status_code == 400
    good = client.post(CALLBACK_PATH, params=_query(), content=_text("o-after", 61))
    assert (good.status_code, good.text) == (200, "success")
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert _events(db_engine) == 1


def test_pushes_at_the_column_limits_are_written(client: TestClient, db_engine: Engine) -> None:
    longest = [
        _push(FromUserName="o" * 64, MsgId=2**63 - 1),
        _event(FromUserName="p" * 64, Event="E" * 64),
        _push(MsgType="t" * 32, MsgId=7),
    ]
    for body in longest:
        answer = client.post(CALLBACK_PATH, params=_query(), content=body)
        assert (answer.status_code, answer.text) == (200, "success")
    assert _events(db_engine) == 3


def test_an_unmigrated_database_gets_503_and_unhealthy_then_recovers(
    blank_db_url: str,
) -> None:
    from db.migrate import upgrade

    engine = make_engine(blank_db_url)
    config = ReceiverConfig(app_id=APP_ID, token=TOKEN, commit_timeout_seconds=1.0)
    try:
        with TestClient(create_app(config, engine)) as client:
            first = client.post(CALLBACK_PATH, params=_query(), content=_text("o-1", 1))
            assert first.status_code == 503, "not stored, so not acknowledged"
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "unhealthy"
            error = health.json()["last_error"]
            assert error and all(
                word not in error.upper() for word in ("INSERT", "SELECT", "CALLBACK_EVENTS")
            ), error
            time.sleep(1.2)  # down for longer than the bound: refused at once
            started = time.monotonic()
            fast = client.post(CALLBACK_PATH, params=_query(), content=_text("o-2", 2))
            assert fast.status_code == 503 and time.monotonic() - started < 0.5

            upgrade(blank_db_url)
            deadline = time.monotonic() + 15
            while True:
                answer = client.post(CALLBACK_PATH, params=_query(), content=_text("o-3", 3))
                if answer.text == "success" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert answer.text == "success", "the writer recovered once the schema was there"
            assert client.get("/health").json()["status"] == "ok"
        with engine.connect() as conn:
            keys = set(conn.execute(select(callback_events.c.dedupe_key)).scalars())
        assert {"msg:1", "msg:3"} <= keys  # the first one was kept and written on recovery
    finally:
        engine.dispose()


def test_a_replayed_nonce_is_refused_and_written_once(
    client: TestClient, db_engine: Engine
) -> None:
    query, body = _query(), _receipt(msgid=9)
    assert client.post(CALLBACK_PATH, params=query, content=body).status_code == 200
    again = client.post(CALLBACK_PATH, params=query, content=body)
    assert again.status_code == 409
    _written(client, 1)
    assert _events(db_engine) == 1


def test_the_previous_aes_key_still_opens_pushes_after_a_rotation(db_engine: Engine) -> None:
    rotated = ReceiverConfig(
        app_id=APP_ID,
        token=TOKEN,
        encoding_aes_key=OTHER_KEY,
        previous_encoding_aes_key=AES_KEY,
    )
    with TestClient(create_app(rotated, db_engine)) as client:
        body, query = _safe(_receipt(msgid=10))  # still encrypted with the old key
        assert client.post(CALLBACK_PATH, params=query, content=body).status_code == 200
    assert _events(db_engine) == 1


# -- acknowledged means stored ------------------------------------------------------------------


def test_success_is_answered_only_once_the_push_is_committed(
    config: ReceiverConfig, db_engine: Engine
) -> None:
    with TestClient(create_app(config, db_engine)) as client:
        for n in range(50):
            answer = client.post(CALLBACK_PATH, params=_query(), content=_receipt(msgid=n + 1))
            assert answer.text == "success"
            assert _events(db_engine) == n + 1  # no waiting: it is there when answered
        assert client.get("/health").json()["backlog"] == 0


def _record(n: int, **changes: Any) -> CallbackRecord:
    return CallbackRecord(
        **{
            "app_id": APP_ID,
            "dedupe_key": f"receipt:{n}",
            "openid": "o-x",
            "kind": "receipt",
            "occurred_at": datetime.now(UTC),
            "msg_type": "event",
            "event": "TEMPLATESENDJOBFINISH",
            "msgid": n,
            "receipt_status": "delivered",
            **changes,
        }
    )


async def test_a_database_that_fails_is_retried_and_nothing_is_dropped(
    db_engine: Engine,
) -> None:
    failures = {"left": 2}

    def flaky(connection: Any, batch: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("database went away")
        return apply_callbacks(connection, batch)

    writer = BatchWriter(db_engine, batch_size=10, apply=flaky)
    writer.start()
    committed = [writer.put(_record(n)) for n in range(25)]
    await asyncio.wait_for(asyncio.gather(*committed), timeout=10)
    await writer.close()
    assert writer.stats.failures == 2
    assert writer.stats.written == 25
    assert _events(db_engine) == 25
    await await_until(
        lambda: not [t for t in threading.enumerate() if t.name == "callback-writer-db"],
        "close() ends the writer's database thread",
        timeout=5,
    )


def _poison(db_engine: Engine) -> list[CallbackRecord]:
    """Records the database itself refuses (what the receiver's checks would stop first)."""
    bad = [_record(900, openid=None, dedupe_key="receipt:null-openid")]  # NOT NULL
    if db_engine.dialect.name == "postgresql":  # SQLite does not enforce VARCHAR lengths
        bad.append(_record(901, openid="o" * 65, dedupe_key="receipt:long-openid"))
    return bad


@pytest.mark.parametrize("checked", [True, False], ids=["checked", "unchecked"])
async def test_a_record_the_database_refuses_is_dropped_and_the_rest_written(
    db_engine: Engine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    checked: bool,
) -> None:
    if not checked:  # a record the checks let through: the database itself refuses it
        monkeypatch.setattr("db.callbacks.check_record", lambda record: None)
    writer = BatchWriter(db_engine, batch_size=500)
    writer.start()
    poison = _poison(db_engine)
    good = [_record(n) for n in range(40)]
    futures = [writer.put(r) for r in [*good[:20], *poison, *good[20:]]]
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=20)
    await asyncio.wait_for(writer.close(), timeout=10)
    refused = [o for o in outcomes if isinstance(o, RecordRefused)]
    assert len(refused) == len(poison), outcomes
    assert writer.stats.rejected == len(poison)
    assert _events(db_engine) == 40
    assert writer.healthy, "a bad record is not a sick database"
    assert "Dropped a callback the database refuses" in caplog.text


async def test_an_outage_that_ends_in_a_refused_record_leaves_the_writer_healthy(
    db_engine: Engine,
) -> None:
    calls = {"n": 0}

    def down_then_refusing(connection: Any, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionRefusedError("connection refused")
        raise ValueError("this record cannot be stored")

    writer = BatchWriter(db_engine, apply=down_then_refusing, commit_timeout=0.2)
    writer.start()
    outcome = await asyncio.gather(writer.put(_record(1)), return_exceptions=True)
    assert isinstance(outcome[0], RecordRefused)
    assert writer.healthy and not writer.refusing, "the database answered: it is up"
    writer.put(_record(2))  # accepted, not refused with WriterUnavailable
    await writer.close()


async def test_close_is_bounded_while_the_database_is_down(db_engine: Engine) -> None:
    def down(connection: Any, batch: Any) -> Any:
        raise ConnectionRefusedError("connection refused")

    writer = BatchWriter(db_engine, apply=down)
    writer.start()
    pending = writer.put(_record(1))
    await await_until(lambda: not writer.healthy, "the writer saw the database down")
    started = time.monotonic()
    await asyncio.wait_for(writer.close(timeout=0.5), timeout=10)  # the bound, made short
    assert time.monotonic() - started < 2
    assert pending.done() and isinstance(pending.exception(), WriterClosed)


def test_the_signature_helper_matches_wechats_rule() -> None:
    # sorted ["1", "2", "token"] joined → sha1; the crypto tests cover the vectors.
    import hashlib

    assert signature("token", "2", "1") == hashlib.sha1(b"12token").hexdigest()


def test_a_receipt_that_beat_the_ledger_write_is_matched_later(
    client: TestClient, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Re-checked once, this long after it was stored: still well after the ledger write below.
    monkeypatch.setattr("receiver.writer.RECHECK_AFTER_SECONDS", 1.0)
    from db.campaigns import create_or_resume
    from db.ledger import record_outcomes
    from db.models import deliveries
    from db.outcomes import DeliveryOutcome, DeliveryStatus

    msgid = 3_662_956_322_040_938_501  # above 2^53
    client.post(CALLBACK_PATH, params=_query(), content=_receipt(msgid, "failed:user block"))
    assert _written(client, 1)["receipts_unmatched"] == 1
    with db_engine.begin() as conn:  # the campaign records its batch only now
        create_or_resume(
            conn,
            campaign_id="c-late",
            name="late",
            app="default",
            kind="template",
            template_id="t",
            parameters={},
            audience_sql="SELECT openid FROM recipients",
        )
        record_outcomes(conn, "c-late", [DeliveryOutcome("o-1", DeliveryStatus.SENT, msgid=msgid)])
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline and status is None:
        with db_engine.connect() as conn:
            status = conn.execute(
                select(deliveries.c.receipt_status).where(deliveries.c.msgid == msgid)
            ).scalar_one()
        time.sleep(0.1)
    assert status == "user_block"
    health = client.get("/health").json()
    assert (health["write_failures"], health["late_matches"]) == (0, 1)
