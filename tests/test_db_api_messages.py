"""db/api_messages.py on SQLite and PostgreSQL: the push API's rows accepted exactly once per
(caller, idempotency key), nonces claimed with them, answers that never move a final row
back, receipts by msgid (at once and late), and the analyst views that show the rows."""

from __future__ import annotations

import re
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.pool import NullPool

from db.api_messages import (
    Accepted,
    ApiCounts,
    NewMessage,
    Replayed,
    Request,
    Result,
    StoredMessage,
    accept,
    claim_nonce_only,
    counts,
    get,
    get_many,
    new_message_id,
    record,
    unfinished,
)
from db.callbacks import CallbackRecord, apply_callbacks, match_pending_receipts
from db.engine import make_engine
from db.migrate import alembic_config, current_revision, head_revision, upgrade
from db.models import api_messages, callback_events
from wechat.errors import lookup

T0 = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)  # 23:30 in Beijing, on the 20th
SECOND = timedelta(seconds=1)
APP_ID = "wx0123456789abcdef"


def message(
    key: str | None = None,
    *,
    caller: str = "orders",
    at: datetime = T0,
    openid: str = "o-1",
    app: str = "shop",
    kind: str = "template",
    body: str = "h1",
) -> NewMessage:
    return NewMessage(
        id=new_message_id(),
        caller=caller,
        key_id="wxk" + "0" * 20,
        idempotency_key=key,
        request_hash=body * 32,
        app=app,
        kind=kind,
        openid=openid,
        template_id="TPL-1" if kind == "template" else None,
        payload={"data": {"thing1": "鞋子已发货"}, "url": "https://example.com/o/1"},
        client_msg_id=None if key is None else f"cmid-{key}",
        created_at=at,
    )


def one(engine: Engine, *requests: Request) -> list[Accepted | Replayed]:
    with engine.begin() as connection:
        return accept(connection, requests)


def accepted(answer: Accepted | Replayed) -> list[tuple[StoredMessage, bool]]:
    assert isinstance(answer, Accepted), answer
    return answer.messages


def row_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(api_messages)).scalar_one())


def nonce_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM callback_nonces")).scalar_one())


# -- accept -------------------------------------------------------------------------------------


def test_new_message_ids_have_the_documented_form() -> None:
    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for value in ids:
        assert value.startswith("msg_") and len(value) == 26 and value[4:].isalnum()


def test_accept_inserts_the_rows_and_says_they_are_new(db_engine: Engine) -> None:
    first, second = message("k1"), message(None, openid="o-2")
    [answer] = one(db_engine, Request("n-1", [first, second]))
    rows = accepted(answer)
    assert [(row.id, created) for row, created in rows] == [(first.id, True), (second.id, True)]
    with db_engine.connect() as connection:
        stored = get(connection, first.id)
    assert stored is not None and stored == rows[0][0]
    assert stored.status == "queued" and not stored.final and stored.attempts == 0
    assert stored.payload == {"data": {"thing1": "鞋子已发货"}, "url": "https://example.com/o/1"}
    assert stored.created_at == T0 and stored.client_msg_id == "cmid-k1"
    assert (row_count(db_engine), nonce_count(db_engine)) == (2, 1)


def test_a_repeated_key_gets_the_first_row_and_inserts_nothing(db_engine: Engine) -> None:
    first = message("k1")
    accepted(one(db_engine, Request("n-1", [first]))[0])
    again = message("k1", body="h2")  # the caller compares request_hash
    [(row, created)] = accepted(one(db_engine, Request("n-2", [again]))[0])
    assert (row.id, created, row.request_hash) == (first.id, False, "h1" * 32)
    assert row_count(db_engine) == 1


def test_the_same_key_twice_in_one_call(db_engine: Engine) -> None:
    a, b, c = message("k1"), message("k1"), message("k2")
    answers = one(db_engine, Request("n-1", [a, c]), Request("n-2", [b]))
    first, third = accepted(answers[0])
    [second] = accepted(answers[1])
    assert (first[0].id, first[1]) == (a.id, True)
    assert (second[0].id, second[1]) == (a.id, False)
    assert (third[0].id, third[1]) == (c.id, True)
    # Within one request too, and against the row an earlier call stored.
    [answer] = one(db_engine, Request(None, [message("k1"), message("k1")]))
    assert [(row.id, created) for row, created in accepted(answer)] == [(a.id, False)] * 2
    assert row_count(db_engine) == 2


