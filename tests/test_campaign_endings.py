"""Every way a campaign run can go wrong leaves its row `failed` or `paused` with a reason that
says what to do, never `running` (issue 9, part 5). Real simulator, real Prefect server, SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from sqlalchemy import Engine

from db import campaigns
from db.outcomes import CampaignStatus
from flows.campaign import push_campaign
from tests.campaign_helpers import params

pytestmark = pytest.mark.harness


def _row(engine: Engine, campaign_id: str) -> campaigns.CampaignRecord:
    with engine.connect() as conn:
        record = campaigns.get_campaign(conn, campaign_id)
    assert record is not None, "the run created its campaign row"
    return record


def _ended(engine: Engine, campaign_id: str, p: Any) -> campaigns.CampaignRecord:
    """Run the campaign (it must not complete) and return its row."""
    state = asyncio.run(push_campaign(p, return_state=True))
    assert not state.is_completed(), "the run reports the problem"
    record = _row(engine, campaign_id)
    assert record.status is not CampaignStatus.RUNNING, record
    assert record.finished_at is not None
    assert record.status_reason, "a reason an operator can act on"
    return record


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wrong_app_secret_fails_and_says_to_fix_the_block(
    audience: Any, db_engine: Engine, sim: Any, make_wechat_app: Any
) -> None:
    wrong = asyncio.run(make_wechat_app(app_secret="0" * 32))
    record = _ended(db_engine, "bad-secret", params(wrong.name, campaign_id="bad-secret"))
    assert record.status is CampaignStatus.FAILED
    assert "40125" in (record.status_reason or "")
    assert "wxpush setup" in (record.status_reason or "")
    assert "0" * 32 not in (record.status_reason or "")
    assert sim.admin.counters().accepted == 0


def test_token_endpoint_minus_one_pauses_for_a_resume(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    sim.admin.set_faults(minus_one_rate=1.0, apply_to_token_endpoints=True)
    record = _ended(db_engine, "busy", params(audience.name, campaign_id="busy"))
    assert record.status is CampaignStatus.PAUSED
    assert "-1" in (record.status_reason or "")
    assert "wxpush campaign resume busy" in (record.status_reason or "")
    sim.admin.set_faults()
    state = asyncio.run(push_campaign(params(audience.name, campaign_id="busy"), return_state=True))
    assert state.is_completed() and _row(db_engine, "busy").status in (
        CampaignStatus.COMPLETED,
        CampaignStatus.COMPLETED_WITH_FAILURES,
    ), "the resume the reason names finishes the campaign"


def test_unreachable_api_pauses_for_a_resume(
    audience: Any, db_engine: Engine, sim: Any, make_wechat_app: Any
) -> None:
    gone = asyncio.run(make_wechat_app(api_base_url=f"http://127.0.0.1:{_closed_port()}"))
    record = _ended(db_engine, "gone", params(gone.name, campaign_id="gone"))
    assert record.status is CampaignStatus.PAUSED
    reason = record.status_reason or ""
    assert "could not reach" in reason and "wxpush campaign resume gone" in reason


def test_the_cli_says_in_one_line_where_the_campaign_is(
    audience: Any, db_engine: Engine, sim: Any, make_wechat_app: Any
) -> None:
    from typer.testing import CliRunner

    from cli.main import app as cli

    wrong = asyncio.run(make_wechat_app(app_secret="0" * 32))
    p = params(wrong.name)
    out = CliRunner().invoke(
        cli,
        [
            "campaign",
            "run",
            "--name",
            "refused",
            "--app",
            wrong.name,
            "--template-id",
            str(p.template_id),
            *[f"--data={k}={v}" for k, v in p.data.items()],
        ],
    )
    assert out.exit_code == 1, out.output
    line = next(line for line in out.output.splitlines() if line.startswith("Campaign "))
    assert " is failed: WeChat refused: errcode 40125" in line
    assert "Traceback" not in out.output


def _slow_count_sql(dialect: str) -> str:
    """Fast for the preview's 20 rows, several seconds for a count of all 300."""
    if dialect == "postgresql":
        return (
            "SELECT openid, nickname, last_interaction_at FROM recipients "
            "WHERE app_id = :app_id AND pg_sleep(0.02) IS NOT NULL"
        )
    return (
        "SELECT openid, nickname, last_interaction_at FROM recipients AS r "
        "WHERE app_id = :app_id AND (WITH RECURSIVE c(n) AS (SELECT length(r.openid) "
        "UNION ALL SELECT n + 1 FROM c WHERE n < 100000) SELECT max(n) FROM c) > 0"
    )


def test_audience_count_timeout_fails_with_a_value_free_reason(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    sql = _slow_count_sql(db_engine.dialect.name)
    p = params(audience.name, campaign_id="slow", audience_sql=sql, audience_timeout_seconds=2)
    record = _ended(db_engine, "slow", p)
    assert record.status is CampaignStatus.FAILED
    assert "2 s" in (record.status_reason or "") and "timeout" in (record.status_reason or "")
    assert sim.admin.counters().accepted == 0
