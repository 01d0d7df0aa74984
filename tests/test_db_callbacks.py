"""db/callbacks.py on SQLite and PostgreSQL: receipts onto deliveries, interactions and
(un)subscribes onto recipients, WeChat's retries applied once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, delete, func, inspect, select
from sqlalchemy.pool import NullPool

from db.audience import DEFAULT_AUDIENCE_SQL, stream_audience
from db.callbacks import (
    CallbackCounts,
    CallbackRecord,
    _stamp,
    apply_callbacks,
    match_pending_receipts,
)
from db.engine import make_audience_engine, make_engine
from db.ledger import record_outcomes
from db.migrate import alembic_config, current_revision, upgrade
from db.models import callback_events, campaigns, deliveries, interactions, recipients
from db.outcomes import DeliveryOutcome, DeliveryStatus, SkipReason
from db.types import sqlite_text

APP = "wx0123456789abcdef"
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
BIG = 3662956322040938501  # a real-looking msgid, above 2^53


@pytest.fixture(autouse=True)
def _no_callback_events(db_engine: Engine) -> Iterator[None]:
    """The shared fixture empties the four main tables; this one is ours."""
    with db_engine.begin() as connection:
        connection.execute(delete(callback_events))
    yield


# -- builders -----------------------------------------------------------------------------------


def receipt(msgid: int, status: str, at: datetime, openid: str = "o-r") -> CallbackRecord:
    return CallbackRecord(
        app_id=APP,
        dedupe_key=f"msg:{msgid}:{status}:{at.timestamp():.0f}",
        openid=openid,
        kind="receipt",
        occurred_at=at,
        msg_type="event",
        event="TEMPLATESENDJOBFINISH",
        msgid=msgid,
        receipt_status=status,
    )


def message(openid: str, at: datetime, msg_id: int = 1) -> CallbackRecord:
    return CallbackRecord(
        app_id=APP,
        dedupe_key=f"msg:{msg_id}",
        openid=openid,
        kind="interaction",
        occurred_at=at,
        msg_type="text",
        interaction_kind="message",
    )


def follow(openid: str, at: datetime, *, unfollow: bool = False) -> CallbackRecord:
    event = "unsubscribe" if unfollow else "subscribe"
    return CallbackRecord(
        app_id=APP,
        dedupe_key=f"event:{openid}:{at.timestamp():.0f}:{event}",
        openid=openid,
        kind=event,
        occurred_at=at,
        msg_type="event",
        event=event,
        interaction_kind=None if unfollow else "subscribe",
    )


def apply(engine: Engine, records: list[CallbackRecord]) -> CallbackCounts:
    with engine.begin() as connection:
        return apply_callbacks(connection, records)


def sent_campaign(engine: Engine, campaign_id: str, msgids: dict[str, int | None]) -> None:
    """A campaign whose ledger holds a `sent` row per openid with that msgid."""
    with engine.begin() as connection:
        connection.execute(
            campaigns.insert().values(
                id=campaign_id,
                name=campaign_id,
                app="default",
                kind="template",
                template_id="TPL",
                audience_sql=DEFAULT_AUDIENCE_SQL,
                status="completed",
                parameters={},
                created_at=T0,
            )
        )
        record_outcomes(
            connection,
            campaign_id,
            [
                DeliveryOutcome(
                    openid=openid, status=DeliveryStatus.SENT, msgid=msgid, attempts=1, sent_at=T0
                )
                for openid, msgid in msgids.items()
            ],
        )


def add_recipient(engine: Engine, openid: str, **values: Any) -> None:
    with engine.begin() as connection:
        connection.execute(
            recipients.insert().values(
                app_id=APP, openid=openid, subscribed=True, attributes={}, **values
            )
        )


def receipts_by_openid(connection: Connection, campaign_id: str) -> dict[str, tuple[Any, Any]]:
    query = select(deliveries.c.openid, deliveries.c.receipt_status, deliveries.c.receipt_at).where(
        deliveries.c.campaign_id == campaign_id
    )
    return {openid: (status, at) for openid, status, at in connection.execute(query)}


def recipient(connection: Connection, openid: str) -> Any:
    query = select(recipients).where(recipients.c.app_id == APP, recipients.c.openid == openid)
    return connection.execute(query).one_or_none()


def event_rows(connection: Connection) -> list[Any]:
    return list(connection.execute(select(callback_events).order_by(callback_events.c.id)))


# -- receipts -----------------------------------------------------------------------------------


def test_receipts_land_on_their_deliveries(db_engine: Engine) -> None:
    sent_campaign(db_engine, "c1", {"o1": 101, "o2": 102, "o3": 103, "o4": BIG, "o5": 105})
    counts = apply(
        db_engine,
        [
            receipt(101, "delivered", T0 + MINUTE, "o1"),
            receipt(102, "user_block", T0 + 2 * MINUTE, "o2"),
            receipt(103, "system_failed", T0 + 3 * MINUTE, "o3"),
            receipt(BIG, "delivered", T0 + 4 * MINUTE, "o4"),
            receipt(999, "delivered", T0 + 5 * MINUTE, "o-unknown"),
        ],
    )
    assert counts == CallbackCounts(new=5, receipts_matched=4, receipts_unmatched=1)
    with db_engine.connect() as connection:
        assert receipts_by_openid(connection, "c1") == {
            "o1": ("delivered", T0 + MINUTE),
            "o2": ("user_block", T0 + 2 * MINUTE),
            "o3": ("system_failed", T0 + 3 * MINUTE),
            "o4": ("delivered", T0 + 4 * MINUTE),
            "o5": (None, None),
        }
        events = {row.msgid: row for row in event_rows(connection)}
        assert {msgid: row.matched for msgid, row in events.items()} == {
            101: True,
            102: True,
            103: True,
            BIG: True,
            999: False,
        }
        assert events[BIG].msgid == BIG and events[BIG].kind == "receipt"
        assert events[999].occurred_at == T0 + 5 * MINUTE
        assert events[999].received_at.tzinfo is not None
        # A receipt is no interaction and creates no recipient.
        assert connection.execute(select(func.count()).select_from(recipients)).scalar() == 0
        assert connection.execute(select(func.count()).select_from(interactions)).scalar() == 0


def test_msgids_above_2_53_are_matched_exactly(db_engine: Engine) -> None:
    near = 2**53 + 1  # float(2**53 + 1) == float(2**53 + 2): a float anywhere would collide
    sent_campaign(db_engine, "c1", {"a": near, "b": near + 1, "c": 2**63 - 1})
    counts = apply(
        db_engine,
        [receipt(near, "user_block", T0, "a"), receipt(2**63 - 1, "delivered", T0, "c")],
    )
    assert counts.receipts_matched == 2
    with db_engine.connect() as connection:
        assert receipts_by_openid(connection, "c1") == {
            "a": ("user_block", T0),
            "b": (None, None),
            "c": ("delivered", T0),
        }
        stored = connection.execute(select(callback_events.c.msgid)).scalars().all()
        assert sorted(stored) == [near, 2**63 - 1]


def test_campaign_stats_counts_the_receipts(db_engine: Engine) -> None:
    msgids = {f"o{i}": 200 + i for i in range(6)}
    sent_campaign(db_engine, "c1", msgids)
    statuses = ["delivered", "delivered", "delivered", "user_block", "system_failed"]
    apply(
        db_engine,
        [receipt(200 + i, status, T0 + MINUTE, f"o{i}") for i, status in enumerate(statuses)],
    )
    with db_engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT sent, delivered, blocked, system_failed, receipts_pending, delivery_rate "
            "FROM campaign_stats WHERE campaign_id = 'c1'"
        ).one()
    assert tuple(row) == (6, 3, 1, 1, 1, 0.6)


def test_the_latest_receipt_wins_whatever_the_arrival_order(db_engine: Engine) -> None:
    sent_campaign(db_engine, "c1", {"o1": 301, "o2": 302})
    # Two receipts for one msgid in one batch: the later one wins, given in either order.
    apply(
        db_engine,
        [
            receipt(301, "delivered", T0 + 2 * MINUTE, "o1"),
            receipt(301, "system_failed", T0 + MINUTE, "o1"),
            receipt(302, "delivered", T0 + MINUTE, "o2"),
        ],
    )
    # A later batch: an older receipt changes nothing, a newer one moves the row on.
    counts = apply(
        db_engine,
        [
            receipt(301, "user_block", T0, "o1"),
            receipt(302, "user_block", T0 + 3 * MINUTE, "o2"),
        ],
    )
    assert counts.receipts_matched == 2
    with db_engine.connect() as connection:
        assert receipts_by_openid(connection, "c1") == {
            "o1": ("delivered", T0 + 2 * MINUTE),
            "o2": ("user_block", T0 + 3 * MINUTE),
        }


def test_a_receipt_that_beats_the_ledger_is_matched_later(db_engine: Engine) -> None:
    sent_campaign(db_engine, "c1", {"o1": None})  # campaign exists, msgid not stored yet
    early = apply(db_engine, [receipt(401, "delivered", T0 + MINUTE, "o2")])
    assert (early.receipts_matched, early.receipts_unmatched) == (0, 1)
    with db_engine.begin() as connection:
        assert match_pending_receipts(connection, [401]) == 0  # still no delivery row
        record_outcomes(
            connection,
            "c1",
            [DeliveryOutcome(openid="o2", status=DeliveryStatus.SENT, msgid=401, sent_at=T0)],
        )
        assert match_pending_receipts(connection, [401, 402]) == 1
        assert match_pending_receipts(connection) == 0  # nothing left to sweep
        assert receipts_by_openid(connection, "c1")["o2"] == ("delivered", T0 + MINUTE)
        assert [row.matched for row in event_rows(connection)] == [True]
    # The sweep form finds it too.
    apply(db_engine, [receipt(402, "user_block", T0, "o3")])
    with db_engine.begin() as connection:
        record_outcomes(
            connection,
            "c1",
            [DeliveryOutcome(openid="o3", status=DeliveryStatus.SENT, msgid=402, sent_at=T0)],
        )
        assert match_pending_receipts(connection) == 1
        assert receipts_by_openid(connection, "c1")["o3"] == ("user_block", T0)


# -- retries ------------------------------------------------------------------------------------


def test_retries_are_applied_once_in_a_batch_and_across_batches(db_engine: Engine) -> None:
    sent_campaign(db_engine, "c1", {"o1": 501})
    batch = [
        message("u1", T0, msg_id=1),
        message("u1", T0, msg_id=1),  # WeChat's retry, same batch
        receipt(501, "delivered", T0, "o1"),
        follow("u2", T0),
        follow("u2", T0),
    ]
    first = apply(db_engine, batch)
    assert first == CallbackCounts(
        new=3, duplicates=2, receipts_matched=1, interactions=2, subscribed=1
    )
    again = apply(db_engine, [*batch, message("u1", T0 + MINUTE, msg_id=2)])
    assert again == CallbackCounts(new=1, duplicates=5, interactions=1)
    with db_engine.connect() as connection:
        assert len(event_rows(connection)) == 4
        kinds = connection.execute(
            select(interactions.c.openid, interactions.c.kind, interactions.c.occurred_at).order_by(
                interactions.c.occurred_at, interactions.c.openid
            )
        ).all()
        assert [tuple(k) for k in kinds] == [
            ("u1", "message", T0),
            ("u2", "subscribe", T0),
            ("u1", "message", T0 + MINUTE),
        ]


def test_two_apps_may_share_a_dedupe_key(db_engine: Engine) -> None:
    other = CallbackRecord(
        app_id="wxother",
        dedupe_key="msg:1",
        openid="u1",
        kind="interaction",
        occurred_at=T0,
        msg_type="text",
        interaction_kind="message",
    )
    assert apply(db_engine, [message("u1", T0), other]).new == 2


# -- interactions and subscriptions ------------------------------------------------------------


def test_interactions_move_last_interaction_at_forward_only(db_engine: Engine) -> None:
    add_recipient(db_engine, "u1", last_interaction_at=T0, nickname="Ann")
    counts = apply(db_engine, [message("u1", T0 - HOUR, msg_id=1)])
    assert counts.interactions == 1
    with db_engine.connect() as connection:
        row = recipient(connection, "u1")
        assert row.last_interaction_at == T0 and row.nickname == "Ann"
    apply(db_engine, [message("u1", T0 + HOUR, msg_id=2), message("u1", T0 + MINUTE, msg_id=3)])
    with db_engine.connect() as connection:
        assert recipient(connection, "u1").last_interaction_at == T0 + HOUR
        stored = connection.execute(
            select(interactions.c.occurred_at).order_by(interactions.c.occurred_at)
        ).scalars()
        assert list(stored) == [T0 - HOUR, T0 + MINUTE, T0 + HOUR]


def test_unknown_followers_are_created(db_engine: Engine) -> None:
    counts = apply(
        db_engine,
        [
            follow("new-sub", T0),
            message("new-msg", T0 + MINUTE),
            follow("new-unsub", T0, unfollow=True),
        ],
    )
    assert (counts.subscribed, counts.unsubscribed, counts.interactions) == (1, 1, 2)
    with db_engine.connect() as connection:
        sub, msg, unsub = (recipient(connection, o) for o in ("new-sub", "new-msg", "new-unsub"))
    assert (sub.subscribed, sub.last_interaction_at, sub.attributes) == (True, T0, {})
    assert (msg.subscribed, msg.last_interaction_at) == (True, T0 + MINUTE)
    assert (unsub.subscribed, unsub.last_interaction_at) == (False, None)


def test_subscriptions_follow_event_time(db_engine: Engine) -> None:
    add_recipient(db_engine, "u1", last_interaction_at=T0)
    # Given out of order: applied in occurred_at order, so the unsubscribe is last.
    counts = apply(
        db_engine, [follow("u1", T0 + 2 * MINUTE, unfollow=True), follow("u1", T0 + MINUTE)]
    )
    assert (counts.subscribed, counts.unsubscribed) == (1, 1)
    with db_engine.connect() as connection:
        row = recipient(connection, "u1")
        assert row.subscribed is False and row.last_interaction_at == T0 + MINUTE
    # A later batch with an older subscribe (delivered late) does not undo the unsubscribe.
    apply(db_engine, [follow("u1", T0 + 90 * timedelta(seconds=1))])
    with db_engine.connect() as connection:
        assert recipient(connection, "u1").subscribed is False
    # A newer subscribe does.
    apply(db_engine, [follow("u1", T0 + HOUR)])
    with db_engine.connect() as connection:
        assert recipient(connection, "u1").subscribed is True


def test_the_next_campaign_sees_unsubscribes_and_fresh_interactions(db_engine: Engine) -> None:
    now = T0 + 10 * HOUR
    add_recipient(db_engine, "leaver", last_interaction_at=now - HOUR)
    add_recipient(db_engine, "sleeper", last_interaction_at=now - 100 * HOUR)
    add_recipient(db_engine, "still-asleep", last_interaction_at=now - 100 * HOUR)
    apply(
        db_engine,
        [
            follow("leaver", now - 30 * MINUTE, unfollow=True),
            message("sleeper", now - 47 * HOUR),  # inside the 48 h window again
            follow("stranger", now - 20 * MINUTE, unfollow=True),
        ],
    )
    rows = {
        row.openid: row.skip_reason
        for batch in stream_audience(
            make_audience_engine(),  # WXPUSH_AUDIENCE_DATABASE_URL: tests/fixtures/database.py
            DEFAULT_AUDIENCE_SQL,
            {"app_id": APP},
            ledger=db_engine,
            campaign_id="next",
            window_hours=48,
            now=now,
            batch_size=100,
        )
        for row in batch
    }
    assert rows == {
        "leaver": SkipReason.UNSUBSCRIBED,
        "stranger": SkipReason.UNSUBSCRIBED,
        "sleeper": None,
        "still-asleep": SkipReason.OUTSIDE_WINDOW,
    }


def test_stamps_are_the_canonical_sqlite_text() -> None:
    beijing = timezone(timedelta(hours=8))
    for value in (T0, T0.replace(microsecond=0), datetime(2026, 1, 2, 3, 4, 5, 60, beijing)):
        assert _stamp(value, True) == sqlite_text(value)
    assert _stamp(T0, False) is T0


# -- size and refusals --------------------------------------------------------------------------


def test_a_large_mixed_batch(db_engine: Engine) -> None:
    n = 1200  # more than one multi-row statement on SQLite
    sent_campaign(db_engine, "c1", {f"o{i}": 10_000 + i for i in range(0, n, 2)})
    batch: list[CallbackRecord] = []
    for i in range(n):
        at = T0 + i * timedelta(seconds=1)
        batch.append(receipt(10_000 + i, "delivered", at, f"o{i}"))
        batch.append(message(f"u{i % 300}", at, msg_id=i))
    counts = apply(db_engine, batch + batch[:10])
    assert counts == CallbackCounts(
        new=2 * n, duplicates=10, receipts_matched=n // 2, receipts_unmatched=n // 2, interactions=n
    )
    with db_engine.connect() as connection:
        delivered = connection.execute(
            select(func.count()).where(deliveries.c.receipt_status == "delivered")
        ).scalar()
        assert delivered == n // 2
        assert connection.execute(select(func.count()).select_from(recipients)).scalar() == 300
        last = recipient(connection, "u0").last_interaction_at
        assert last == T0 + (n - 300) * timedelta(seconds=1)


@pytest.mark.parametrize(
    ("change", "message_part"),
    [
        ({"occurred_at": datetime(2026, 11, 26, 8, 0)}, "naive"),
        ({"kind": "click"}, "kind 'click'"),
        ({"receipt_status": "success"}, "receipt_status 'success'"),
        ({"msgid": 2**64}, "64-bit"),
        ({"msgid": 2**63}, "64-bit"),
        ({"openid": "o" * 65}, "openid is 65 characters, over its column's 64"),
        ({"event": "E" * 65}, "event is 65 characters"),
        ({"msg_type": "t" * 33}, "msg_type is 33 characters"),
        ({"dedupe_key": "k" * 201}, "dedupe_key is 201"),
        ({"openid": "o\x00"}, "NUL"),
    ],
)
def test_bad_records_are_refused_before_anything_is_written(
    db_engine: Engine, change: dict[str, Any], message_part: str
) -> None:
    good = receipt(1, "delivered", T0)
    bad = CallbackRecord(**{**{f: getattr(good, f) for f in good.__slots__}, **change})
    with pytest.raises(ValueError, match=message_part), db_engine.begin() as connection:
        apply_callbacks(connection, [message("u1", T0), bad])
    with db_engine.connect() as connection:
        assert event_rows(connection) == []


def test_an_empty_batch_does_nothing(db_engine: Engine) -> None:
    with db_engine.begin() as connection:
        assert apply_callbacks(connection, []) == CallbackCounts()


# -- the migration ------------------------------------------------------------------------------


def _tables_views_indexes(url: str) -> tuple[set[str], set[str], set[str]]:
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            tables = set(inspector.get_table_names())
            indexes = (
                {ix["name"] for ix in inspector.get_indexes("callback_events")}
                if "callback_events" in tables
                else set()
            )
            return tables, set(inspector.get_view_names()), indexes
    finally:
        engine.dispose()


def test_revision_0003_adds_callback_events_and_downgrades(blank_db_url: str) -> None:
    command.upgrade(alembic_config(blank_db_url), "0003")
    assert current_revision(blank_db_url) == "0003"
    tables, views, indexes = _tables_views_indexes(blank_db_url)
    assert "callback_events" in tables and {"campaign_stats", "delivery_failures"} <= views
    assert indexes >= {"ix_callback_events_msgid", "ix_callback_events_app_id_openid_occurred_at"}
    command.downgrade(alembic_config(blank_db_url), "0002")
    tables, views, _ = _tables_views_indexes(blank_db_url)
    assert "callback_events" not in tables and "deliveries" in tables
    assert {"campaign_stats", "delivery_failures"} <= views  # 0003 leaves the views alone
    upgrade(blank_db_url)
    assert "callback_events" in _tables_views_indexes(blank_db_url)[0]
