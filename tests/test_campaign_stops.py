"""A campaign that preflight stops (an audience SQL that writes, a missing column, a template
every row breaks) ends its flow run Failed with the reason as the state's one-line message,
publishes a "why it stopped" artifact, and logs the reason once, with no traceback (an
expected error in the flow body, a missing app block and a digest end the same way; a bug
keeps its traceback). The report of a campaign that ran says why rows were skipped or
invalid and what each throughput measures. Real Prefect server, real simulator; SQLite, and
PostgreSQL when configured."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from db import campaigns
from db.audience import AudienceQueryError
from db.outcomes import CampaignStatus
from flows.campaign import push_campaign
from sending.plan import SKIP_WORDS
from tests.campaign_helpers import DATA, params
from tests.fixtures.prefect import api_logging, stored_runs

pytestmark = pytest.mark.harness


async def _stored(flow_run_id: Any) -> tuple[list[Any], list[Any]]:
    """The flow run's stored logs and artifacts."""
    stored = await stored_runs(flow_run_id)
    return stored.logs, stored.artifacts


STOPS = {
    "writing-sql": (
        {"audience_sql": "DELETE FROM recipients WHERE app_id = :app_id"},
        ["must only read", "Fix the audience SQL", "run the campaign again"],
    ),
    "missing-column": (
        {"data": {**DATA, "thing1": "{no_such_column}"}},
        ["{no_such_column}", "no such column", "run the campaign again"],
    ),
    "bad-template": (
        {"data": {**DATA, "thing1": "x" * 30}},
        ["breaks WeChat's field rules", "at most 20 characters", "template fields"],
    ),
}


@pytest.mark.parametrize("case", list(STOPS))
def test_a_preflight_stop_ends_failed_in_one_line_with_an_artifact(
    case: str, audience: Any, db_engine: Engine, sim: Any, all_logs: Any
) -> None:
    overrides, words = STOPS[case]
    campaign_id = f"stop-{case}"
    with api_logging():
        state = asyncio.run(
            push_campaign(
                params(audience.name, campaign_id=campaign_id, **overrides), return_state=True
            )
        )
    assert state.is_failed(), state
    message = state.message or ""
    for word in words:
        assert word in message, message
    assert "\n" not in message and "Traceback" not in message and "got 30" not in message
    with db_engine.connect() as conn:
        record = campaigns.get_campaign(conn, campaign_id)
    assert record is not None and record.status is CampaignStatus.FAILED
    assert record.status_reason == message, "the run page and the campaign row say the same"
    assert sim.admin.counters().accepted == 0

    logs, artifacts = asyncio.run(_stored(state.state_details.flow_run_id))
    stored = "\n".join(log.message for log in logs)
    assert "Traceback" not in stored, stored[-3000:]
    assert "Traceback" not in all_logs.text, all_logs.text[-3000:]
    errors = [log.message for log in logs if log.level >= 40]
    assert [m for m in errors if message in m], errors
    stopped = {a.key: a for a in artifacts}[f"campaign-{campaign_id}-stopped"]
    assert stopped.type == "markdown"
    assert stopped.description and "Why campaign" in stopped.description
    assert f"**Why:** {message}" in str(stopped.data)
    assert "Nothing was sent." in str(stopped.data)


def test_the_cli_prints_the_preflight_stop_in_one_line(audience: Any, sim: Any) -> None:
    from cli.main import app as cli

    p = params(audience.name)
    args = [
        *("campaign", "run", "--name", "writes", "--app", audience.name),
        *("--template-id", str(p.template_id), "--audience-sql", "DELETE FROM recipients"),
        *[f"--data={k}={v}" for k, v in p.data.items()],
    ]
    for extra, starts in (([], "Campaign "), (["--dry-run"], "The campaign run ended Failed: ")):
        out = CliRunner().invoke(cli, [*args, *extra])
        assert out.exit_code == 1, out.output
        assert "Traceback" not in out.output, out.output
        lines = [line for line in out.output.splitlines() if line.strip()]
        assert len(lines) == 1, out.output
        assert lines[0].startswith(starts) and "must only read" in lines[0], lines[0]
    assert sim.admin.counters().accepted == 0


def _ledger_reasons(engine: Engine, campaign_id: str, status: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT reason, count(*) FROM deliveries WHERE campaign_id = :c AND status = :s "
                "GROUP BY reason"
            ),
            {"c": campaign_id, "s": status},
        ).all()
    return {reason: n for reason, n in rows}


