"""push_campaign end to end: a real Prefect server, the simulator over HTTP, SQLite and
PostgreSQL. Every eligible follower gets exactly one message; every audience row gets
exactly one ledger row with the right status and reason."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine, event

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

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    state = asyncio.run(push_campaign(params(audience.name, name="shown"), return_state=True))
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


def _ledger_statements(p: Any) -> Counter[str]:
    """Every statement that names the ledger table, run while the campaign ran (any engine
    of this process: the flow's, the batches', the stream's)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "deliveries" in statement:  # one text per statement whatever its temporary table
            seen.append(re.sub(r"_wx_final_\w+", "_wx_final_", " ".join(statement.split())))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        run(p)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    return Counter(seen)


def _by_key(statement: str) -> bool:
    """Keyed by (campaign_id, openid) or msgid: the upsert (its ON CONFLICT arbiter is the
    unique index), a lookup of the batch's openids, the receipts of the batch's msgids."""
    return (
        "ON CONFLICT (campaign_id, openid)" in statement
        or "deliveries.openid IN" in statement
        or "deliveries.msgid = " in statement
        or "msgid = ANY" in statement
    )


def test_a_batch_touches_the_ledger_only_by_key(audience: Any, db_engine: Engine, sim: Any) -> None:
    """Per-batch bookkeeping costs O(batch) (issue 15): progress and the error ratio come
    from running counts in memory, so the statements that read the whole campaign (counts
    at the start and the end, the snapshot of final rows) run as often for 12 batches as
    for one; whatever runs more often with more batches is keyed."""
    one = _ledger_statements(params(audience.name, batch_size=300))
    many = _ledger_statements(params(audience.name, batch_size=25))
    per_batch = {s for s, n in many.items() if n > one.get(s, 0)}
    assert sum(many[s] for s in per_batch) >= 12, "every batch wrote the ledger"
    assert [s for s in per_batch if not _by_key(s)] == []
    assert {s: n for s, n in many.items() if not _by_key(s)} == {
        s: n for s, n in one.items() if not _by_key(s)
    }
