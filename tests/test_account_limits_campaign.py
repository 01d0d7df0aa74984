"""Issue 12's account-wide limits through real campaign flow runs: the simulator over HTTP,
the Prefect harness, the ledger on SQLite and PostgreSQL (the acceptance is PostgreSQL's).

- The daily quota: an account allowed 500 template messages a day and an audience of
  1,200 pauses after exactly 500 accepted sends with the quota's reason, before WeChat (the
  simulator, whose own quota is larger) ever answers 45009; a resume each following Beijing
  day sends that day's 500, then the last 200, everyone messaged once.
- The rate: two campaigns of one account, in two `wxpush campaign run` processes at once,
  send at the account's 50/s together (±5 %, from the simulator's acceptance times), while
  one of them stays within its own 20/s (PostgreSQL only: several workers mean PostgreSQL).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine, select

from db.models import AccountQuota
from db.outcomes import CampaignStatus, DeliveryStatus, PendingReason
from tests.campaign_helpers import (
    DATA,
    accepted_openids,
    followers,
    ledger,
    make_app,
    next_beijing_day,
    params,
    run_campaign,
    start_cli,
)
from wechat.simulator.defaults import DEMO_TEMPLATE_ID

pytestmark = pytest.mark.harness

QUOTA = 500
AUDIENCE = 1_200


def test_the_daily_quota_pauses_before_wechat_and_resumes_finish_on_later_days(
    ledger_env: str, db_engine: Engine, sim: Any, make_wechat_app: Any
) -> None:
    """The campaign stops itself at the account's 500th message of the day; 1,200 take three
    days (500, 500, 200). A new day is two clocks moving: the simulator's (its quota resets
    at Beijing midnight) and ours, stood for by moving the account's quota rows back one day
    (a new Beijing day starts a new row), instead of the test waiting for midnight."""
    ids = followers(db_engine, sim, "oq", AUDIENCE)
    app = make_app(lambda: make_wechat_app(daily_quota=QUOTA))
    # Larger than the day's quota: preflight would refuse it without "send what fits".
    campaign = params(
        app.name,
        name="quota",
        campaign_id="quota-1",
        batch_size=200,
        when_quota_short="send_what_fits",
    )

    first = run_campaign(campaign)

    assert first.status == CampaignStatus.PAUSED
    assert first.reason is not None
    assert f"daily template quota of account {sim.app_id} (500 messages) is reached" in (
        first.reason
    )
    assert "Beijing day" in first.reason and "wxpush campaign resume quota-1" in first.reason
    assert "wxpush setup --daily-quota" in first.reason
    counters = sim.admin.counters()
    assert counters.accepted == QUOTA, "exactly the quota was sent"
    assert 45009 not in counters.errcodes, "WeChat never had to refuse one"
    rows = ledger(db_engine, "quota-1")
    statuses = Counter(row["status"] for row in rows.values())
    assert statuses[DeliveryStatus.SENT] == QUOTA
    # The rest is pending, or not in the ledger yet (its batch never started).
    assert set(statuses) == {DeliveryStatus.SENT, DeliveryStatus.PENDING}, statuses
    assert {row["reason"] for row in rows.values() if row["status"] == "pending"} <= {
        None,
        PendingReason.NOT_ATTEMPTED,
    }, "the rows not sent wait for the resume; none is in flight"
    with db_engine.connect() as conn:
        used = conn.execute(
            select(AccountQuota.used).where(AccountQuota.app_id == sim.app_id)
        ).scalar_one()
    assert used == QUOTA, "the day's count is what was sent: nothing held back"

    # The next Beijing day: another 500, and a pause again, exactly as on the first.
    next_beijing_day(sim, db_engine)
    second = run_campaign(campaign)
    assert second.status == CampaignStatus.PAUSED and second.sent_this_run == QUOTA
    assert second.reason is not None and "(500 messages) is reached" in second.reason
    assert sim.admin.counters().accepted == 2 * QUOTA

    # The day after: the last 200, and the campaign is done.
    next_beijing_day(sim, db_engine)
    third = run_campaign(campaign)
    assert third.status == CampaignStatus.COMPLETED, third.reason
    assert third.sent_this_run == AUDIENCE - 2 * QUOTA
    seen = accepted_openids(sim)
    assert set(seen) == set(ids) and max(seen.values()) == 1, "everyone messaged exactly once"
    assert 45009 not in sim.admin.counters().errcodes
    rows = ledger(db_engine, "quota-1")
    assert len(rows) == AUDIENCE
    assert {row["status"] for row in rows.values()} == {DeliveryStatus.SENT}
    with db_engine.connect() as conn:
        counts = conn.execute(
            select(AccountQuota.used)
            .where(AccountQuota.app_id == sim.app_id)
            .order_by(AccountQuota.day)
        ).scalars()
        assert list(counts) == [QUOTA, QUOTA, AUDIENCE - 2 * QUOTA], "one row per day"


# -- the rate, shared by two processes ----------------------------------------------------------

ACCOUNT_RATE = 50.0
CAPPED_RATE = 20.0
TOLERANCE = 0.05


def _campaign_process(
    app: str, db_url: str, harness: Any, prefix: str, *, rate: float | None = None
) -> subprocess.Popen[str]:
    audience = (
        "SELECT openid, nickname, city, subscribed, blocked, last_interaction_at, attributes "
        f"FROM recipients WHERE app_id = :app_id AND openid LIKE '{prefix}%'"
    )
    return start_cli(
        ["campaign", "run"],
        *("--name", f"shared-{prefix}", "--app", app, "--campaign-id", f"shared-{prefix}"),
        *("--template-id", DEMO_TEMPLATE_ID, "--audience-sql", audience, "--batch-size", "100"),
        *(() if rate is None else ("--rate", str(rate))),
        *[f"--data={k}={v}" for k, v in DATA.items()],
        db_url=db_url,
        harness=harness,
    )


def _rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def test_two_campaigns_of_one_account_share_its_rate(
    db_backend: str,
    ledger_env: str,
    db_engine: Engine,
    sim: Any,
    make_wechat_app: Any,
    prefect_harness: Any,
) -> None:
    if db_backend != "postgresql":
        # Two campaign processes cost ~30 s of the suite's two cores. SQLite's rate row is
        # shared the same way: by threads in tests/test_account_limits_db.py, by three
        # processes in bench.account_limits (100.0/s and 500.0/s).
        pytest.skip("several workers sharing an account's rate is a PostgreSQL setup")
    # Both start at once; the audiences are large enough that they send together for
    # seconds whichever of the two processes is ready first (a start takes seconds here).
    capped_ids = followers(db_engine, sim, "oc", 200)
    free_ids = followers(db_engine, sim, "of", 500)
    app = make_app(lambda: make_wechat_app(rate_per_second=ACCOUNT_RATE))
    procs = [
        _campaign_process(app.name, ledger_env, prefect_harness, "of"),
        _campaign_process(app.name, ledger_env, prefect_harness, "oc", rate=CAPPED_RATE),
    ]
    try:
        outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]

    messages = sorted(sim.admin.iter_messages(), key=lambda m: m.accepted_at)
    assert Counter(m.openid for m in messages) == Counter(capped_ids + free_ids), (
        "everyone of both campaigns messaged exactly once"
    )
    at = {
        prefix: [m.accepted_at.timestamp() for m in messages if m.openid.startswith(prefix)]
        for prefix in ("oc", "of")
    }
    start = max(at["oc"][0], at["of"][0])
    end = min(at["oc"][-1], at["of"][-1])
    assert end - start > 3.0, f"the campaigns sent at the same time for {end - start:.1f} s only"
    both = [m.accepted_at.timestamp() for m in messages]
    both = [t for t in both if start <= t <= end]
    combined, capped = _rate(both), _rate(at["oc"])
    print(f"combined {combined:.2f}/s over {end - start:.1f} s, capped campaign {capped:.2f}/s")
    assert combined == pytest.approx(ACCOUNT_RATE, rel=TOLERANCE), "the account's rate holds"
    # A cap: at most its own rate, whatever share of the account it got beside the other.
    assert capped <= CAPPED_RATE * (1 + TOLERANCE), "the campaign's own rate holds"
