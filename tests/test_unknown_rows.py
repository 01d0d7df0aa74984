"""Rows in doubt (`unknown`) as an operator meets them: the campaign's final status, the
report and its SQL, `wxpush report`, the resend_unknown switch, and a resume that settles
rows a killed run left in flight (issue 11, point 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from cli.main import app as cli
from db.campaigns import create_or_resume
from db.ledger import record_attempts
from db.outcomes import DEDUPE_WINDOW, Attempt, CampaignStatus
from tasks.params import CampaignParams
from tasks.report import CampaignReport
from tests.campaign_helpers import accepted_openids, expected_statuses, ledger, params
from tests.campaign_helpers import run_campaign as run

MINUTE = timedelta(minutes=1)


def test_unknown_rows_end_a_campaign_with_failures_and_say_what_to_do() -> None:
    from flows.campaign import decide_status
    from sending.sender import StopSignal

    status, reason = decide_status({"sent": 5, "unknown": 2}, StopSignal())
    assert status == CampaignStatus.COMPLETED_WITH_FAILURES
    assert reason is not None and "2 recipients are in doubt" in reason
    assert "--resend-unknown" in reason
    # Still pending rows decide first: the campaign is not finished.
    assert decide_status({"pending": 1, "unknown": 2}, StopSignal())[0] == CampaignStatus.PAUSED
    assert decide_status({"sent": 5}, StopSignal()) == (CampaignStatus.COMPLETED, None)


def _report(counts: dict[str, int]) -> CampaignReport:
    return CampaignReport.build(
        campaign_id="c-1", name="n", status="completed", reason=None, counts=counts,
        errcodes={}, seconds=1.0,
    )  # fmt: skip


def test_the_report_counts_unknown_rows_and_gives_their_sql() -> None:
    text_ = _report({"sent": 3, "unknown": 2}).markdown()
    assert "| unknown | 2 |" in text_
    assert "## Recipients in doubt (unknown)" in text_
    assert "WHERE campaign_id = 'c-1' AND status = 'unknown'" in text_
    assert "wxpush campaign resume c-1 --resend-unknown" in text_
    quiet = _report({"sent": 3, "unknown": 0}).markdown()
    assert "in doubt" not in quiet and "unknown" not in quiet


def test_resend_unknown_needs_a_campaign_to_continue() -> None:
    with pytest.raises(ValidationError, match="resend_unknown needs the campaign_id"):
        params("default", resend_unknown=True)
    assert params("default", campaign_id="c-1", resend_unknown=True).resend_unknown


def test_resume_parameters_carry_the_operators_choice() -> None:
    from tasks.resume import resume_parameters

    class Record:
        id = "c-1"
        parameters = params("default").model_dump(mode="json")

    plain = CampaignParams.model_validate(resume_parameters(Record(), retry_failed=False))
    asked = CampaignParams.model_validate(
        resume_parameters(Record(), retry_failed=False, resend_unknown=True)
    )
    assert (plain.campaign_id, plain.resend_unknown) == ("c-1", False)
    assert asked.resend_unknown and not asked.retry_failed


def test_wxpush_report_lists_unknown_rows(
    db_url: str, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import database

    monkeypatch.setenv("WXPUSH_DATABASE_URL", db_url)
    database.dispose_all()
    long_ago = datetime.now(UTC) - 2 * DEDUPE_WINDOW
    with db_engine.begin() as conn:
        create_or_resume(
            conn, campaign_id="doubt-1", name="in doubt", app="default", kind="template",
            template_id="T", parameters={}, audience_sql="SELECT 1",
        )  # fmt: skip
        record_attempts(conn, "doubt-1", [Attempt("o1", "c1", long_ago)])
        record_attempts(conn, "doubt-1", [Attempt("o1", "c1", datetime.now(UTC))])
    try:
        out = CliRunner().invoke(cli, ["report", "doubt-1"])
    finally:
        database.dispose_all()
    assert out.exit_code == 0, out.output
    assert "| unknown | 1 |" in out.output
    sql = out.output.split("## Recipients in doubt (unknown)")[1].split("```sql\n")[1]
    with db_engine.connect() as conn:
        listed = conn.execute(text(sql.split("```")[0])).all()
    assert [row.openid for row in listed] == ["o1"]


@pytest.mark.harness
def test_a_resume_leaves_rows_in_doubt_alone_until_the_operator_asks(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    """A campaign whose killed run left three recipients in flight: two 15 and 20 minutes
    ago, one a minute ago (inside WeChat's window). The resume sends the young one and
    everyone else once, and leaves the two old ones `unknown`; a plain resume after that
    sends nothing; a resume with resend_unknown sends those two, and only those."""
    from sending.message import client_msg_id_for

    p = params(audience.name, campaign_id="doubt-run")
    will_send = sorted(
        o for o, (status, _) in expected_statuses(db_engine, sim.app_id).items() if status == "sent"
    )
    old_a, old_b, young = will_send[:3]
    now = datetime.now(UTC)
    with db_engine.begin() as conn:
        create_or_resume(
            conn, campaign_id="doubt-run", name=p.name, app=p.app, kind=p.kind,
            template_id=p.template_id, parameters=p.model_dump(mode="json"),
            audience_sql="SELECT 1",
        )  # fmt: skip
        for openid, ago in ((old_a, 15), (old_b, 20), (young, 1)):
            cmid = client_msg_id_for("doubt-run", openid)
            record_attempts(conn, "doubt-run", [Attempt(openid, cmid, now - ago * MINUTE)])

    first = run(p)
    rows = ledger(db_engine, "doubt-run")
    assert (rows[old_a]["status"], rows[old_a]["reason"]) == ("unknown", "no_answer")
    assert rows[old_b]["status"] == "unknown"
    assert rows[young]["status"] == "sent"
    assert first.status == CampaignStatus.COMPLETED_WITH_FAILURES
    assert first.counts["unknown"] == 2
    seen = accepted_openids(sim)
    assert old_a not in seen and old_b not in seen
    assert max(seen.values()) == 1

    again = run(params(audience.name, campaign_id="doubt-run"))
    assert again.sent_this_run == 0 and again.counts["unknown"] == 2
    listed = CliRunner().invoke(cli, ["campaign", "list"])
    assert listed.output.splitlines()[0].split()[:6] == [
        "id", "status", "sent", "failed", "pending", "unknown",
    ]  # fmt: skip
    row = next(line.split() for line in listed.output.splitlines() if "doubt-run" in line)
    assert row[1:6] == ["completed_with_failures", str(again.counts["sent"]), "2", "0", "2"]

    asked = run(params(audience.name, campaign_id="doubt-run", resend_unknown=True))
    assert asked.sent_this_run == 2 and asked.counts["unknown"] == 0
    resent = accepted_openids(sim)
    assert resent[old_a] == resent[old_b] == 1
    assert sum(resent.values()) == sum(seen.values()) + 2