def test_another_caller_may_use_the_same_key(db_engine: Engine) -> None:
    mine, theirs = message("k1"), message("k1", caller="billing")
    answers = one(db_engine, Request("n-1", [mine]), Request("n-2", [theirs]))
    got = [(row.id, row.caller, created) for a in answers for row, created in accepted(a)]
    assert got == [(mine.id, "orders", True), (theirs.id, "billing", True)]
    assert row_count(db_engine) == 2


def test_a_replayed_nonce_stores_nothing(db_engine: Engine) -> None:
    accepted(one(db_engine, Request("n-1", [message("k1")]))[0])
    replay = message("k9")
    answers = one(db_engine, Request("n-1", [replay]), Request("n-2", [message("k2")]))
    assert answers[0] == Replayed("n-1")
    assert accepted(answers[1])[0][1] is True
    # The same nonce twice in one call: the second copy is the replay.
    twice = one(db_engine, Request("n-3", [message("k3")]), Request("n-3", [message("k4")]))
    assert isinstance(twice[0], Accepted) and twice[1] == Replayed("n-3")
    with db_engine.connect() as connection:
        assert get(connection, replay.id) is None
        keys = set(connection.execute(select(api_messages.c.idempotency_key)).scalars())
    assert keys == {"k1", "k2", "k3"}


def test_a_failed_transaction_claims_no_nonce(db_engine: Engine) -> None:
    with pytest.raises(RuntimeError), db_engine.begin() as connection:
        accept(connection, [Request("n-1", [message("k1")])])
        raise RuntimeError("the caller's transaction fails")
    assert (row_count(db_engine), nonce_count(db_engine)) == (0, 0)
    assert isinstance(one(db_engine, Request("n-1", [message("k1")]))[0], Accepted)


def test_claim_nonce_only(db_engine: Engine) -> None:
    with db_engine.begin() as connection:
        assert claim_nonce_only(connection, "get-1") is True
        assert claim_nonce_only(connection, "get-1") is False
    assert isinstance(one(db_engine, Request("get-1", [message()]))[0], Replayed)


def test_naive_created_at_is_refused_before_writing(db_engine: Engine) -> None:
    naive = message("k1", at=T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="naive"), db_engine.begin() as connection:
        accept(connection, [Request("n-1", [naive])])
    assert nonce_count(db_engine) == 0


def test_concurrent_accepts_of_one_key_make_one_row(db_engine: Engine) -> None:
    """Eight transactions at once, each its own connection: one inserts, seven get its row."""
    threads = 8
    go = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    candidates = [message("same-key", openid=f"o-{n}") for n in range(threads)]

    def worker(n: int) -> None:
        go.wait()
        try:
            with db_engine.begin() as connection:
                [answer] = accept(connection, [Request(f"nonce-{n}", [candidates[n]])])
                results[n] = accepted(answer)[0]
        except Exception as exc:  # reported below
            results[n] = exc

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    assert not [r for r in results if isinstance(r, Exception)], results
    ids = {row.id for row, _ in results}
    assert len(ids) == 1 and ids <= {m.id for m in candidates}
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert (row_count(db_engine), nonce_count(db_engine)) == (1, threads)


# -- record -------------------------------------------------------------------------------------


def test_record_stores_answers_and_never_moves_a_final_row_back(db_engine: Engine) -> None:
    sent, failed, waiting = message("a"), message("b"), message("c")
    one(db_engine, Request(None, [sent, failed, waiting]))
    with db_engine.begin() as connection:
        record(
            connection,
            [
                Result(
                    sent.id,
                    "sent",
                    attempts=1,
                    msgid=7001,
                    first_attempt_at=T0,
                    last_attempt_at=T0,
                    sent_at=T0 + SECOND,
                ),
                Result(
                    failed.id,
                    "failed",
                    errcode=40037,
                    errmsg="invalid template_id",
                    reason="invalid template_id",
                    attempts=1,
                    first_attempt_at=T0,
                    last_attempt_at=T0,
                ),
                Result(
                    waiting.id,
                    "queued",
                    attempts=2,
                    reason="quota spent",
                    first_attempt_at=T0,
                    last_attempt_at=T0 + SECOND,
                ),
            ],
        )
    with db_engine.begin() as connection:
        record(
            connection,
            [
                Result(sent.id, "queued", attempts=5, reason="late"),  # never back to queued
                Result(
                    failed.id,
                    "unknown",
                    attempts=1,
                    reason="restart rule",
                    first_attempt_at=T0 + 9 * SECOND,
                    last_attempt_at=T0 + 9 * SECOND,
                ),
                Result(
                    waiting.id,
                    "sent",
                    attempts=1,
                    msgid=7003,
                    first_attempt_at=T0 + 5 * SECOND,
                    last_attempt_at=T0 + 5 * SECOND,
                    sent_at=T0 + 5 * SECOND,
                ),
            ],
        )
        rows = get_many(connection, [sent.id, failed.id, waiting.id, "msg_missing"])
    assert set(rows) == {sent.id, failed.id, waiting.id}
    a, b, c = rows[sent.id], rows[failed.id], rows[waiting.id]
    assert (a.status, a.attempts, a.msgid, a.reason, a.sent_at) == (
        "sent",
        1,
        7001,
        None,
        T0 + SECOND,
    )
    assert a.final
    # A final status may follow another final one; attempts add up; the first attempt stays.
    assert (b.status, b.errcode, b.attempts, b.reason) == ("unknown", None, 2, "restart rule")
    assert (b.first_attempt_at, b.last_attempt_at) == (T0, T0 + 9 * SECOND)
    assert (c.status, c.attempts, c.msgid, c.first_attempt_at) == ("sent", 3, 7003, T0)


