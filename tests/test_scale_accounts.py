"""Issue 12's first acceptance test, on the local cluster (`wxpush serve --workers 2` on
PostgreSQL, tests/fixtures/cluster.py): two accounts, two process workers, three campaigns
at once through the `push-campaign` deployment, two of them for account A (rate 100/s), one
for account B (no rate). A's campaigns together keep A's rate; B is not slowed by A; every
recipient is messaged once per campaign; both workers ran campaigns.

The rates are read from the simulator's acceptance timestamps, so what is measured is what
WeChat would have seen. PostgreSQL only (skipped without WXPUSH_TEST_POSTGRES_URL).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient
from sqlalchemy import text

from cli.deploy import PUSH_CAMPAIGN
from sending.message import client_msg_id_for
from tests.fixtures.cluster import Account, Cluster
from wechat.simulator import defaults

pytestmark = [pytest.mark.timeout(900), pytest.mark.process]

A_RATE = 100.0
#: Two campaigns of ~1,500 sends each for A: ~30 s at 100/s, so they overlap for many
#: seconds even when one starts several seconds after the other (with 1,000 each, a start
#: 7.5 s apart under a loaded suite left 5.2 s of overlap, short of the 5 s plus two edges).
A_RECIPIENTS = 1500
B_RECIPIENTS = 600
B_ID, B_SECRET = "wxb0b0b0b0b0b0b0b0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#: The part of A's sending measured: both campaigns sending, less a second at each end.
EDGE_SECONDS = 1.0
MIN_OVERLAP_SECONDS = 5.0


#: Followers WeChat would refuse (blocked, or no longer following) are left out: each refused
#: attempt takes one of the account's send slots but is no accepted message, so the
#: simulator's count of accepted messages would fall short of the rate by their share.
AUDIENCE_SQL = (
    "SELECT openid FROM recipients WHERE app_id = :app_id AND blocked IS NULL AND subscribed"
)


def _campaign(name: str, app: str, **knobs: Any) -> dict[str, Any]:
    return {
        "name": name,
        "app": app,
        "template_id": defaults.DEMO_TEMPLATE_ID,
        "data": dict(defaults.DEMO_TEMPLATE_VALUES),  # no placeholders: no invalid rows
        "audience_sql": AUDIENCE_SQL,
        "window_hours": 0,  # everyone subscribed, whenever they last interacted
        "request_timeout_seconds": 5.0,
        **knobs,
    }


def _audience_size(cluster: Cluster, account: Account) -> int:
    engine = cluster.engine()
    try:
        with engine.connect() as conn:
            sql = text(AUDIENCE_SQL.replace("SELECT openid", "SELECT count(*)"))
            return int(conn.execute(sql, {"app_id": account.app_id}).scalar_one())
    finally:
        engine.dispose()


def _run_together(cluster: Cluster, campaigns: list[dict[str, Any]], timeout: float) -> list[Any]:
    """Start every campaign through the deployment at once, then wait for all to end."""
    from prefect.deployments import run_deployment

    async def work(client: PrefectClient) -> list[Any]:
        runs = [
            await run_deployment(
                name=PUSH_CAMPAIGN, parameters={"params": params}, timeout=0, client=client
            )
            for params in campaigns
        ]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [await client.read_flow_run(run.id) for run in runs]
            if all(run.state is not None and run.state.is_final() for run in runs):
                return runs
            await asyncio.sleep(1)
        raise AssertionError(f"still running after {timeout} s: {[r.state for r in runs]}")

    return list(cluster.call(work))


def _campaign_ids(cluster: Cluster, runs: list[Any]) -> list[str]:
    engine = cluster.engine()
    try:
        with engine.connect() as conn:
            return [
                conn.execute(
                    text("SELECT id FROM campaigns WHERE flow_run_id = :r"), {"r": str(run.id)}
                ).scalar_one()
                for run in runs
            ]
    finally:
        engine.dispose()


def _sent_rows(cluster: Cluster, campaign_id: str) -> tuple[int, set[str]]:
    """How many ledger rows the campaign has, and the openids it recorded sent."""
    engine = cluster.engine()
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT openid, status FROM deliveries WHERE campaign_id = :c"),
                {"c": campaign_id},
            ).all()
    finally:
        engine.dispose()
    return len(rows), {openid for openid, status in rows if status == "sent"}


def _accepted_at(account: Account, campaign_id: str) -> tuple[Counter[str], list[float]]:
    """This campaign's messages the simulator accepted for the account: per openid, and when
    (epoch seconds, sorted)."""
    counts: Counter[str] = Counter()
    times: list[float] = []
    for message in account.admin.iter_messages():
        if message.client_msg_id == client_msg_id_for(campaign_id, message.openid):
            counts[message.openid] += 1
            times.append(message.accepted_at.timestamp())
    return counts, sorted(times)


def _rate(times: list[float], start: float, end: float) -> float:
    """Messages accepted per second within [start, end]."""
    return sum(start <= moment <= end for moment in times) / (end - start)


def test_two_accounts_two_workers_three_campaigns_at_once(cluster: Cluster) -> None:
    a = cluster.add_account("acct-a", recipients=A_RECIPIENTS, rate_per_second=A_RATE)
    b = cluster.add_account("acct-b", app_id=B_ID, app_secret=B_SECRET, recipients=B_RECIPIENTS)
    campaigns = [
        _campaign("A one", a.block, batch_size=500, concurrency=16),
        _campaign("B", b.block, batch_size=300, concurrency=16),
        _campaign("A two", a.block, batch_size=500, concurrency=16),
    ]
    runs = _run_together(cluster, campaigns, timeout=600)
    assert [run.state.type.value for run in runs] == ["COMPLETED"] * 3, [
        (run.state.name, run.state.message) for run in runs
    ]
    a_one, b_id, a_two = _campaign_ids(cluster, runs)

    # Every recipient once per campaign: one ledger row each, and exactly the rows the
    # ledger says sent reached the simulator, once each (its dedupe is off).
    accepted: dict[str, list[float]] = {}
    for campaign_id, account in ((a_one, a), (a_two, a), (b_id, b)):
        rows, sent = _sent_rows(cluster, campaign_id)
        counts, times = _accepted_at(account, campaign_id)
        audience = _audience_size(cluster, account)
        assert rows == audience, "every recipient in the audience has one ledger row"
        assert set(counts) == sent, "the simulator got exactly the rows the ledger says sent"
        assert max(counts.values()) == 1, "nobody got a campaign's message twice"
        assert len(sent) == audience, "every follower in the audience accepted"
        accepted[campaign_id] = times

    # A's two campaigns together keep A's rate while both send.
    one, two = accepted[a_one], accepted[a_two]
    overlap_start = max(one[0], two[0]) + EDGE_SECONDS
    overlap_end = min(one[-1], two[-1]) - EDGE_SECONDS
    assert overlap_end - overlap_start >= MIN_OVERLAP_SECONDS, (
        "A's two campaigns sent at the same time for a while",
        one[0],
        one[-1],
        two[0],
        two[-1],
    )
    a_times = sorted(one + two)
    both_rate = _rate(a_times, overlap_start, overlap_end)
    # Over A's whole send, one campaign alone may not fill the rate (at the start, at the
    # end), but nothing goes above it.
    whole = _rate(a_times, a_times[0] + EDGE_SECONDS, a_times[-1] - EDGE_SECONDS)
    b_times = accepted[b_id]
    b_rate = len(b_times) / max(b_times[-1] - b_times[0], 1e-3)
    per_second = Counter(int(moment - a_times[0]) for moment in a_times)
    print(  # the figures docs/scaling.md quotes (pytest -s shows them)
        f"\ncluster up in {cluster.startup_seconds:.0f} s; A with both sending: {both_rate:.1f}/s "
        f"over {overlap_end - overlap_start:.1f} s; A over its whole send: {whole:.1f}/s; "
        f"B {b_rate:.0f}/s ({len(b_times)} in {b_times[-1] - b_times[0]:.1f} s)\n"
        f"A's campaigns: one {one[0] - a_times[0]:.1f}-{one[-1] - a_times[0]:.1f} s, "
        f"two {two[0] - a_times[0]:.1f}-{two[-1] - a_times[0]:.1f} s; A per second: "
        f"{[per_second[n] for n in range(int(a_times[-1] - a_times[0]) + 1)]}"
    )
    assert abs(both_rate - A_RATE) <= A_RATE * 0.05, f"A while both sent: {both_rate:.1f}/s"
    assert whole <= A_RATE * 1.05, f"A over its whole send: {whole:.1f}/s"

    # B is not held to A's rate: it sends far faster and is done while A still sends.
    assert b_rate > 1.5 * A_RATE, f"B sent at {b_rate:.1f}/s"
    assert b_times[-1] < a_times[-1], "B finished on its own schedule, before A"

    # Both workers ran campaigns (each takes at most two runs at once).
    ran_on = cluster.worker_of_runs()
    workers = {ran_on.get(str(run.id)) for run in runs}
    assert workers == set(cluster.workers), (workers, cluster.workers)
    print(f"runs on: {[ran_on.get(str(run.id)) for run in runs]} (A one, B, A two)")
