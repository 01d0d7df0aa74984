"""Never a blind re-send (issue 11): attempts recorded before the send, rows whose answer
was lost judged against WeChat's dedupe window, `unknown` rows left alone until the operator
asks. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text

from db.campaigns import create_or_resume
from db.ledger import (
    final_openids,
    record_attempts,
    record_outcomes,
    reopen_unknown,
    settle_unanswered,
    status_counts,
    unknown_rows_sql,
)
from db.models import deliveries
from db.outcomes import (
    DEDUPE_WINDOW,
    RESEND_SAFE_FOR,
    Attempt,
    DeliveryOutcome,
    DeliveryStatus,
    PendingReason,
    UnknownReason,
)

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _start(engine: Engine, campaign_id: str = "camp-a") -> str:
    with engine.begin() as connection:
        create_or_resume(
            connection,
            campaign_id=campaign_id,
            name="attempts test",
            app="default",
            kind="template",
            template_id="T1",
            parameters={},
            audience_sql="SELECT openid FROM recipients",
        )
    return campaign_id


def _attempt(openid: str, at: datetime = T0, cmid: str | None = "same") -> Attempt:
    return Attempt(openid, None if cmid is None else f"cmid-{openid}", at)


def _mark(engine: Engine, campaign_id: str, attempts: list[Attempt], **kw: Any) -> Any:
    with engine.begin() as connection:
        return record_attempts(connection, campaign_id, attempts, **kw)


def _answer(engine: Engine, campaign_id: str, outcomes: list[DeliveryOutcome]) -> None:
    with engine.begin() as connection:
        record_outcomes(connection, campaign_id, outcomes)


def _rows(engine: Engine, campaign_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        query = select(deliveries).where(deliveries.c.campaign_id == campaign_id)
        return {row.openid: row for row in connection.execute(query)}


def _sent(openid: str, at: datetime = T0) -> DeliveryOutcome:
    return DeliveryOutcome(
        openid,
        DeliveryStatus.SENT,
        msgid=1000 + len(openid),
        client_msg_id=f"cmid-{openid}",
        attempts=1,
        first_attempt_at=at,
        last_attempt_at=at,
        sent_at=at,
    )


def _failed(openid: str, errcode: int, error_class: str) -> DeliveryOutcome:
    return DeliveryOutcome(
        openid,
        DeliveryStatus.FAILED,
        errcode=errcode,
        error_class=error_class,
        attempts=1,
        first_attempt_at=T0,
        last_attempt_at=T0,
    )


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()).upper())

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_the_window_is_wechats_ten_minutes_less_a_margin() -> None:
    assert DEDUPE_WINDOW.total_seconds() == 600  # WeChat: one message per client_msg_id
    assert timedelta(0) < RESEND_SAFE_FOR < DEDUPE_WINDOW


# -- record_attempts ----------------------------------------------------------------------------


def test_an_attempt_is_on_record_before_the_answer_then_the_answer_replaces_it(
    db_engine: Engine,
) -> None:
    campaign = _start(db_engine)
    done = _mark(db_engine, campaign, [_attempt("a"), _attempt("b", cmid=None)])
    assert done.marked == {"a", "b"} and done.unknown == frozenset()
    rows = _rows(db_engine, campaign)
    assert (rows["a"].status, rows["a"].reason) == ("pending", PendingReason.IN_FLIGHT)
    assert (rows["a"].client_msg_id, rows["a"].last_attempt_at) == ("cmid-a", T0)
    assert rows["a"].attempts == 0 and rows["a"].first_attempt_at is None
    assert rows["b"].client_msg_id is None
    _answer(db_engine, campaign, [_sent("a", T0 + MINUTE)])
    row = _rows(db_engine, campaign)["a"]
    assert (row.status, row.reason, row.attempts) == ("sent", None, 1)
    assert row.first_attempt_at == row.last_attempt_at == T0 + MINUTE


def test_a_new_campaigns_batch_costs_one_keyed_read_and_one_write(db_engine: Engine) -> None:
    """PostgreSQL: one upsert that judges in its ON CONFLICT clause (the unique index is its
    arbiter: no plan to choose, whatever the statistics); SQLite: a keyed read, then one write."""
    campaign = _start(db_engine)
    batch = [_attempt(f"o{i:04d}") for i in range(500)]
    with _statements(db_engine) as seen:
        done = _mark(db_engine, campaign, batch)
    work = [s for s in seen if s.startswith(("SELECT", "INSERT", "UPDATE"))]
    assert len(done.marked) == 500
    if db_engine.dialect.name == "postgresql":
        assert len(work) == 1, work
        assert work[0].startswith("INSERT") and "ON CONFLICT" in work[0]
        assert "RETURNING OPENID" in work[0]
        return
    assert len(work) == 2, work
    read, write = work
    assert read.startswith("SELECT") and "DELIVERIES.OPENID IN" in read
    assert "DELIVERIES.CAMPAIGN_ID =" in read  # keyed by (campaign_id, openid)
    assert write.startswith("INSERT") and "ON CONFLICT" in write
    with db_engine.connect() as connection:
        assert status_counts(connection, campaign)["pending"] == 500


def test_a_final_row_is_never_marked(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    _answer(
        db_engine,
        campaign,
        [
            _sent("sent"),
            DeliveryOutcome("skip", DeliveryStatus.SKIPPED, reason="unsubscribed"),
            DeliveryOutcome("bad", DeliveryStatus.INVALID, reason="thing1: too long"),
            _failed("gone", 43004, "RECIPIENT"),
            _failed("busy", -1, "RETRY"),
            _failed("quota", 45009, "QUOTA"),
        ],
    )
    _mark(db_engine, campaign, [_attempt("doubt")])
    with db_engine.begin() as connection:
        settle_unanswered(connection, campaign, now=T0 + DEDUPE_WINDOW)
    before = _rows(db_engine, campaign)
    asked = ["sent", "skip", "bad", "gone", "busy", "quota", "doubt"]
    later = T0 + 2 * DEDUPE_WINDOW
    plain = _mark(db_engine, campaign, [_attempt(o, later) for o in asked])
    assert plain.marked == frozenset() and plain.unknown == frozenset()
    assert _rows(db_engine, campaign) == before
    retrying = _mark(db_engine, campaign, [_attempt(o, later) for o in asked], retry_failed=True)
    assert retrying.marked == {"busy", "quota"}
    rows = _rows(db_engine, campaign)
    assert {o: rows[o].status for o in asked} == {
        "sent": "sent",
        "skip": "skipped",
        "bad": "invalid",
        "gone": "failed",
        "busy": "pending",
        "quota": "pending",
        "doubt": "unknown",
    }
    assert rows["busy"].reason == PendingReason.IN_FLIGHT and rows["busy"].last_attempt_at == later


def test_inside_the_window_a_row_in_flight_is_sent_again_from_its_first_stamp(
    db_engine: Engine,
) -> None:
    """A re-send inside the window is marked (WeChat drops the repeat), and the window keeps
    running from the first unanswered attempt: repeating it does not extend it."""
    campaign = _start(db_engine)
    _mark(db_engine, campaign, [_attempt("a", T0)])
    again = _mark(db_engine, campaign, [_attempt("a", T0 + RESEND_SAFE_FOR)])
    assert again.marked == {"a"}
    assert _rows(db_engine, campaign)["a"].last_attempt_at == T0
    late = _mark(db_engine, campaign, [_attempt("a", T0 + RESEND_SAFE_FOR + timedelta(seconds=1))])
    assert late.marked == frozenset() and late.unknown == {"a"}
    row = _rows(db_engine, campaign)["a"]
    assert (row.status, row.reason) == ("unknown", UnknownReason.NO_ANSWER)


def test_without_a_client_msg_id_no_re_send_is_safe(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    _mark(db_engine, campaign, [_attempt("cs", T0, cmid=None)])
    again = _mark(db_engine, campaign, [_attempt("cs", T0 + timedelta(seconds=1), cmid=None)])
    assert again.unknown == {"cs"} and again.marked == frozenset()


def test_an_answered_pending_row_is_marked_with_a_fresh_stamp(db_engine: Engine) -> None:
    """A quota pause answered the row (not sent): a later attempt is a new one, however old
    the earlier answer."""
    campaign = _start(db_engine)
    quota = DeliveryOutcome(
        "q",
        DeliveryStatus.PENDING,
        reason="errcode 45009: resume after midnight",
        errcode=45009,
        error_class="QUOTA",
        attempts=1,
        first_attempt_at=T0,
        last_attempt_at=T0,
    )
    _answer(db_engine, campaign, [quota])
    tomorrow = T0 + timedelta(days=1)
    done = _mark(db_engine, campaign, [_attempt("q", tomorrow)])
    assert done.marked == {"q"}
    row = _rows(db_engine, campaign)["q"]
    assert (row.reason, row.last_attempt_at, row.first_attempt_at) == (
        PendingReason.IN_FLIGHT,
        tomorrow,
        T0,
    )


def test_a_stop_before_the_send_gives_the_row_back(db_engine: Engine) -> None:
    """Marked, then not sent (the campaign stopped first): a pending outcome with reason
    not_attempted makes it an ordinary pending row, sent by a resume at any time."""
    campaign = _start(db_engine)
    _mark(db_engine, campaign, [_attempt("a")])
    released = DeliveryOutcome("a", DeliveryStatus.PENDING, reason=PendingReason.NOT_ATTEMPTED)
    _answer(db_engine, campaign, [released])
    with db_engine.begin() as connection:
        assert settle_unanswered(connection, campaign, now=T0 + timedelta(days=1)) == 0
    assert _mark(db_engine, campaign, [_attempt("a", T0 + timedelta(days=1))]).marked == {"a"}


def test_naive_attempt_times_are_refused(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    with pytest.raises(ValueError, match="naive"):
        _mark(db_engine, campaign, [Attempt("a", "c", datetime(2026, 1, 1))])


# -- settle_unanswered, reopen_unknown ----------------------------------------------------------


def test_a_resume_settles_what_the_window_no_longer_covers(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    other = _start(db_engine, "camp-b")
    now = T0 + timedelta(hours=1)
    _mark(
        db_engine,
        campaign,
        [
            _attempt("old", now - DEDUPE_WINDOW - MINUTE),
            _attempt("edge", now - RESEND_SAFE_FOR - timedelta(seconds=1)),
            _attempt("young", now - MINUTE),
            _attempt("no-dedupe", now - timedelta(seconds=5), cmid=None),
        ],
    )
    _mark(db_engine, other, [_attempt("old", now - DEDUPE_WINDOW - MINUTE)])
    quota = DeliveryOutcome("q", DeliveryStatus.PENDING, reason="quota", last_attempt_at=T0)
    _answer(db_engine, campaign, [quota])
    with db_engine.begin() as connection:
        settled = settle_unanswered(connection, campaign, now=now)
    assert settled == 3
    rows = _rows(db_engine, campaign)
    assert {o: (r.status, r.reason) for o, r in rows.items()} == {
        "old": ("unknown", "no_answer"),
        "edge": ("unknown", "no_answer"),
        "no-dedupe": ("unknown", "no_answer"),
        "young": ("pending", "in_flight"),
        "q": ("pending", "quota"),
    }
    assert rows["old"].last_attempt_at == now - DEDUPE_WINDOW - MINUTE  # when it was sent
    assert _rows(db_engine, other)["old"].status == "pending"  # another campaign's row
    with db_engine.connect() as connection:
        assert status_counts(connection, campaign)["unknown"] == 3
        listed = connection.execute(text(unknown_rows_sql(campaign))).all()
        final = final_openids(connection, campaign, list(rows), retry_failed=True)
    assert [row.openid for row in listed] == ["old", "edge", "no-dedupe"]  # oldest first
    assert listed[0].client_msg_id == "cmid-old"
    assert final == {"old", "edge", "no-dedupe"}  # a resume leaves them alone
    assert "campaign_id = 'x''y'" in unknown_rows_sql("x'y")


def test_settle_uses_the_clock_by_default(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    now = datetime.now(UTC)
    _mark(db_engine, campaign, [_attempt("old", now - DEDUPE_WINDOW), _attempt("new", now)])
    with db_engine.begin() as connection:
        assert settle_unanswered(connection, campaign) == 1
    assert _rows(db_engine, campaign)["new"].status == "pending"


def test_the_operator_re_sends_unknown_rows_explicitly(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    _mark(db_engine, campaign, [_attempt("a"), _attempt("b")])
    _answer(db_engine, campaign, [_sent("b")])
    with db_engine.begin() as connection:
        settle_unanswered(connection, campaign, now=T0 + DEDUPE_WINDOW)
    later = T0 + timedelta(hours=2)
    assert _mark(db_engine, campaign, [_attempt("a", later)]).marked == frozenset()
    with db_engine.begin() as connection:
        assert reopen_unknown(connection, campaign) == 1
    row = _rows(db_engine, campaign)["a"]
    assert (row.status, row.reason) == ("pending", PendingReason.RESEND_UNKNOWN)
    with db_engine.connect() as connection:
        assert final_openids(connection, campaign, ["a", "b"]) == {"b"}
    assert _mark(db_engine, campaign, [_attempt("a", later)]).marked == {"a"}
    assert _rows(db_engine, campaign)["a"].last_attempt_at == later  # a new window


def test_an_unknown_row_takes_a_real_answer_but_never_pending(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    _mark(db_engine, campaign, [_attempt("a"), _attempt("b")])
    with db_engine.begin() as connection:
        settle_unanswered(connection, campaign, now=T0 + DEDUPE_WINDOW)
    late = DeliveryOutcome("b", DeliveryStatus.PENDING, reason="stopped", attempts=1)
    with db_engine.begin() as connection:
        changed = record_outcomes(connection, campaign, [_sent("a"), late])
    rows = _rows(db_engine, campaign)
    assert changed == 1
    assert rows["a"].status == "sent" and rows["b"].status == "unknown"