def test_record_refuses_an_unknown_status(db_engine: Engine) -> None:
    with pytest.raises(ValueError, match="not one of"), db_engine.begin() as connection:
        record(connection, [Result("msg_x", "delivered")])


def test_unfinished_lists_queued_rows_oldest_first(db_engine: Engine) -> None:
    late, early, middle, done = (
        message("l", at=T0 + 3 * SECOND),
        message("e", at=T0),
        message("m", at=T0 + SECOND),
        message("d", at=T0 - SECOND),
    )
    one(db_engine, Request(None, [late, early, middle, done]))
    with db_engine.begin() as connection:
        record(connection, [Result(done.id, "sent", attempts=1, msgid=1)])
        assert [m.id for m in unfinished(connection, 10)] == [early.id, middle.id, late.id]
        assert [m.id for m in unfinished(connection, 2)] == [early.id, middle.id]
        before = unfinished(connection, 10, before=T0 + 2 * SECOND)
        assert [m.id for m in before] == [early.id, middle.id]


def test_counts(db_engine: Engine) -> None:
    rows = [message(f"k{n}", at=T0 + n * SECOND) for n in range(6)]
    old = message("old", at=T0 - timedelta(days=1))
    one(db_engine, Request(None, [*rows, old]))
    with db_engine.begin() as connection:
        record(
            connection,
            [
                Result(rows[0].id, "sent", attempts=1, msgid=1),
                Result(rows[1].id, "sent", attempts=1, msgid=2),
                Result(rows[2].id, "failed", errcode=40037, attempts=1),
                Result(rows[3].id, "failed", errcode=40037, attempts=1),
                Result(rows[4].id, "failed", reason="timeout", attempts=3),
                Result(old.id, "failed", errcode=43101, attempts=1),
            ],
        )
        got = counts(connection, T0)
    assert got == ApiCounts(
        accepted=6,
        by_status={"sent": 2, "failed": 3, "queued": 1},
        failed_by_errcode={"40037": 2, "none": 1},
    )


# -- receipts -----------------------------------------------------------------------------------


def receipt(msgid: int, status: str, at: datetime) -> CallbackRecord:
    return CallbackRecord(
        app_id=APP_ID,
        dedupe_key=f"event:o-1:{at.timestamp():.0f}:TEMPLATESENDJOBFINISH:{msgid}",
        openid="o-1",
        kind="receipt",
        occurred_at=at,
        msg_type="event",
        event="TEMPLATESENDJOBFINISH",
        msgid=msgid,
        receipt_status=status,
    )


def test_a_receipt_reaches_the_api_row_at_once_and_late(db_engine: Engine) -> None:
    big = 3662956322040938501  # above 2^53
    now, late = message("now"), message("late")
    one(db_engine, Request(None, [now, late]))
    with db_engine.begin() as connection:
        record(connection, [Result(now.id, "sent", attempts=1, msgid=big, sent_at=T0)])
    # At once: the msgid is stored when the receipt comes.
    with db_engine.begin() as connection:
        done = apply_callbacks(connection, [receipt(big, "delivered", T0 + SECOND)])
    assert (done.receipts_matched, done.receipts_unmatched) == (1, 0)
    # Late: the receipt beats `record`, which matches it.
    with db_engine.begin() as connection:
        early = apply_callbacks(connection, [receipt(big + 1, "user_block", T0 + 2 * SECOND)])
    assert (early.receipts_matched, early.receipts_unmatched) == (0, 1)
    with db_engine.begin() as connection:
        record(connection, [Result(late.id, "sent", attempts=1, msgid=big + 1, sent_at=T0)])
    # An older receipt of the first changes nothing.
    with db_engine.begin() as connection:
        apply_callbacks(connection, [receipt(big, "system_failed", T0)])
    with db_engine.connect() as connection:
        rows = get_many(connection, [now.id, late.id])
        matched = connection.execute(select(callback_events.c.matched)).scalars().all()
    assert (rows[now.id].msgid, rows[now.id].receipt_status) == (big, "delivered")
    assert rows[now.id].receipt_at == T0 + SECOND
    assert (rows[late.id].receipt_status, rows[late.id].receipt_at) == (
        "user_block",
        T0 + 2 * SECOND,
    )
    assert sorted(matched) == [True, True, True]


