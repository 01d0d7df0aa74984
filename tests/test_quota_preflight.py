"""The daily quota before a campaign starts (issue 13, point 3), through real campaign runs:
the simulator over HTTP (its per-account Beijing-day quota answers both the quota query and
45009), the Prefect harness, the ledger on SQLite and PostgreSQL.

- An audience larger than what is left today is refused in preflight, nothing sent, with
  one message: how many to send, how many left (by WeChat's count or the account's own,
  whichever is shorter), when it resets, the options.
- With "send what fits": exactly the rest of the quota is sent, the campaign pauses on the
  quota and a run of the push-campaign deployment is scheduled for after the reset; once
  the simulator's day turns, that run completes the campaign, everyone messaged once.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from db.account_limits import BEIJING
from db.outcomes import CampaignStatus
from tests.campaign_helpers import (
    accepted_openids,
    followers,
    ledger,
    make_app,
    next_beijing_day,
    params,
    run_deployed,
    run_scheduled,
    scheduled_resumes,
)
from tests.fixtures.database import sqlite_only

pytestmark = pytest.mark.harness


db_backend = sqlite_only()  # the send path and Prefect's side: the same on either database


LEFT = 100
AUDIENCE = 150


@pytest.mark.parametrize("short", ["wechat", "account"])
def test_an_audience_larger_than_the_quota_left_is_refused(
    short: str, ledger_env: str, db_engine: Engine, sim: Any, make_wechat_app: Any
) -> None:
    followers(db_engine, sim, "oq", AUDIENCE)
    if short == "wechat":
        sim.admin.set_config(daily_quota=LEFT)
        app = make_app(make_wechat_app)
    else:
        app = make_app(lambda: make_wechat_app(daily_quota=LEFT))
    campaign = params(app.name, name="too big", campaign_id=f"short-{uuid.uuid4().hex[:8]}")

    from flows.campaign import push_campaign

    state = asyncio.run(push_campaign(campaign, return_state=True))

    assert state.is_failed()
    message = state.message
    assert f"Daily template quota short: {AUDIENCE} to send, {LEFT} left today (" in message
    said = "WeChat: 100 of 100 left" if short == "wechat" else "this account: 100 of 100 left"
    assert said in message
    reset = datetime.now(BEIJING).date() + timedelta(days=1)
    assert f"it resets at {reset.isoformat()} 00:00 Asia/Shanghai" in message
    assert 'set "When the daily quota is short" to send_what_fits (100 now' in message
    assert "nothing was sent" in message
    assert sim.admin.counters().accepted == 0


def test_send_what_fits_pauses_and_the_scheduled_run_finishes_after_the_reset(
    ledger_env: str, db_engine: Engine, sim: Any, make_wechat_app: Any
) -> None:
    ids = followers(db_engine, sim, "oq", AUDIENCE)
    sim.admin.set_config(daily_quota=LEFT)
    app = make_app(make_wechat_app)
    cid = f"fits-{uuid.uuid4().hex[:8]}"
    campaign = params(
        app.name, name="fits", campaign_id=cid, when_quota_short="send_what_fits", batch_size=50
    )

    state, _ = run_deployed(campaign)

    result = state.result()
    assert result.status == CampaignStatus.PAUSED
    assert sim.admin.counters().accepted == LEFT, "exactly the quota left was sent"
    assert sum(row["status"] == "sent" for row in ledger(db_engine, cid).values()) == LEFT
    [resume] = scheduled_resumes(cid)
    tomorrow = datetime.now(BEIJING).date() + timedelta(days=1)
    after_reset = datetime.combine(tomorrow, datetime.min.time(), BEIJING) + timedelta(minutes=5)
    assert resume.state.state_details.scheduled_time == after_reset.astimezone(UTC)
    assert "errcode 45009" in result.reason
    assert f"It resumes by itself at {tomorrow.isoformat()} 00:05 Asia/Shanghai" in result.reason
    assert resume.parameters["params"]["when_quota_short"] == "send_what_fits"

    next_beijing_day(sim, db_engine)
    finished = run_scheduled(resume)

    assert finished.status == CampaignStatus.COMPLETED, finished.reason
    assert finished.sent_this_run == AUDIENCE - LEFT
    seen = accepted_openids(sim)
    assert set(seen) == set(ids) and max(seen.values()) == 1, "everyone messaged exactly once"


def test_a_failed_quota_query_leaves_the_accounts_own_count(
    ledger_env: str, db_engine: Engine
) -> None:
    """WeChat unreachable (nothing listens on port 9): the answer says why, and what is left
    is the account's own count alone; the preflight logs it as a warning, not a refusal."""
    from pydantic import SecretStr

    from tasks.blocks import WeChatApp
    from tasks.quota import quota_left

    app = WeChatApp(
        app_id="wx0123456789abcdef",
        app_secret="s" * 32,
        api_base_url="http://127.0.0.1:9",
        daily_quota=50,
    )
    left = asyncio.run(quota_left(app, SecretStr("sekrit-123"), datetime.now(UTC)))
    assert left.wechat is None and left.wechat_error is not None
    assert left.left == 50 and left.figures() == "this account: 50 of 50 left"
    assert "sekrit-123" not in left.wechat_error, "the token never leaks into the log line"
