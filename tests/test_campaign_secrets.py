"""A campaign leaks no secret: not in logs (local and stored), artifacts, the flow run's
parameters and state, the task runs, nor any column of the ledger or campaigns table.

The token is rotated mid-run so a refresh (and its log lines) happens too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Engine, text

from flows.campaign import push_campaign
from tasks import database
from tasks.blocks import WeChatAccessToken
from tests.campaign_helpers import make_app, params, seed
from tests.fixtures.prefect import api_logging, stored_runs

pytestmark = pytest.mark.harness


async def _stored(flow_run_id: Any) -> str:
    stored = await stored_runs(flow_run_id)
    assert any("Campaign" in a.data for a in stored.artifacts if isinstance(a.data, str))
    assert stored.logs, "run logs were stored"
    return "\n".join(
        [
            stored.log_text,
            *(str(a.data) + str(a.description) for a in stored.artifacts),
            *(run.model_dump_json() for run in stored.flow_runs),
            *(run.model_dump_json() for run in stored.task_runs),
        ]
    )


def _tables(engine: Engine) -> str:
    with engine.connect() as conn:
        rows = [
            *conn.execute(text("SELECT * FROM deliveries")).all(),
            *conn.execute(text("SELECT * FROM campaigns")).all(),
        ]
    assert rows
    return "\n".join(repr(tuple(row)) for row in rows)


def test_campaign_leaks_no_secret(
    db_url: str,
    db_engine: Engine,
    sim: Any,
    make_wechat_app: Any,
    monkeypatch: pytest.MonkeyPatch,
    all_logs: Any,
) -> None:
    monkeypatch.setenv("WXPUSH_DATABASE_URL", db_url)
    database.dispose_all()
    app = make_app(make_wechat_app)
    seed(db_engine, sim, sim.app_id, 120)
    tokens: list[str] = []

    original = sim.admin.counters

    with api_logging():
        sim.admin.set_faults(seed=5, minus_one_rate=0.1)
        state = asyncio.run(push_campaign(params(app.name, rate_per_second=200), return_state=True))
        tokens.append(WeChatAccessToken.load(app.name).access_token.get_secret_value())
        sim.admin.rotate_tokens()
        again = asyncio.run(push_campaign(params(app.name, name="second"), return_state=True))
        tokens.append(WeChatAccessToken.load(app.name).access_token.get_secret_value())
    assert state.is_completed() and again.is_completed()
    assert tokens[0] != tokens[1], "the second run refreshed the rotated token"
    assert original().accepted > 0

    seen = "\n".join(
        [
            asyncio.run(_stored(state.state_details.flow_run_id)),
            asyncio.run(_stored(again.state_details.flow_run_id)),
            all_logs.text,
            _tables(db_engine),
            repr(state.result()),
        ]
    )
    assert "access_token=" in all_logs.text, "request lines were captured (redacted)"
    for secret in (app.app_secret, *tokens):
        assert secret not in seen
    database.dispose_all()
