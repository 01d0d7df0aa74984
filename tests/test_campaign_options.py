"""Campaign knobs an operator uses: dry run, the failure-ratio pause, re-sending retryable
failures, and `wxpush report`."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from cli.main import app as cli
from tests.campaign_helpers import (
    assert_exactly_once,
    expected_statuses,
    ledger,
    params,
)
from tests.campaign_helpers import run_campaign as run

pytestmark = pytest.mark.harness


def test_dry_run_sends_and_records_nothing(audience: Any, db_engine: Engine, sim: Any) -> None:
    result = run(params(audience.name, dry_run=True))
    expected = expected_statuses(db_engine, sim.app_id)
    would_send = sum(1 for status, _ in expected.values() if status in ("sent", "failed"))
    assert result.dry_run and result.counts["would_send"] == would_send
    assert result.counts["invalid"] == sum(1 for s, _ in expected.values() if s == "invalid")
    assert sim.admin.counters().accepted == 0
    assert ledger(db_engine, result.campaign_id) == {}


def test_failure_ratio_pauses_the_campaign(audience: Any, db_engine: Engine, sim: Any) -> None:
    unknown = (
        "SELECT openid || 'x' AS openid, nickname, last_interaction_at FROM recipients "
        "WHERE app_id = :app_id AND subscribed"
    )
    result = run(params(audience.name, audience_sql=unknown, window_hours=0, batch_size=100))
    assert result.status == "paused"
    assert "failed" in (result.reason or "") and "50%" in (result.reason or "")
    rows = ledger(db_engine, result.campaign_id)
    assert 200 <= len(rows) < 300, "paused after the ratio was known, before the end"
    assert {row["errcode"] for row in rows.values() if row["status"] == "failed"} <= {40003}


def test_retry_failed_resends_only_retryable_failures(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    sim.admin.set_faults(seed=1, minus_one_rate=1.0)
    # The breaker off, so the outage fails rows (on, it would hold them and pause).
    first = run(params(audience.name, max_attempts=1, breaker_share=1))
    assert first.status == "completed_with_failures"
    failed = [r for r in ledger(db_engine, first.campaign_id).values() if r["status"] == "failed"]
    assert failed and all(r["error_class"] == "RETRY" for r in failed if r["errcode"] == -1)
    sim.admin.set_faults(seed=1)
    plain_rerun = run(params(audience.name, campaign_id=first.campaign_id))
    assert plain_rerun.sent_this_run == 0, "without retry_failed a failed row is final"
    again = run(params(audience.name, campaign_id=first.campaign_id, retry_failed=True))
    assert again.sent_this_run > 0
    assert_exactly_once(db_engine, sim, sim.app_id, first.campaign_id)


def test_report_command_prints_the_figures(audience: Any, db_engine: Engine, sim: Any) -> None:
    result = run(params(audience.name, name="reported"))
    out = CliRunner().invoke(cli, ["report", "reported"])
    assert out.exit_code == 0, out.output
    assert "# Campaign reported" in out.output
    assert f"| sent | {result.counts['sent']} |" in out.output
    assert result.campaign_id in out.output
    missing = CliRunner().invoke(cli, ["report", "no-such-campaign"])
    assert missing.exit_code != 0 and "no campaign" in missing.output


def test_the_cli_refuses_invalid_parameters_before_running(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from cli.main import app as cli

    params_file = tmp_path / "p.json"
    params_file.write_text('{"template_id": "T", "data": {"thing1": "x"}, "window_hours": -1}')
    runner = CliRunner()
    refused = runner.invoke(
        cli, ["campaign", "run", "--name", "x", "--params-file", str(params_file)]
    )
    assert refused.exit_code == 2
    assert "window_hours" in refused.output
    digest = runner.invoke(cli, ["digest", "run", "--timezone", "Mars/Olympus"])
    assert digest.exit_code == 2
    assert "timezone" in digest.output