def test_the_report_says_why_rows_were_skipped_or_invalid_and_what_each_time_measures(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    state = asyncio.run(push_campaign(params(audience.name, name="reasons"), return_state=True))
    result = state.result()
    _, artifacts = asyncio.run(_stored(state.state_details.flow_run_id))
    described = {a.key.rsplit("-", 1)[-1]: a.description or "" for a in artifacts}
    assert set(described) == {"progress", "report", "counts", "receipts"}, described
    for starts in ("Progress of", "Report of", "Recipients per status of", "Delivery receipts of"):
        assert [d for d in described.values() if d.startswith(f"{starts} campaign reasons")]
    report = next(str(a.data) for a in artifacts if a.type == "markdown")

    skipped = _ledger_reasons(db_engine, result.campaign_id, "skipped")
    assert len(skipped) >= 2, (
        f"the seed has followers outside the window and unsubscribed: {skipped}"
    )
    for reason, n in skipped.items():
        assert f"| {SKIP_WORDS[reason]} | {n} |" in report, (reason, n)
    invalid = _ledger_reasons(db_engine, result.campaign_id, "invalid")
    assert invalid, "long nicknames make some rows invalid"
    assert all("; got" not in reason for reason in invalid), "rules, not the row's values"
    top = sorted(invalid.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    for reason, n in top:
        assert f"| {reason} | {n} |" in report, (reason, n)

    with db_engine.connect() as conn:
        view = conn.execute(
            text(
                "SELECT duration_seconds, messages_per_second FROM campaign_stats "
                "WHERE campaign_id = :c"
            ),
            {"c": result.campaign_id},
        ).one()
    run_line = next(line for line in report.splitlines() if line.startswith("**Run time:**"))
    assert f"{result.seconds:.2f} s, this run from its start to its end" in run_line
    span = next(line for line in report.splitlines() if line.startswith("**Send span:**"))
    assert f"{view.duration_seconds:.2f} s from the first to the last accepted send" in span
    assert f"{view.messages_per_second:.1f} messages/s" in span, (span, view)
    assert "`campaign_stats`" in span


def test_a_digest_that_preflight_stops_ends_failed_with_the_reason(
    audience: Any, sim: Any, all_logs: Any
) -> None:
    from flows.digest import daily_digest
    from tasks.params import DigestParams

    digest = DigestParams.model_validate(
        {"app": audience.name, "digest_sql": "DELETE FROM recipients WHERE app_id = :app_id"}
    )
    state = asyncio.run(daily_digest(digest, return_state=True))
    assert state.is_failed(), state
    message = state.message or ""
    assert "must only read" in message and "Fix the audience SQL" in message, message
    assert "\n" not in message
    assert "Traceback" not in all_logs.text, all_logs.text[-3000:]
    assert sim.admin.counters().accepted == 0


def test_an_app_block_that_does_not_exist_ends_failed_before_any_campaign_row(
    audience: Any, db_engine: Engine, all_logs: Any
) -> None:
    state = asyncio.run(push_campaign(params("no-such-app", name="nowhere"), return_state=True))
    assert state.is_failed(), state
    message = state.message or ""
    assert "no wechat-app block named 'no-such-app'" in message and "wxpush setup" in message
    assert "Traceback" not in all_logs.text, all_logs.text[-3000:]
    with db_engine.connect() as conn:
        assert campaigns.find_campaign(conn, "nowhere") is None
    _, artifacts = asyncio.run(_stored(state.state_details.flow_run_id))
    stopped = {a.key: a for a in artifacts}["campaign-nowhere-stopped"]
    assert f"**Why:** {message}" in str(stopped.data) and "Campaign ID" not in str(stopped.data)


def test_resuming_a_pruned_campaign_ends_failed_in_one_line_and_sends_nothing(
    audience: Any, db_engine: Engine, sim: Any, all_logs: Any
) -> None:
    """A resume from the UI (the same campaign ID) of a campaign `wxpush db prune` emptied:
    without its ledger it would message everyone again, so the run refuses at the start."""
    from datetime import timedelta

    from db.retention import prune

    first = params(audience.name, campaign_id="pruned")
    done = asyncio.run(push_campaign(first, return_state=True))
    assert done.is_completed(), done
    accepted = sim.admin.counters().accepted
    assert accepted > 0
    prune(db_engine, timedelta(0))
    state = asyncio.run(
        push_campaign(params(audience.name, campaign_id="pruned"), return_state=True)
    )
    assert state.is_failed(), state
    message = state.message or ""
    assert "cannot be resumed" in message and "wxpush db prune" in message, message
    assert "\n" not in message
    assert "Traceback" not in all_logs.text, all_logs.text[-3000:]
    assert sim.admin.counters().accepted == accepted, "nothing sent again"


@pytest.mark.parametrize(
    ("raised", "traceback"),
    [
        (
            AudienceQueryError("the audience SQL took longer than the 2 s timeout; make it faster"),
            False,
        ),
        (ZeroDivisionError("a bug"), True),
    ],
    ids=["expected", "bug"],
)
def test_an_error_in_the_flow_body_keeps_a_traceback_only_when_it_is_a_bug(
    raised: Exception,
    traceback: bool,
    audience: Any,
    db_engine: Engine,
    all_logs: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flows.campaign as flow_module

    def count(*args: Any, **kwargs: Any) -> int:
        raise raised

    monkeypatch.setattr(flow_module, "count_audience", count)
    with api_logging():
        state = asyncio.run(
            push_campaign(params(audience.name, campaign_id="body"), return_state=True)
        )
    assert state.is_failed(), state
    logs, _ = asyncio.run(_stored(state.state_details.flow_run_id))
    stored = "\n".join(log.message for log in logs)
    assert ("Traceback" in stored) is traceback, stored[-3000:]
    with db_engine.connect() as conn:
        record = campaigns.get_campaign(conn, "body")
    assert record is not None and record.status is CampaignStatus.FAILED
    if not traceback:
        assert state.message == record.status_reason and "2 s timeout" in state.message
