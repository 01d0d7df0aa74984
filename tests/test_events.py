"""The alerts' words and which event each ending emits (tasks/events.py), without a server;
tests/test_alerts.py sends them through real automations to the simulator's robot."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import prefect.events
import pytest
from prefect.client.schemas.objects import StateType

from tasks import events
from tasks.account_limits import _crossed
from tasks.events import CampaignFacts, WxpushEvent, campaign_crashed, campaign_ended
from tasks.token_watch import _worth_telling, failures_in_a_row


def _facts(status: str, counts: dict[str, int], cause: str | None = None) -> CampaignFacts:
    return CampaignFacts(
        campaign_id="c-1",
        name="spring sale",
        app="shop",
        app_id="wx0123456789abcdef",
        status=status,
        reason="the reason",
        counts=counts,
        cause=cause,
    )


@pytest.mark.parametrize(
    ("status", "counts", "event"),
    [
        ("paused", {"sent": 5, "pending": 5}, WxpushEvent.CAMPAIGN_PAUSED),
        ("failed", {"failed": 1}, WxpushEvent.CAMPAIGN_FAILED),
        ("completed_with_failures", {"sent": 80, "failed": 20}, WxpushEvent.CAMPAIGN_FAILURES),
        ("completed_with_failures", {"sent": 95, "failed": 5}, WxpushEvent.CAMPAIGN_COMPLETED),
        ("completed", {"sent": 100}, WxpushEvent.CAMPAIGN_COMPLETED),
    ],
)
def test_each_ending_emits_its_event(
    status: str, counts: dict[str, int], event: WxpushEvent
) -> None:
    alert = campaign_ended(_facts(status, counts), failure_alert_share=0.1)
    assert alert.event == event
    assert alert.resource["prefect.resource.id"] == "wxpush.campaign.c-1"
    assert alert.related == [
        {
            "prefect.resource.id": "wxpush.account.wx0123456789abcdef",
            "prefect.resource.name": "shop",
            "prefect.resource.role": "account",
        }
    ]


def test_a_pause_alert_names_campaign_account_reason_figures_and_what_to_do() -> None:
    alert = campaign_ended(_facts("paused", {"sent": 1200, "pending": 30}, cause="quota"))
    text = alert.message
    assert '"spring sale"' in text and "c-1" in text
    assert "shop (wx0123456789abcdef)" in text
    assert "Reason: the reason" in text
    assert "1,200 sent, 30 pending" in text
    assert "midnight, Beijing time" in text and "wxpush campaign resume c-1" in text
    assert alert.facts["cause"] == "quota"
    assert alert.resource["wxpush.cause"] == "quota"


def test_a_crash_alert_says_the_ledger_keeps_every_answer() -> None:
    alert = campaign_crashed(_facts("paused", {"sent": 3}))
    assert alert.event == WxpushEvent.CAMPAIGN_CRASHED
    assert "crashed" in alert.message and "never twice" in alert.message


def test_a_long_message_is_cut_below_the_robots_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: sent.append(kw))
    alert = campaign_ended(_facts("failed", {}))
    long = events.Alert(alert.event, alert.resource, [], "s", "字" * 3000, {})
    assert long.emit()
    message = sent[0]["payload"]["message"]
    assert len(message.encode()) <= events.MAX_MESSAGE_BYTES and message.endswith("…")


def test_emitting_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: Any) -> None:
        raise ConnectionError("no server")

    monkeypatch.setattr(prefect.events, "emit_event", broken)
    assert campaign_ended(_facts("failed", {})).emit() is False


def test_the_quota_line_is_crossed_once() -> None:
    assert _crossed(790, 810, 1000)
    assert _crossed(0, 800, 1000)
    assert not _crossed(800, 850, 1000), "already above: no second alert"
    assert not _crossed(100, 799, 1000)


def test_failures_in_a_row_stop_at_the_first_success() -> None:
    failed, done = StateType.FAILED, StateType.COMPLETED
    assert failures_in_a_row([failed, StateType.CRASHED, done, failed]) == 2
    assert failures_in_a_row([done, failed]) == 0
    assert [n for n in range(1, 14) if _worth_telling(n)] == [2, 6, 12]


def test_a_quota_alert_reads_as_the_operator_would_say_it() -> None:
    alert = events.quota_crossed("wx0123456789abcdef", "shop", 80_000, 100_000, date(2026, 11, 29))
    assert alert.event == WxpushEvent.QUOTA_CROSSED
    assert "80,000 of 100,000 template messages on 2026-11-29 (Beijing)" in alert.message
    assert alert.resource == {
        "prefect.resource.id": "wxpush.account.wx0123456789abcdef",
        "prefect.resource.name": "shop",
    }


def test_a_pause_that_resumes_by_itself_says_nothing_is_to_be_done() -> None:
    facts = _facts("paused", {"sent": 10, "pending": 5}, cause="quota")
    at = datetime(2026, 11, 29, 16, 5, tzinfo=UTC)
    alert = campaign_ended(replace(facts, resumes_at=at))
    assert "Nothing: a scheduled run resumes it at 2026-11-30 00:05 Beijing time" in (alert.message)
    assert alert.facts["resumes_at"] == at.isoformat()
