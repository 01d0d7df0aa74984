"""Campaign runs that go wrong: token rotation, a killed process, bad input, a quota hit."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, text

from flows.campaign import push_campaign
from tests.campaign_helpers import (
    accepted_openids,
    assert_exactly_once,
    ledger,
    params,
    start_cli_campaign,
    wait_until_accepted,
)
from tests.campaign_helpers import run_campaign as run

pytestmark = pytest.mark.harness


def run_state(p: Any) -> Any:
    return asyncio.run(push_campaign(p, return_state=True))


def test_token_rotated_mid_campaign_refreshes_once(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    def rotate_when_a_third_is_sent() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sim.admin.counters().accepted >= 60:
                sim.admin.rotate_tokens()
                return
            time.sleep(0.02)

    rotator = threading.Thread(target=rotate_when_a_third_is_sent)
    rotator.start()
    before = sim.admin.counters().calls
    result = run(params(audience.name, rate_per_second=100))
    rotator.join()
    calls = sim.admin.counters().calls
    stable = calls.get("stable_token", 0) - before.get("stable_token", 0)
    # One fetch at preflight (the app is new) and one refresh after the rotation.
    assert stable == 2, calls
    assert_exactly_once(db_engine, sim, sim.app_id, result.campaign_id)


def test_killed_campaign_resumes_exactly_once(
    audience: Any, db_engine: Engine, db_url: str, sim: Any, prefect_harness: Any
) -> None:
    proc = start_cli_campaign(
        audience.name, db_url, prefect_harness, name="killed", campaign_id="killed-1", rate="40"
    )
    wait_until_accepted(proc, sim, 40)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    sent_before = sim.admin.counters().accepted
    assert sent_before >= 40
    assert len(ledger(db_engine, "killed-1")) < 300, "the run was killed mid-way"
    result = run(params(audience.name, name="killed", campaign_id="killed-1"))
    assert result.campaign_id == "killed-1"
    assert_exactly_once(db_engine, sim, sim.app_id, "killed-1")


def test_rerun_with_the_same_id_after_completion_sends_nothing(audience: Any, sim: Any) -> None:
    first = run(params(audience.name, campaign_id="once"))
    sent = sim.admin.counters().accepted
    run(params(audience.name, campaign_id="once"))
    assert sim.admin.counters().accepted == sent
    assert first.sent_this_run == sent


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DELETE FROM recipients", "only read"),
        ("SELEC openid FROM recipients", "not valid"),
        ("SELECT openid, last_interaction_at FROM recipients WHERE app_id = :app_id", "nickname"),
    ],
)
def test_bad_audience_stops_before_sending(
    audience: Any, db_engine: Engine, sim: Any, sql: str, message: str
) -> None:
    with db_engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM recipients")).scalar_one()
    state = run_state(params(audience.name, audience_sql=sql))
    assert state.is_failed()
    assert message in (state.message or "") or message in str(state.result(raise_on_failure=False))
    assert sim.admin.counters().accepted == 0
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM recipients")).scalar_one() == before
        status = conn.execute(text("SELECT status FROM campaigns")).scalars().all()
    assert status == ["failed"]


def test_unknown_template_stops_after_the_first_answers(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    state = asyncio.run(
        push_campaign(
            params(audience.name, template_id="no-such-template", concurrency=4), return_state=True
        )
    )
    assert state.is_failed(), "the run says the campaign failed, not Completed"
    assert "40037" in (state.message or "") and "\n" not in (state.message or "")
    result = state.result(raise_on_failure=False)
    assert result.status == "failed"
    assert "40037" in (result.reason or "")
    calls = sim.admin.counters().calls.get("template_send", 0)
    assert 1 <= calls <= 4 * 2, "stops after the first answers, not the whole batch"
    assert sim.admin.counters().accepted == 0


def test_quota_pauses_and_a_resume_finishes(audience: Any, db_engine: Engine, sim: Any) -> None:
    sim.admin.set_config(daily_quota=40)
    fits = params(audience.name, when_quota_short="send_what_fits")  # else refused: 40 < 300
    state = asyncio.run(push_campaign(fits, return_state=True))
    assert state.is_completed() and (state.message or "").startswith("paused: "), state
    paused = state.result()
    assert paused.status == "paused"
    assert "45009" in (paused.reason or "") or "quota" in (paused.reason or "").lower()
    assert sim.admin.counters().accepted == 40
    sim.admin.set_config(daily_quota=100_000)
    done = run(params(audience.name, campaign_id=paused.campaign_id))
    assert done.status in ("completed", "completed_with_failures")
    assert_exactly_once(db_engine, sim, sim.app_id, paused.campaign_id)
    assert max(accepted_openids(sim).values()) == 1
