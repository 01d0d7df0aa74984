"""A run that ends outside the flow body (cancelled in the UI, crashed, stopped by a signal,
failed where the body could not record it) still leaves the campaign row saying so, with the
ledger's counts and a reason, ready to be resumed."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from sqlalchemy import Engine

from db import campaigns
from db.ledger import record_outcomes
from db.outcomes import CampaignStatus, DeliveryOutcome, DeliveryStatus
from flows.campaign import _end_abnormally, push_campaign
from tasks import database
from tasks.flow_runs import CANCELLED_REASON


@pytest.fixture
def running(
    db_url: str, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[campaigns.CampaignRecord]:
    """Campaign `c-hook`, running under flow run `run-1`, with one answer in the ledger."""
    monkeypatch.setenv("WXPUSH_DATABASE_URL", db_url)
    database.dispose_all()
    with db_engine.begin() as conn:
        record = campaigns.create_or_resume(
            conn,
            campaign_id="c-hook",
            name="hook",
            app="default",
            kind="template",
            template_id="t",
            parameters={},
            audience_sql="SELECT openid FROM recipients",
            flow_run_id="run-1",
        )
        record_outcomes(conn, "c-hook", [DeliveryOutcome("o1", DeliveryStatus.SENT, msgid=1)])
    assert record.status is CampaignStatus.RUNNING
    yield record
    database.dispose_all()


def _stored(db_engine: Engine) -> campaigns.CampaignRecord:
    with db_engine.connect() as conn:
        stored = campaigns.get_campaign(conn, "c-hook")
    assert stored is not None
    return stored


def _hooks(kind: str) -> list[object]:
    return {
        "cancel": push_campaign.on_cancellation_hooks,
        "crash": push_campaign.on_crashed_hooks,
        "failure": push_campaign.on_failure_hooks,
    }[kind]


@pytest.mark.parametrize(
    ("kind", "status", "words"),
    [
        ("cancel", CampaignStatus.CANCELLED, CANCELLED_REASON),
        ("crash", CampaignStatus.PAUSED, "wxpush campaign resume c-hook"),
        ("failure", CampaignStatus.FAILED, "wxpush campaign resume c-hook"),
    ],
)
def test_each_hook_closes_the_row_with_a_reason(
    running: campaigns.CampaignRecord,
    db_engine: Engine,
    kind: str,
    status: CampaignStatus,
    words: str,
) -> None:
    hooks = _hooks(kind)
    assert hooks, f"push_campaign has an on-{kind} hook"
    for hook in hooks:
        hook(None, SimpleNamespace(id="no-such-run"), None)  # another run: nothing to do
        hook(None, SimpleNamespace(id="run-1"), None)
    stored = _stored(db_engine)
    assert stored.status is status
    assert words in (stored.status_reason or "")
    assert stored.sent_count == 1 and stored.finished_at is not None


def _paused_by_a_signal(db_engine: Engine) -> None:
    """What the body writes when SIGTERM stops it, before it re-raises the signal."""
    with db_engine.begin() as conn:
        campaigns.set_status(conn, "c-hook", CampaignStatus.PAUSED, "stopped by SIGTERM; resume it")


def test_a_signal_the_body_recorded_keeps_its_reason_through_the_crash(
    running: campaigns.CampaignRecord, db_engine: Engine
) -> None:
    _paused_by_a_signal(db_engine)
    _end_abnormally("pause", "the run crashed")(None, SimpleNamespace(id="run-1"), None)
    stored = _stored(db_engine)
    assert (stored.status, stored.status_reason) == (
        CampaignStatus.PAUSED,
        "stopped by SIGTERM; resume it",
    )


def test_a_cancel_from_the_ui_wins_over_the_signal_that_delivered_it(
    running: campaigns.CampaignRecord, db_engine: Engine
) -> None:
    """Prefect cancels a worker's run with SIGTERM: the body sees a signal, the cancellation
    hook knows it was a cancel."""
    _paused_by_a_signal(db_engine)
    _end_abnormally("cancel", CANCELLED_REASON)(None, SimpleNamespace(id="run-1"), None)
    assert _stored(db_engine).status is CampaignStatus.CANCELLED


def test_a_row_the_body_already_closed_is_left_alone(
    running: campaigns.CampaignRecord, db_engine: Engine
) -> None:
    with db_engine.begin() as conn:
        campaigns.set_status(conn, "c-hook", CampaignStatus.FAILED, "WeChat refused: 40125")
    _end_abnormally("pause", "the run crashed")(None, SimpleNamespace(id="run-1"), None)
    stored = _stored(db_engine)
    assert (stored.status, stored.status_reason) == (
        CampaignStatus.FAILED,
        "WeChat refused: 40125",
    )