def test_the_receivers_sweep_matches_api_rows(db_engine: Engine) -> None:
    """The receiver's late re-check calls match_pending_receipts with no ledger write."""
    sent = message("k")
    one(db_engine, Request(None, [sent]))
    with db_engine.begin() as connection:
        apply_callbacks(connection, [receipt(9001, "delivered", T0 + SECOND)])
    with db_engine.begin() as connection:  # as another process's record would, without matching
        connection.execute(
            api_messages.update()
            .where(api_messages.c.id == sent.id)
            .values(status="sent", msgid=9001)
        )
    with db_engine.begin() as connection:
        assert match_pending_receipts(connection, [9001]) == 1
        assert match_pending_receipts(connection) == 0
    with db_engine.connect() as connection:
        stored = get(connection, sent.id)
    assert stored is not None and stored.receipt_status == "delivered"


# -- the views ----------------------------------------------------------------------------------


def _view(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(text(sql)).mappings()]


def test_the_views_show_the_api_rows(db_engine: Engine) -> None:
    """delivery_failures lists the API's failed rows; api_message_stats counts per app and
    Beijing day (T0 is 23:30 there on the 20th, T0 + 1 h is the 21st)."""
    shop = [message(f"s{n}", at=T0 + n * SECOND) for n in range(6)]
    next_day = message("next", at=T0 + timedelta(hours=1))
    other = message("other", app="clinic", kind="customer_service", at=T0)
    one(db_engine, Request(None, [*shop, next_day, other]))
    with db_engine.begin() as connection:
        record(
            connection,
            [
                Result(shop[0].id, "sent", attempts=1, msgid=11),
                Result(shop[1].id, "sent", attempts=1, msgid=12),
                Result(shop[2].id, "sent", attempts=1, msgid=13),
                Result(
                    shop[3].id,
                    "failed",
                    errcode=40037,
                    errmsg="invalid template_id",
                    reason="invalid template_id",
                    attempts=1,
                    first_attempt_at=T0,
                    last_attempt_at=T0,
                ),
                Result(shop[4].id, "unknown", attempts=1, reason="restart"),
                Result(next_day.id, "sent", attempts=1, msgid=14),
                Result(other.id, "sent", attempts=1, msgid=15),
            ],
        )
        apply_callbacks(
            connection,
            [receipt(11, "delivered", T0 + SECOND), receipt(12, "user_block", T0 + SECOND)],
        )
    failures = _view(db_engine, "SELECT * FROM delivery_failures")
    assert failures == [
        {
            "campaign_id": None,
            "campaign_name": "api",
            "openid": "o-1",
            "errcode": 40037,
            "errmsg": "invalid template_id",
            "error_class": None,
            "meaning": lookup(40037).meaning,
            "reason": "invalid template_id",
            "attempts": 1,
            "first_attempt_at": failures[0]["first_attempt_at"],
            "last_attempt_at": failures[0]["last_attempt_at"],
        }
    ]
    stamp = failures[0]["first_attempt_at"]
    assert (stamp if isinstance(stamp, str) else stamp.astimezone(UTC).isoformat(" ")).startswith(
        "2026-11-20 15:30:00"
    )
    stats = _view(db_engine, "SELECT * FROM api_message_stats ORDER BY app, day")
    for row in stats:
        row["day"] = date.fromisoformat(row["day"]) if isinstance(row["day"], str) else row["day"]
        del row["first_created_at"], row["last_created_at"]
    names = ("queued", "sent", "failed", "unknown", "delivered", "receipt_failed")
    zero = dict.fromkeys((*names, "receipts_pending"), 0)
    assert stats == [
        # customer_service messages get no receipts: none pending.
        {"app": "clinic", "day": date(2026, 11, 20), "accepted": 1} | zero | {"sent": 1},
        {"app": "shop", "day": date(2026, 11, 20), "accepted": 6}
        | zero
        | {
            "queued": 1,
            "sent": 3,
            "failed": 1,
            "unknown": 1,
            "delivered": 1,
            "receipt_failed": 1,
            "receipts_pending": 1,
        },
        {"app": "shop", "day": date(2026, 11, 21), "accepted": 1}
        | zero
        | {"sent": 1, "receipts_pending": 1},
    ]
    for row in stats:
        assert all(type(row[name]) is int for name in ("accepted", *zero)), row


