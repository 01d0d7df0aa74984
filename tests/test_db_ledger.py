"""The delivery ledger: one upsert per batch, attempts add up, final rows never downgrade."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text

from db.campaigns import create_or_resume
from db.ledger import (
    errcode_counts,
    failed_rows_sql,
    final_openids,
    reason_counts,
    record_outcomes,
    status_counts,
)
from db.models import deliveries
from db.outcomes import DeliveryOutcome, DeliveryStatus, SkipReason

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
BIG_MSGID = 3662956322040938501


def _start(engine: Engine, campaign_id: str = "camp-1") -> str:
    with engine.begin() as connection:
        create_or_resume(
            connection,
            campaign_id=campaign_id,
            name="ledger test",
            app="default",
            kind="template",
            template_id="T1",
            parameters={"batch_size": 500},
            audience_sql="SELECT openid FROM recipients",
        )
    return campaign_id


def _sent(openid: str, msgid: int, at: datetime = T0, attempts: int = 1) -> DeliveryOutcome:
    return DeliveryOutcome(
        openid=openid,
        status=DeliveryStatus.SENT,
        msgid=msgid,
        client_msg_id=f"cmid-{openid}",
        attempts=attempts,
        first_attempt_at=at,
        last_attempt_at=at,
        sent_at=at,
    )


def _failed(
    openid: str, errcode: int, error_class: str, at: datetime = T0, attempts: int = 1
) -> DeliveryOutcome:
    return DeliveryOutcome(
        openid=openid,
        status=DeliveryStatus.FAILED,
        errcode=errcode,
        errmsg=f"error {errcode}",
        error_class=error_class,
        client_msg_id=f"cmid-{openid}",
        attempts=attempts,
        first_attempt_at=at,
        last_attempt_at=at,
    )


def _pending(openid: str, at: datetime = T0, attempts: int = 1) -> DeliveryOutcome:
    return DeliveryOutcome(
        openid=openid,
        status=DeliveryStatus.PENDING,
        errcode=45009,
        error_class="QUOTA",
        attempts=attempts,
        first_attempt_at=at,
        last_attempt_at=at,
    )


def _rows(engine: Engine, campaign_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        query = select(deliveries).where(deliveries.c.campaign_id == campaign_id)
        return {row.openid: row for row in connection.execute(query)}


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_one_statement_per_batch_of_500(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    batch = [_sent(f"o{i:05d}", BIG_MSGID + i) for i in range(500)]
    with _statements(db_engine) as seen, db_engine.begin() as connection:
        changed = record_outcomes(connection, campaign, batch)
    writes = [s for s in seen if s.lstrip().upper().startswith("INSERT")]
    assert changed == 500
    assert len(writes) == 1 and "ON CONFLICT" in writes[0]
    with db_engine.connect() as connection:
        assert status_counts(connection, campaign)["sent"] == 500


def test_attempts_add_up_and_first_attempt_keeps_the_earliest(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    with db_engine.begin() as connection:
        record_outcomes(connection, campaign, [_pending("a", T0, attempts=2)])
    with db_engine.begin() as connection:
        later = T0 + timedelta(minutes=5)
        record_outcomes(connection, campaign, [_failed("a", -1, "RETRY", later, attempts=3)])
    with db_engine.begin() as connection:
        latest = T0 + timedelta(minutes=9)
        record_outcomes(connection, campaign, [_sent("a", BIG_MSGID, latest, attempts=1)])
    row = _rows(db_engine, campaign)["a"]
    assert row.status == "sent" and row.attempts == 6
    assert row.first_attempt_at == T0
    assert row.last_attempt_at == row.sent_at == T0 + timedelta(minutes=9)
    assert row.msgid == BIG_MSGID and row.client_msg_id == "cmid-a"


def test_a_final_row_is_never_downgraded(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    skipped = DeliveryOutcome(openid="s", status=DeliveryStatus.SKIPPED, reason="unsubscribed")
    invalid = DeliveryOutcome(openid="i", status=DeliveryStatus.INVALID, reason="thing1 > 20")
    with db_engine.begin() as connection:
        record_outcomes(
            connection,
            campaign,
            [_sent("a", BIG_MSGID), skipped, invalid, _failed("f", 43004, "RECIPIENT")],
        )
    late = T0 + timedelta(hours=1)
    with db_engine.begin() as connection:
        changed = record_outcomes(
            connection,
            campaign,
            [
                _pending("a", late),  # a late duplicate answer
                _failed("a", 45009, "QUOTA", late),
                _failed("s", -1, "RETRY", late),
                _sent("i", 1, late),
                _pending("f", late),  # failed → pending would be a downgrade
            ],
        )
    rows = _rows(db_engine, campaign)
    assert changed == 0
    assert (rows["a"].status, rows["a"].msgid, rows["a"].attempts) == ("sent", BIG_MSGID, 1)
    assert rows["a"].last_attempt_at == T0
    assert (rows["s"].status, rows["s"].reason) == ("skipped", "unsubscribed")
    assert rows["i"].status == "invalid" and rows["i"].msgid is None
    assert (rows["f"].status, rows["f"].errcode) == ("failed", 43004)


def test_a_failed_row_takes_the_answer_of_a_retry_round(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    with db_engine.begin() as connection:
        record_outcomes(connection, campaign, [_failed("a", -1, "RETRY")])
    with db_engine.begin() as connection:
        changed = record_outcomes(connection, campaign, [_sent("a", 7, T0 + timedelta(hours=2))])
    row = _rows(db_engine, campaign)["a"]
    assert changed == 1
    assert (row.status, row.msgid, row.attempts, row.first_attempt_at) == ("sent", 7, 2, T0)
    assert row.errcode is None and row.error_class is None  # the last answer is what counts


def test_duplicate_openids_in_one_batch_are_merged(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    with db_engine.begin() as connection:
        changed = record_outcomes(
            connection,
            campaign,
            [_failed("a", -1, "RETRY", attempts=2), _sent("a", 9, T0 + timedelta(seconds=3))],
        )
    row = _rows(db_engine, campaign)["a"]
    assert changed == 1
    assert (row.status, row.msgid, row.attempts, row.first_attempt_at) == ("sent", 9, 3, T0)


def test_final_openids_and_retry_failed(db_engine: Engine) -> None:
    campaign = _start(db_engine)
    outcomes = [
        _sent("sent", 1),
        _failed("retry", -1, "RETRY"),
        _failed("quota", 45009, "QUOTA"),
        _failed("gone", 43004, "RECIPIENT"),
        _pending("pending"),
        DeliveryOutcome(openid="skip", status=DeliveryStatus.SKIPPED, reason="outside_window"),
    ]
    with db_engine.begin() as connection:
        record_outcomes(connection, campaign, outcomes)
    asked = ["sent", "retry", "quota", "gone", "pending", "skip", "new"]
    with db_engine.connect() as connection:
        plain = final_openids(connection, campaign, asked)
        retrying = final_openids(connection, campaign, asked, retry_failed=True)
        other = final_openids(connection, "another-campaign", asked)
    assert plain == {"sent", "retry", "quota", "gone", "skip"}
    assert retrying == {"sent", "gone", "skip"}
    assert other == set()


def test_counts_and_the_failed_rows_sql(db_engine: Engine) -> None:
    campaign = _start(db_engine, "q1")
    outcomes = [_sent(f"s{i}", i) for i in range(3)]
    outcomes += [_failed(f"r{i}", 43004, "RECIPIENT") for i in range(4)]
    outcomes += [_failed("m1", -1, "RETRY")]
    outcomes += [
        DeliveryOutcome(openid="k1", status=DeliveryStatus.SKIPPED, reason=SkipReason.UNSUBSCRIBED)
    ]
    with db_engine.begin() as connection:
        record_outcomes(connection, campaign, outcomes)
    with db_engine.connect() as connection:
        counts = status_counts(connection, campaign)
        codes = errcode_counts(connection, campaign)
        reasons = reason_counts(connection, campaign, DeliveryStatus.SKIPPED)
        failed = connection.execute(text(failed_rows_sql(campaign))).all()
    assert counts == {
        "pending": 0,
        "sent": 3,
        "failed": 5,
        "skipped": 1,
        "invalid": 0,
        "unknown": 0,
    }
    assert codes == [(43004, "RECIPIENT", 4), (-1, "RETRY", 1)]
    assert reasons == [("unsubscribed", 1)]
    assert [row.openid for row in failed] == ["m1", "r0", "r1", "r2", "r3"]
    assert "campaign_id = 'x''y'" in failed_rows_sql("x'y")


def test_outcomes_need_an_existing_campaign(db_engine: Engine) -> None:
    with pytest.raises(Exception, match=r"(?i)foreign key"), db_engine.begin() as connection:
        record_outcomes(connection, "no-such-campaign", [_sent("a", 1)])
