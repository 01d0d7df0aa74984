"""The circuit breaker in a real campaign: the simulator's answers turn to 100 % errcode -1
mid-campaign. The campaign stops sending within the breaker's window, sends only probes
while WeChat fails, and resumes by itself when it answers again, every recipient sent
exactly once; left failing past the limit, it pauses with the breaker's cause and reason.
Real Prefect server, real simulator over HTTP; SQLite, and PostgreSQL when configured.

The breaker's own moments (it opened, a probe went) are observed by wrapping its methods,
so the test switches the faults on a condition (accepted messages, probes seen), never
after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine

from db import campaigns
from db.outcomes import CampaignStatus
from flows.campaign import push_campaign
from sending.breaker import Breaker
from sending.sender import Stop, StopCause, StopSignal
from tests.campaign_helpers import assert_exactly_once, ledger, params
from tests.fixtures.database import sqlite_only
from tests.waiting import wait_until

pytestmark = pytest.mark.harness


db_backend = sqlite_only()  # the send path and Prefect's side: the same on either database


WINDOW = 10
CONCURRENCY = 4
START_OUTAGE_AT = 60  # accepted messages


@dataclass
class Seen:
    """What the run's breaker and stop signal did, as they did it (thread-safe reads)."""

    opened: int = 0
    probes: int = 0
    stops: list[Stop] = field(default_factory=list)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Seen]:
    record = Seen()
    opened: Callable[[Breaker], None] = Breaker._open
    turn: Callable[[Breaker], float | None] = Breaker.turn
    stop_set: Callable[..., Stop] = StopSignal.set

    def spy_open(self: Breaker) -> None:
        record.opened += 1
        opened(self)

    def spy_turn(self: Breaker) -> float | None:
        wait = turn(self)
        if wait is None:
            record.probes += 1
        return wait

    def spy_set(self: StopSignal, *args: Any, **kwargs: Any) -> Stop:
        stop = stop_set(self, *args, **kwargs)
        record.stops.append(stop)
        return stop

    monkeypatch.setattr(Breaker, "_open", spy_open)
    monkeypatch.setattr(Breaker, "turn", spy_turn)
    monkeypatch.setattr(StopSignal, "set", spy_set)
    yield record


def _outage(sim: Any, *, until: Callable[[], bool] | None) -> threading.Thread:
    """Once the campaign is sending, every send is answered -1; back to normal once `until`
    holds (None: never)."""

    def run() -> None:
        wait_until(
            lambda: sim.admin.counters().accepted >= START_OUTAGE_AT,
            "the campaign was sending",
            timeout=120,
            poll=0.02,
        )
        sim.admin.set_faults(minus_one_rate=1.0)
        if until is not None:
            wait_until(until, "the breaker held sending and probed", timeout=120, poll=0.02)
            sim.admin.set_faults()  # WeChat answers again

    thread = threading.Thread(target=run, name="outage", daemon=True)
    thread.start()
    return thread


def _campaign(audience: Any, campaign_id: str, **overrides: Any) -> Any:
    p = params(
        audience.name,
        campaign_id=campaign_id,
        concurrency=CONCURRENCY,
        rate_per_second=60,
        breaker_window=WINDOW,
        breaker_share=0.5,
        **overrides,
    )
    return asyncio.run(push_campaign(p, return_state=True))


def test_an_outage_holds_sending_probes_and_resumes_exactly_once(
    audience: Any, db_engine: Engine, sim: Any, seen: Seen
) -> None:
    outage = _outage(sim, until=lambda: seen.opened >= 1 and seen.probes >= 2)
    state = _campaign(audience, "breaker-resumes", breaker_give_up_minutes=2)
    outage.join(timeout=10)

    assert state.is_completed(), state.message
    result = state.result()
    # Blocked followers answer 43019/48002 (their rows fail, as expected): no one else does.
    assert result.status == CampaignStatus.COMPLETED_WITH_FAILURES, result.reason
    assert seen.opened == 1, "the breaker opened once"
    failed_requests = sim.admin.counters().faults["minus_one"]
    assert failed_requests > 0, "the outage happened mid-campaign"
    # It stopped within the window: besides its probes, it sent less than one window into
    # the outage (the failures that opened it and the sends already in flight).
    assert failed_requests < WINDOW + seen.probes, (failed_requests, seen.probes)
    assert_exactly_once(db_engine, sim, sim.app_id, "breaker-resumes")
    rows = ledger(db_engine, "breaker-resumes").values()
    assert not [r for r in rows if r["error_class"] == "RETRY" and r["status"] != "sent"]
    assert not [s for s in seen.stops if s.cause is StopCause.BREAKER]


def test_an_outage_past_the_limit_pauses_with_the_breaker_cause(
    audience: Any, db_engine: Engine, sim: Any, seen: Seen
) -> None:
    outage = _outage(sim, until=None)
    state = _campaign(audience, "breaker-pauses", breaker_give_up_minutes=0.05)  # 3 s
    outage.join(timeout=10)

    assert state.is_completed(), state.message  # a pause: the run says so, not Failed
    result = state.result()
    assert result.status == CampaignStatus.PAUSED
    breaker_stops = [s for s in seen.stops if s.cause is StopCause.BREAKER]
    assert breaker_stops and breaker_stops[0].kind == "pause"
    reason = result.reason or ""
    for words in (
        "WeChat's API kept failing (errcode -1",
        f"of the last {WINDOW} attempts failed",
        "did not get through",
        "`wxpush campaign resume breaker-pauses`",
    ):
        assert words in reason, reason
    assert state.message == f"paused: {' '.join(reason.split())}"
    with db_engine.connect() as conn:
        record = campaigns.get_campaign(conn, "breaker-pauses")
    assert record is not None and record.status is CampaignStatus.PAUSED
    assert record.status_reason == reason
    failed_requests = sim.admin.counters().faults["minus_one"]
    assert failed_requests < WINDOW + seen.probes, (failed_requests, seen.probes)
    rows = ledger(db_engine, "breaker-pauses").values()
    assert not [r for r in rows if r["status"] == "failed" and r["error_class"] == "RETRY"], (
        "no message gave up on its own during the outage"
    )
    accepted = sim.admin.counters().accepted

    # WeChat is back: the operator's resume finishes it, each recipient once.
    sim.admin.set_faults()
    resumed = _campaign(audience, "breaker-pauses")
    assert resumed.is_completed(), resumed.message
    assert resumed.result().status == CampaignStatus.COMPLETED_WITH_FAILURES
    assert sim.admin.counters().accepted > accepted
    assert_exactly_once(db_engine, sim, sim.app_id, "breaker-pauses")
