"""Campaign rows: create or resume, and the one function that moves `status`."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.campaigns import (
    CampaignMismatch,
    CampaignNotFound,
    IllegalTransition,
    create_or_resume,
    end_if_running,
    find_by_name,
    find_campaign,
    get_campaign,
    latest_campaigns,
    set_status,
)
from db.ledger import record_outcomes
from db.outcomes import CampaignStatus as S
from db.outcomes import DeliveryOutcome, DeliveryStatus


def _start(connection: Any, campaign_id: str | None = None, **changes: Any) -> Any:
    values: dict[str, Any] = {
        "campaign_id": campaign_id,
        "name": "双十一预热",
        "app": "default",
        "kind": "template",
        "template_id": "T1",
        "parameters": {"batch_size": 500, "data": {"thing1": "{nickname}"}},
        "audience_sql": "SELECT openid FROM recipients",
        "flow_run_id": "run-1",
        "deployment": "push-campaign/default",
        "started_by": "ops@example.com",
    }
    return create_or_resume(connection, **(values | changes))


def test_create_then_resume_keeps_the_row(db_engine: Engine) -> None:
    with db_engine.begin() as connection:
        created = _start(connection)
    assert created.status == S.RUNNING and not created.resumed
    assert created.run_count == 1 and created.started_at is not None
    assert len(created.id) == 36  # a UUID
    with db_engine.begin() as connection:
        set_status(connection, created.id, S.PAUSED, "quota reached (45009)", counts={"sent": 7})
    with db_engine.begin() as connection:
        resumed = _start(connection, created.id, flow_run_id="run-2", parameters={"x": 1})
    assert resumed.resumed and resumed.previous_status == S.PAUSED
    assert (resumed.id, resumed.status, resumed.run_count) == (created.id, S.RUNNING, 2)
    assert resumed.flow_run_id == "run-2" and resumed.parameters == {"x": 1}
    assert resumed.started_at == created.started_at and resumed.finished_at is None
    assert resumed.status_reason is None and resumed.sent_count == 7


def test_a_caller_given_id_is_created_then_resumed(db_engine: Engine) -> None:
    with db_engine.begin() as connection:
        first = _start(connection, "digest-2026-11-26")
        second = _start(connection, "digest-2026-11-26")
    assert first.id == second.id == "digest-2026-11-26"
    assert not first.resumed and second.resumed and second.run_count == 2
    with pytest.raises(ValueError, match="must be 1-64"), db_engine.begin() as connection:
        _start(connection, "no spaces please")


def test_resume_refuses_a_different_message(db_engine: Engine) -> None:
    with db_engine.begin() as connection:
        created = _start(connection, "c1")
    mismatch = pytest.raises(CampaignMismatch, match="template_id='T1'")
    with mismatch, db_engine.begin() as connection:
        _start(connection, created.id, template_id="T2")
    with db_engine.connect() as connection:
        row = get_campaign(connection, "c1")
    assert row is not None and row.run_count == 1 and row.template_id == "T1"


def test_transitions_are_checked(db_engine: Engine) -> None:
    with db_engine.begin() as connection:
        created = _start(connection, "c1")
        running = set_status(connection, "c1", S.RUNNING, counts={"audience": 10})
        done = set_status(connection, "c1", S.COMPLETED, counts={"sent": 10, "failed": 0})
    assert running.audience_count == 10
    assert done.status == S.COMPLETED and done.finished_at is not None
    assert done.counts == {**dict.fromkeys(done.counts, 0), "audience": 10, "sent": 10}
    assert created.finished_at is None
    for illegal in (S.RUNNING, S.PAUSED, S.FAILED, S.CREATED):
        with pytest.raises(IllegalTransition, match="is completed"), db_engine.begin() as conn:
            set_status(conn, "c1", illegal)
    with db_engine.begin() as connection:
        again = set_status(connection, "c1", S.COMPLETED, counts={"sent": 11})
        assert again.finished_at == done.finished_at and again.sent_count == 11
        resumed = set_status(connection, "c1", S.RUNNING, resume=True)
        assert resumed.status == S.RUNNING and resumed.finished_at is None
    with pytest.raises(ValueError, match="unknown count"), db_engine.begin() as connection:
        set_status(connection, "c1", S.RUNNING, counts={"sends": 1})
    with pytest.raises(CampaignNotFound), db_engine.begin() as connection:
        set_status(connection, "nope", S.RUNNING)


def test_parameters_never_hold_a_secret(db_engine: Engine) -> None:
    refused = pytest.raises(ValueError, match="app_secret looks like a secret")
    with refused, db_engine.begin() as connection:
        _start(connection, parameters={"app": {"app_secret": "x"}})


def test_find_by_id_or_name_with_a_session(db_engine: Engine) -> None:
    with Session(db_engine) as session, session.begin():
        older = _start(session, "old", name="weekly")
        newer = _start(session, "new", name="weekly")
    with Session(db_engine) as session:
        assert [c.id for c in find_by_name(session, "weekly")] in (
            [newer.id, older.id],
            [older.id, newer.id],  # same created_at to the microsecond is possible
        )
        found = find_campaign(session, "old")
        assert found is not None and found.id == "old"
        by_name = find_campaign(session, "weekly")
        assert by_name is not None and by_name.name == "weekly"
        assert find_campaign(session, "missing") is None


def test_end_if_running_closes_only_a_running_campaign_of_that_run(db_engine: Engine) -> None:
    with db_engine.begin() as connection:
        record = _start(connection, "c-end", flow_run_id="run-9")
        record_outcomes(
            connection,
            "c-end",
            [
                DeliveryOutcome("o1", DeliveryStatus.SENT, msgid=1),
                DeliveryOutcome("o2", DeliveryStatus.PENDING, attempts=1),
            ],
        )
        assert end_if_running(connection, "other-run", S.CANCELLED, "x") is None
        ended = end_if_running(connection, "run-9", S.CANCELLED, "stopped from the UI")
        assert end_if_running(connection, "run-9", S.FAILED, "late crash hook") is None
    assert record.status == S.RUNNING
    assert ended is not None and ended.status == S.CANCELLED
    assert ended.status_reason == "stopped from the UI"
    assert (ended.sent_count, ended.pending_count) == (1, 1)
    with db_engine.connect() as connection:
        stored = get_campaign(connection, "c-end")
    assert stored is not None and stored.status == S.CANCELLED and stored.finished_at is not None


def test_latest_campaigns_are_newest_first(db_engine: Engine) -> None:
    with db_engine.begin() as connection:
        for name in ("first", "second", "third"):
            _start(connection, name=name)
        names = [r.name for r in latest_campaigns(connection, 2)]
    assert names == ["third", "second"]
