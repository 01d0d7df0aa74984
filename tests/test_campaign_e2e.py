"""push_campaign end to end: a real Prefect server, the simulator over HTTP, SQLite and
PostgreSQL. Every eligible follower gets exactly one message; every audience row gets
exactly one ledger row with the right status and reason."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from flows.campaign import push_campaign
from tests.campaign_helpers import assert_exactly_once, params
from tests.campaign_helpers import run_campaign as run

pytestmark = pytest.mark.harness


def test_every_eligible_follower_exactly_once(audience: Any, db_engine: Engine, sim: Any) -> None:
    result = run(params(audience.name))
    assert result.status in ("completed", "completed_with_failures")
    assert_exactly_once(db_engine, sim, sim.app_id, result.campaign_id)


def test_faults_lose_nothing_and_send_nothing_twice(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    sim.admin.set_faults(
        seed=11,
        minus_one_rate=0.2,
        http_5xx_rate=0.05,
        slow_rate=0.01,
        slow_seconds=2.5,
        drop_rate=0.01,
    )
    result = run(params(audience.name, max_attempts=12, request_timeout_seconds=1.0))
    counters = sim.admin.counters()
    assert sum(counters.faults.values()) > 20, "the faults really happened"
    assert_exactly_once(db_engine, sim, sim.app_id, result.campaign_id)


def test_rerun_of_a_completed_campaign_sends_nothing(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    first = run(params(audience.name))
    before = sim.admin.counters().accepted
    again = run(params(audience.name, campaign_id=first.campaign_id))
    assert sim.admin.counters().accepted == before
    assert again.sent_this_run == 0
    assert again.counts == first.counts


def test_the_ui_shows_progress_and_a_report(audience: Any, db_engine: Engine, sim: Any) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    state = push_campaign(params(audience.name, name="shown"), return_state=True)
    result = state.result()

    async def artifacts() -> tuple[str, list[Any]]:
        run_id = state.state_details.flow_run_id
        async with get_client() as client:
            flow_run = await client.read_flow_run(run_id)
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        return flow_run.name, found

    run_name, listed = asyncio.run(artifacts())
    assert run_name == "campaign-shown"
    found = {a.type: a for a in listed}
    assert found["progress"].data == 100.0
    report = found["markdown"].data
    assert "# Campaign shown" in report and f"| sent | {result.counts['sent']} |" in report
    assert "43019" in report or "48002" in report, "top errcodes with their meaning"
    assert f"campaign_id = '{result.campaign_id}'" in report, "the SQL for the failed rows"
    assert found["table"].data
