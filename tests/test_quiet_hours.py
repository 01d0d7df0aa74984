"""Quiet hours (issue 13, point 5): the window's arithmetic on an injected clock, and real
campaign runs (the simulator over HTTP, the Prefect harness, the ledger) whose flows read
the injected clock (`sending.quiet_hours.wall_clock`) instead of waiting for the night.

- started inside the window: nothing is sent, the campaign is paused with the reason, and a
  run of the push-campaign deployment is scheduled at the window's end; run after the
  window, that run completes the campaign, everyone once;
- running into the window: the campaign pauses at its start.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from db.outcomes import CampaignStatus
from sending import quiet_hours
from sending.quiet_hours import QuietGuard, QuietHours, QuietHoursError
from tasks.blocks import WeChatApp
from tests.campaign_helpers import (
    accepted_openids,
    assert_exactly_once,
    ledger,
    params,
    run_deployed,
    run_scheduled,
    scheduled_resumes,
)
from tests.fixtures.database import sqlite_only

SHANGHAI = ZoneInfo("Asia/Shanghai")
NIGHT = QuietHours.parse("22:00-08:00")


db_backend = sqlite_only()  # the send path and Prefect's side: the same on either database


def at(day: int, hour: int, minute: int = 0, zone: ZoneInfo = SHANGHAI) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=zone)


# -- the window ---------------------------------------------------------------------------------


def test_a_window_across_midnight() -> None:
    assert NIGHT.contains(at(28, 22)) and NIGHT.contains(at(28, 23, 59))
    assert NIGHT.contains(at(29, 0)) and NIGHT.contains(at(29, 7, 59))
    assert not NIGHT.contains(at(29, 8)) and not NIGHT.contains(at(28, 21, 59))
    assert NIGHT.ends_after(at(28, 23)) == at(29, 8)
    assert NIGHT.ends_after(at(29, 7)) == at(29, 8)
    assert NIGHT.begins_after(at(28, 12)) == at(28, 22)
    assert NIGHT.begins_after(at(28, 22)) == at(28, 22), "a start is its own next start"


def test_a_window_within_a_day_and_in_another_zone() -> None:
    lunch = QuietHours.parse("12:00-13:30", "Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    assert lunch.contains(at(28, 12, 0, berlin)) and not lunch.contains(at(28, 13, 30, berlin))
    # 19:30 in Shanghai is 12:30 in Berlin (UTC+1 in November).
    assert lunch.contains(at(28, 19, 30))
    assert lunch.ends_after(at(28, 19, 30)) == at(28, 13, 30, berlin)
    assert lunch.begins_after(at(28, 14, 0, berlin)) == at(29, 12, 0, berlin)


def test_a_start_the_clocks_skip_is_read_after_the_jump() -> None:
    """New York skips 02:00-03:00 on 2026-03-08: a window starting 02:30 starts at 03:30."""
    york = ZoneInfo("America/New_York")
    early = QuietHours.parse("02:30-05:00", "America/New_York")
    begins = early.begins_after(datetime(2026, 3, 8, 1, 0, tzinfo=york))
    assert begins.astimezone(UTC) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "zone", "said"),
    [
        ("22-08", "Asia/Shanghai", "not HH:MM-HH:MM"),
        ("24:00-08:00", "Asia/Shanghai", "not HH:MM-HH:MM"),
        ("22:00-22:00", "Asia/Shanghai", "start and end at the same time"),
        ("22:00-08:00", "Mars/Olympus", "not an IANA zone name"),
    ],
)
def test_a_malformed_setting_is_refused_with_its_reason(window: str, zone: str, said: str) -> None:
    with pytest.raises(QuietHoursError, match=said):
        QuietHours.parse(window, zone)
    with pytest.raises(ValidationError, match=said):  # the block refuses it when saved
        WeChatApp(
            app_id="wx0123456789abcdef",
            app_secret="s" * 32,
            quiet_hours=window,
            quiet_hours_zone=zone,
        )


def test_the_guard_compares_a_clock_with_the_start_computed_once() -> None:
    now = [at(28, 21, 59).timestamp()]
    guard = QuietGuard(NIGHT, lambda: now[0])
    assert guard.begins_at == at(28, 22) and guard.ends_at == at(29, 8)
    assert not guard.begun()
    now[0] += 60
    assert guard.begun()
    assert "quiet hours (22:00-08:00 Asia/Shanghai)" in guard.reason()
    assert "until they end at 2026-11-29 08:00 Asia/Shanghai" in guard.reason()


# -- campaigns ---------------------------------------------------------------------------------


class Ticking:
    """A clock that moves `step` seconds each time it is read: the send path reads it once
    per attempt, so the window begins after a known number of sends, whatever the speed."""

    def __init__(self, start: datetime, step: float = 0.0) -> None:
        self._times = itertools.count(start.timestamp(), step) if step else None
        self.start = start.timestamp()

    def __call__(self) -> float:
        return next(self._times) if self._times is not None else self.start


@pytest.fixture
def night_app(audience: Any, make_wechat_app: Any) -> str:
    """A block of the seeded account with quiet hours 22:00-08:00 Shanghai time."""
    return asyncio.run(make_wechat_app(quiet_hours="22:00-08:00")).name


def test_a_campaign_started_inside_waits_for_the_end_then_completes(
    night_app: str, sim: Any, db_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quiet_hours, "wall_clock", Ticking(at(28, 23)))
    cid = f"quiet-night-{uuid.uuid4().hex[:8]}"
    campaign = params(night_app, name="night", campaign_id=cid)

    state, _ = run_deployed(campaign)

    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == CampaignStatus.PAUSED
    assert sim.admin.counters().accepted == 0, "nothing is sent inside the window"
    assert "quiet hours (22:00-08:00 Asia/Shanghai) are on" in result.reason
    assert "It resumes by itself at 2026-11-29 08:00 Asia/Shanghai (00:00 UTC)" in result.reason
    [resume] = scheduled_resumes(cid)
    assert resume.state.state_details.scheduled_time == at(29, 8)
    assert resume.name in result.reason
    # Resumed by hand at 23:30: it waits again, for the same run (one per resume time).
    monkeypatch.setattr(quiet_hours, "wall_clock", Ticking(at(28, 23, 30)))
    again, _ = run_deployed(campaign.model_copy(update={"campaign_id": cid}))
    assert again.result().status == CampaignStatus.PAUSED
    assert [run.id for run in scheduled_resumes(cid)] == [resume.id]

    monkeypatch.setattr(quiet_hours, "wall_clock", Ticking(at(29, 8, 1)))
    finished = run_scheduled(resume)

    assert finished.status == CampaignStatus.COMPLETED_WITH_FAILURES  # the seeded blocked rows
    assert_exactly_once(db_engine, sim, sim.app_id, cid)
    assert scheduled_resumes(cid) == [], "the scheduled run was the one that ran"


def test_a_running_campaign_pauses_when_the_window_begins(
    night_app: str, sim: Any, db_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One second per read, from 21:59:00: the window begins after about 60 attempts.
    monkeypatch.setattr(quiet_hours, "wall_clock", Ticking(at(28, 21, 59), step=1.0))
    cid = f"quiet-evening-{uuid.uuid4().hex[:8]}"
    campaign = params(night_app, name="evening", campaign_id=cid, concurrency=2)

    state, _ = run_deployed(campaign)

    result = state.result()
    assert result.status == CampaignStatus.PAUSED, result.reason
    sent = sum(accepted_openids(sim).values())
    assert 0 < sent <= 60, f"{sent} sent: it sent until the window began, then stopped"
    rows = ledger(db_engine, cid)
    assert sum(row["status"] == "pending" for row in rows.values()) > 0
    assert result.reason.startswith("the account's quiet hours")
    [resume] = scheduled_resumes(cid)
    assert resume.state.state_details.scheduled_time == at(29, 8)
