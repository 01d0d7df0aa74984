"""The campaign report on its own (no Prefect server): skipped rows by reason and the top
invalid reasons as the ledger groups them, the two throughputs and what each measures (the
second is the `campaign_stats` view's), the artifacts' descriptions, the "why it stopped"
artifact, and which endings count as expected (logged in one line, no traceback)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

import config
from db.campaigns import create_or_resume, find_campaign, set_status
from db.ledger import errcode_counts, ledger_figures, reason_counts, record_outcomes
from db.outcomes import TOP_REASONS, CampaignStatus, DeliveryOutcome, DeliveryStatus, SkipReason
from flows.campaign import CampaignFailed
from sending.message import MessageSpec, invalid_reason, render
from tasks import database
from tasks import report as report_module
from tasks.ending import expected
from tasks.report import CampaignReport, Progress, publish_report, publish_stop, stop_markdown
from wechat.errors import CLASS_FIX, ErrorClass, api_error, lookup

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def _campaign(engine: Engine, outcomes: list[DeliveryOutcome]) -> str:
    with engine.begin() as conn:
        record = create_or_resume(
            conn,
            campaign_id="reasons",
            name="reasons",
            app="default",
            kind="template",
            template_id="TPL",
            parameters={},
            audience_sql="SELECT openid FROM recipients",
        )
        record_outcomes(conn, record.id, outcomes)
        set_status(conn, record.id, CampaignStatus.COMPLETED)
    return record.id


def _row(openid: str, status: DeliveryStatus, reason: str | None = None, **more: Any) -> Any:
    return DeliveryOutcome(openid=openid, status=status, reason=reason, **more)


def _outcomes() -> list[DeliveryOutcome]:
    """4 sent over 2.5 s, 5 skipped for two reasons, 12 invalid breaking 7 rules (4 rows, 3,
    then 1 each: the report lists the top five and sums the last two)."""
    rows = [
        _row(f"s{i}", DeliveryStatus.SENT, msgid=100 + i, sent_at=T0 + timedelta(seconds=s))
        for i, s in enumerate((0.0, 0.5, 1.25, 2.5))
    ]
    rows += [_row(f"w{i}", DeliveryStatus.SKIPPED, SkipReason.OUTSIDE_WINDOW) for i in range(3)]
    rows += [_row(f"u{i}", DeliveryStatus.SKIPPED, SkipReason.UNSUBSCRIBED) for i in range(2)]
    counts = {"a": 4, "b": 3, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1}
    rows += [
        _row(f"i-{rule}-{n}", DeliveryStatus.INVALID, f"data.{rule}.value invalid: empty")
        for rule, count in counts.items()
        for n in range(count)
    ]
    return rows


def test_the_report_shows_skip_and_invalid_reasons_as_the_ledger_groups_them(
    db_engine: Engine,
) -> None:
    campaign = _campaign(db_engine, _outcomes())
    with db_engine.connect() as conn:
        figures = ledger_figures(conn, campaign)
        top = reason_counts(conn, campaign, DeliveryStatus.INVALID)
        record = find_campaign(conn, campaign)
        codes = {str(c): n for c, _cls, n in errcode_counts(conn, campaign)}
    assert figures.skipped == {"outside_window": 3, "unsubscribed": 2}
    assert len(top) == TOP_REASONS, "bounded: the top reasons only"
    assert top[:2] == [("data.a.value invalid: empty", 4), ("data.b.value invalid: empty", 3)]
    lines = CampaignReport.from_record(record, figures, codes).markdown().splitlines()
    assert "## Skipped rows by reason" in lines
    assert "| outside the interaction window | 3 |" in lines
    assert "| unsubscribed | 2 |" in lines
    assert "## Invalid rows by reason" in lines
    assert "| data.a.value invalid: empty | 4 |" in lines
    assert "| data.b.value invalid: empty | 3 |" in lines
    assert "| other reasons | 2 |" in lines, "7 rules: the top five, the last two summed"
    assert lines.index("| skipped | 5 |") < lines.index("## Skipped rows by reason")


def test_wxpush_report_prints_the_reasons(
    db_url: str, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.campaign import report_text

    monkeypatch.setenv("WXPUSH_DATABASE_URL", db_url)
    config.reload()
    database.dispose_all()
    try:
        _campaign(db_engine, _outcomes())
        lines = report_text("reasons").splitlines()
    finally:
        database.dispose_all()
    assert "| outside the interaction window | 3 |" in lines
    assert "| data.a.value invalid: empty | 4 |" in lines and "| other reasons | 2 |" in lines
    assert any(line.startswith("**Send span:** 2.50 s") for line in lines), lines


def test_the_two_throughputs_say_what_they_measure(db_engine: Engine) -> None:
    campaign = _campaign(db_engine, _outcomes())
    with db_engine.connect() as conn:
        figures = ledger_figures(conn, campaign)
        record = find_campaign(conn, campaign)
        view = conn.execute(
            text(
                "SELECT duration_seconds, messages_per_second FROM campaign_stats "
                "WHERE campaign_id = :c"
            ),
            {"c": campaign},
        ).one()
    assert view.duration_seconds == pytest.approx(2.5)
    report = CampaignReport.from_record(record, figures, {})
    assert report.send_seconds == pytest.approx(view.duration_seconds)
    assert report.send_rate == pytest.approx(view.messages_per_second, abs=1e-3)  # 4 / 2.5
    lines = report.markdown().splitlines()
    assert (
        "**Send span:** 2.50 s from the first to the last accepted send, over every run of the "
        "campaign: 1.6 messages/s (the `campaign_stats` view's `duration_seconds` and "
        "`messages_per_second`)"
    ) in lines
    time_line = next(line for line in lines if line.startswith("**Time:**"))
    assert "from the campaign's first start to its last end" in time_line
    assert "for the 4 sent" in time_line

    run = CampaignReport.build(
        campaign_id="c-1",
        name="n",
        status="completed",
        reason=None,
        counts={},
        errcodes={},
        seconds=4.0,
        sent_this_run=4,
        figures=figures,
    )
    run_line = run.markdown().splitlines()[4]
    assert run_line == (
        "**Run time:** 4.00 s, this run from its start to its end (loading the app, preflight, "
        "counting the audience, sending, recording): 1.0 messages/s for the 4 sent this run"
    )


def test_nothing_sent_has_no_send_span() -> None:
    report = CampaignReport.build(
        campaign_id="c-1",
        name="n",
        status="failed",
        reason="x",
        counts={"invalid": 3},
        errcodes={},
        seconds=1.0,
    )
    text_ = report.markdown()
    assert "**Send span:**" not in text_ and "**Run time:** 1.00 s" in text_
    assert "Invalid rows by reason" not in text_, "no reasons known: no empty table"


def test_top_errcodes_say_what_to_do() -> None:
    """Each top errcode's row carries the errcode table's fix; an unknown code its class's."""
    report = CampaignReport.build(
        campaign_id="c-1",
        name="n",
        status="failed",
        reason="x",
        counts={"failed": 4},
        errcodes={"43004": 3, "99999": 1},
        seconds=1.0,
    )
    assert [(e["errcode"], e["fix"]) for e in report.errcodes] == [
        (43004, lookup(43004).fix),
        (99999, CLASS_FIX[ErrorClass.REQUEST]),
    ]
    lines = report.markdown().splitlines()
    assert "| errcode | count | class | meaning | what to do |" in lines
    assert f"| 43004 | 3 | RECIPIENT | {lookup(43004).meaning} | {lookup(43004).fix} |" in lines