# -- the queries of docs/analytics.md, "Messages sent through the push API" --------------------

ANALYTICS_DOC = Path(__file__).resolve().parents[1] / "docs" / "analytics.md"
_FENCE = re.compile(r"^```sql( sqlite| postgresql)?\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def api_doc_queries(dialect: str) -> dict[str, str]:
    """The section's SQL for `dialect`, by the heading above each block."""
    doc = ANALYTICS_DOC.read_text(encoding="utf-8")
    start = doc.index("## Messages sent through the push API")
    section = doc[start : doc.index("\n## ", start + 1)]
    found: dict[str, str] = {}
    for match in _FENCE.finditer(section):
        if match.group(1) and match.group(1).strip() != dialect:
            continue
        heading = re.findall(r"^#+ (.+)$", section[: match.start()], re.MULTILINE)[-1]
        found[heading] = match.group(2).strip()
    return found


def test_the_documented_queries_find_the_api_rows(db_engine: Engine) -> None:
    queries = api_doc_queries(db_engine.dialect.name)
    assert len(queries) == 5, list(queries)
    shipped = message("order-1001-shipped")
    refused = message("order-1002-shipped", openid="o-2")
    one(db_engine, Request(None, [shipped, refused]))
    with db_engine.begin() as connection:
        record(
            connection,
            [
                Result(shipped.id, "sent", attempts=1, msgid=21, sent_at=T0 + SECOND),
                Result(refused.id, "failed", errcode=43101, reason="user refused", attempts=1),
            ],
        )
        apply_callbacks(connection, [receipt(21, "delivered", T0 + 2 * SECOND)])

    def run(heading: str) -> list[dict[str, Any]]:
        with db_engine.connect() as connection:  # as an analyst's client sends it
            return [dict(row) for row in connection.exec_driver_sql(queries[heading]).mappings()]

    [stats] = run("`api_message_stats` — one row per app and Beijing day")
    assert (stats["app"], stats["accepted"], stats["sent"], stats["failed"]) == ("shop", 2, 1, 1)
    assert stats["delivered"] == 1
    [failed] = run("Failed API messages, and why")
    assert (failed["id"], failed["errcode"]) == (refused.id, 43101)
    assert failed["meaning"] == lookup(43101).meaning
    [found] = run("One API message by its idempotency key")
    assert (found["id"], found["status"], found["msgid"]) == (shipped.id, "sent", "21")
    assert found["receipt_status"] == "delivered"
    together = run("Campaigns and API together, per app and Beijing day")
    assert [(r["app"], str(r["day"]), r["campaign_sent"], r["api_sent"]) for r in together] == [
        ("shop", "2026-11-20", 0, 1)
    ]
    assert run("Yesterday's API messages per caller (Beijing time)") == []  # T0 is long ago


# -- the migration ------------------------------------------------------------------------------


def test_the_migration_downgrades_to_0010_and_back(blank_db_url: str) -> None:
    upgrade(blank_db_url)
    engine = make_engine(blank_db_url, poolclass=NullPool)
    try:

        def shape() -> tuple[bool, set[str], str]:
            with engine.connect() as connection:
                inspector = inspect(connection)
                views = set(inspector.get_view_names())
                has_table = "api_messages" in inspector.get_table_names()
                sql = str(connection.execute(text("SELECT * FROM delivery_failures")).keys())
            return has_table, views & {"delivery_failures", "api_message_stats"}, sql

        assert shape()[:2] == (True, {"delivery_failures", "api_message_stats"})
        command.downgrade(alembic_config(blank_db_url), "0010")
        assert current_revision(blank_db_url) == "0010"
        has_table, views, columns = shape()
        assert (has_table, views) == (False, {"delivery_failures"})  # 0004's view again
        assert "campaign_name" in columns
        upgrade(blank_db_url)
        assert shape()[:2] == (True, {"delivery_failures", "api_message_stats"})
        assert current_revision(blank_db_url) == head_revision()
    finally:
        engine.dispose()