def test_invalid_reasons_keep_the_rule_not_the_value() -> None:
    spec = MessageSpec(template_id="T", data={"thing1": "{nick}", "number2": "{n}"})
    problems = render(spec, {"openid": "o", "nick": "秘" * 27, "n": "-5"}, client_msg_id=None)
    assert isinstance(problems, list) and len(problems) == 2
    reason = invalid_reason(problems)
    assert reason.startswith("data.thing1.value invalid: thing allows at most 20 characters; ")
    assert "got" not in reason and "27" not in reason and "秘" not in reason


# -- the artifacts ----------------------------------------------------------------------------


def _captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def create(data: Any = None, **kw: Any) -> str:
        found[kw["key"]] = {"data": data, "description": kw.get("description")}
        return kw["key"]

    async def acreate(*args: Any, **kw: Any) -> str:
        return create(*args, **kw)

    for name in ("create_markdown_artifact", "create_table_artifact"):
        monkeypatch.setattr(report_module, name, create)
    monkeypatch.setattr(report_module, "acreate_progress_artifact", acreate)
    return found


def test_every_artifact_says_what_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    found = _captured(monkeypatch)
    asyncio.run(Progress.start("c-1", "spring", total=10))
    publish_report(
        CampaignReport.build(
            campaign_id="c-1",
            name="spring",
            status="completed",
            reason=None,
            counts={"sent": 2},
            errcodes={},
            seconds=1.0,
            sent_this_run=2,
            receipts={"delivered": 1, "user_block": 0, "system_failed": 0, "awaiting": 1},
        )
    )
    publish_stop(
        "c-2", name="autumn", campaign_id="c-2", status="failed", reason="fix it", counts={}
    )
    described = {key: found[key]["description"] for key in found}
    assert described == {
        "campaign-c-1-progress": "Progress of campaign spring: the share of its audience "
        "handled so far",
        "campaign-c-1-report": "Report of campaign spring (completed): counts, why rows were "
        "skipped or invalid, errcodes, time",
        "campaign-c-1-counts": "Recipients per status of campaign spring, as a table",
        "campaign-c-1-receipts": described["campaign-c-1-receipts"],
        "campaign-c-2-stopped": "Why campaign autumn stopped (failed), and what to fix",
    }
    assert described["campaign-c-1-receipts"].startswith(
        "Delivery receipts of campaign spring at the end of the run (delivery rate 100.0%)"
    )
    assert found["campaign-c-2-stopped"]["data"].startswith("# Campaign autumn stopped: failed")


def test_the_stop_artifact_names_the_fix_and_what_was_done() -> None:
    fresh = stop_markdown(
        name="n", campaign_id="c-1", status="failed", reason="Fix the SQL.", counts={}
    )
    assert fresh.splitlines() == [
        "# Campaign n stopped: failed",
        "",
        "**Why:** Fix the SQL.",
        "**Campaign ID:** `c-1`",
        "",
        "Nothing was sent.",
    ]
    later = stop_markdown(
        name="n",
        campaign_id=None,
        status="paused",
        reason="r",
        counts={"sent": 3, "failed": 0, "skipped": 1},
    )
    assert "Campaign ID" not in later
    assert "So far: 3 sent, 1 skipped. The ledger keeps them" in later


@pytest.mark.parametrize(
    ("exc", "is_expected"),
    [
        (CampaignFailed("The message uses {x} but the audience has no such column"), True),
        (api_error(40125, "invalid appsecret", endpoint="stable_token"), True),
        (ConnectionRefusedError(), True),
        (ZeroDivisionError("1/0"), False),
        (KeyError("x"), False),
        (KeyboardInterrupt(), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_expected_endings_are_the_ones_the_reason_explains(
    exc: BaseException, is_expected: bool
) -> None:
    assert expected(exc) is is_expected
