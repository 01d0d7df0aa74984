"""The campaign report's "Delivery receipts" section, on SQLite and PostgreSQL: WeChat's
TEMPLATESENDJOBFINISH receipts arrive after the send, so the end-of-run report shows what came
back so far and `wxpush report` the figures as they are now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete

from db.callbacks import CallbackRecord, apply_callbacks
from db.campaigns import create_or_resume, find_campaign, set_status
from db.ledger import (
    errcode_counts,
    ledger_figures,
    receipt_counts,
    record_outcomes,
    status_counts,
)
from db.models import callback_events
from db.outcomes import CampaignStatus, DeliveryOutcome, DeliveryStatus, SkipReason
from tasks import database
from tasks import report as report_module
from tasks.report import CampaignReport, publish_report

APP = "wx0123456789abcdef"
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
# Ten sent rows: their msgids, and the receipt each gets (None: none arrived yet).
SENT: dict[str, tuple[int, str | None]] = {
    "o-01": (1001, "delivered"),
    "o-02": (1002, "delivered"),
    "o-03": (1003, "delivered"),
    "o-04": (1004, "delivered"),
    "o-05": (1005, "delivered"),
    "o-06": (1006, "user_block"),
    "o-07": (1007, "user_block"),
    "o-08": (1008, "system_failed"),
    "o-09": (1009, None),
    "o-10": (1010, None),
}


@pytest.fixture
def ledger(db_engine: Engine) -> Engine:
    """`db_engine` with no stored callbacks either (the shared fixture empties the main
    tables only); the tests that need no database do not take it, so they run once."""
    with db_engine.begin() as connection:
        connection.execute(delete(callback_events))
    return db_engine


def start(engine: Engine, name: str) -> str:
    with engine.begin() as connection:
        record = create_or_resume(
            connection,
            campaign_id=None,
            name=name,
            app="default",
            kind="template",
            template_id="TPL",
            parameters={},
            audience_sql="SELECT openid FROM recipients",
        )
    return record.id


def record(engine: Engine, campaign_id: str, outcomes: list[DeliveryOutcome]) -> None:
    with engine.begin() as connection:
        record_outcomes(connection, campaign_id, outcomes)
        counts = status_counts(connection, campaign_id)
        set_status(
            connection,
            campaign_id,
            CampaignStatus.COMPLETED_WITH_FAILURES
            if counts["failed"]
            else CampaignStatus.COMPLETED,
            counts={k: v for k, v in counts.items() if k != "pending"},
        )


def sent(openid: str, msgid: int) -> DeliveryOutcome:
    return DeliveryOutcome(
        openid=openid, status=DeliveryStatus.SENT, msgid=msgid, attempts=1, sent_at=T0
    )


def others() -> list[DeliveryOutcome]:
    """Rows that never get a receipt: a refusal, a skip, an invalid message."""
    return [
        DeliveryOutcome(
            openid="o-failed",
            status=DeliveryStatus.FAILED,
            errcode=43004,
            error_class="RECIPIENT",
            attempts=1,
        ),
        DeliveryOutcome(
            openid="o-skipped", status=DeliveryStatus.SKIPPED, reason=SkipReason.OUTSIDE_WINDOW
        ),
        DeliveryOutcome(openid="o-invalid", status=DeliveryStatus.INVALID, reason="thing1 > 20"),
    ]


def receive(engine: Engine, receipts: dict[str, tuple[int, str | None]]) -> None:
    """The receipts as the callback receiver writes them (db.callbacks.apply_callbacks)."""
    records = [
        CallbackRecord(
            app_id=APP,
            dedupe_key=f"receipt:{msgid}",
            openid=openid,
            kind="receipt",
            occurred_at=T0 + MINUTE,
            msg_type="event",
            event="TEMPLATESENDJOBFINISH",
            msgid=msgid,
            receipt_status=status,
        )
        for openid, (msgid, status) in receipts.items()
        if status is not None
    ]
    with engine.begin() as connection:
        assert apply_callbacks(connection, records).receipts_matched == len(records)


def report_from_ledger(engine: Engine, campaign_id: str) -> CampaignReport:
    with engine.connect() as connection:
        stored = find_campaign(connection, campaign_id)
        figures = ledger_figures(connection, campaign_id)
        codes = {str(c): n for c, _cls, n in errcode_counts(connection, campaign_id)}
    return CampaignReport.from_record(stored, figures, codes)


def test_receipt_counts_and_the_report_lines(ledger: Engine) -> None:
    campaign = start(ledger, "receipts")
    record(ledger, campaign, [sent(o, m) for o, (m, _) in SENT.items()] + others())
    receive(ledger, SENT)
    # Another campaign's receipts do not leak in.
    other = start(ledger, "other")
    record(ledger, other, [sent("o-x", 2001)])
    receive(ledger, {"o-x": (2001, "delivered")})

    with ledger.connect() as connection:
        counts = receipt_counts(connection, campaign)
    assert counts == {
        "delivered": 5,
        "user_block": 2,
        "freq_limited": 0,
        "system_failed": 1,
        "awaiting": 2,
    }

    report = report_from_ledger(ledger, campaign)
    assert report.delivery_rate == pytest.approx(5 / 8)
    lines = report.markdown().splitlines()
    assert "## Delivery receipts" in lines
    for line in (
        "| delivered | 5 |",
        "| blocked by the user | 2 |",
        "| failed in WeChat | 1 |",
        "| not yet received | 2 |",
        "**Delivery rate:** 62.5% (5 delivered of the 8 receipts received so far)",
    ):
        assert line in lines, line
    explanation = next(line for line in lines if line.startswith("WeChat reports"))
    assert "after the send" in explanation and f"`wxpush report {campaign}`" in explanation
    # The section sits between the status table and the errcodes.
    assert lines.index("| sent | 10 |") < lines.index("## Delivery receipts")
    assert lines.index("## Delivery receipts") < lines.index("## Top errcodes")


def test_no_section_without_sent_rows(ledger: Engine) -> None:
    campaign = start(ledger, "nothing-sent")
    record(ledger, campaign, others())
    with ledger.connect() as connection:
        assert receipt_counts(connection, campaign) == {
            "delivered": 0,
            "user_block": 0,
            "freq_limited": 0,
            "system_failed": 0,
            "awaiting": 0,
        }
    text = report_from_ledger(ledger, campaign).markdown()
    assert "Delivery receipts" not in text and "Delivery rate" not in text
    assert "| failed | 1 |" in text


def test_sent_but_no_receipt_yet(ledger: Engine) -> None:
    campaign = start(ledger, "just-sent")
    record(ledger, campaign, [sent(o, m) for o, (m, _) in SENT.items()])
    report = report_from_ledger(ledger, campaign)
    assert report.delivery_rate is None
    lines = report.markdown().splitlines()
    assert "| not yet received | 10 |" in lines and "| delivered | 0 |" in lines
    assert "**Delivery rate:** not known yet: no receipt has arrived so far." in lines


def test_report_text_shows_receipts_written_after_the_run(
    db_url: str, ledger: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.campaign import report_text

    monkeypatch.setenv("WXPUSH_DATABASE_URL", db_url)
    database.dispose_all()
    try:
        campaign = start(ledger, "later")
        record(ledger, campaign, [sent(o, m) for o, (m, _) in SENT.items()])
        before = report_text("later").splitlines()
        assert "| not yet received | 10 |" in before
        assert "**Delivery rate:** not known yet: no receipt has arrived so far." in before

        receive(ledger, SENT)  # the callback receiver, after the run
        after = report_text(campaign).splitlines()
        assert "| delivered | 5 |" in after and "| not yet received | 2 |" in after
        assert "| blocked by the user | 2 |" in after and "| failed in WeChat | 1 |" in after
        assert "**Delivery rate:** 62.5% (5 delivered of the 8 receipts received so far)" in after
    finally:
        database.dispose_all()


# -- what the run publishes (no database needed) ------------------------------------------------


def build(counts: dict[str, int], receipts: dict[str, int] | None, **extra: Any) -> CampaignReport:
    return CampaignReport.build(
        campaign_id="c-1",
        name="n",
        status="completed",
        reason=None,
        counts=counts,
        errcodes={},
        seconds=1.0,
        sent_this_run=counts.get("sent", 0),
        receipts=receipts,
        **extra,
    )


def published(monkeypatch: pytest.MonkeyPatch, report: CampaignReport) -> dict[str, Any]:
    found: dict[str, Any] = {}
    monkeypatch.setattr(
        report_module, "create_markdown_artifact", lambda md, **kw: found.update({kw["key"]: md})
    )
    monkeypatch.setattr(
        report_module, "create_table_artifact", lambda rows, **kw: found.update({kw["key"]: rows})
    )
    publish_report(report)
    return found


def test_the_run_publishes_a_receipt_table(monkeypatch: pytest.MonkeyPatch) -> None:
    receipts = {"delivered": 3, "user_block": 0, "system_failed": 1, "awaiting": 6}
    found = published(monkeypatch, build({"sent": 10}, receipts))
    assert found["campaign-c-1-receipts"] == [
        {"receipt": "delivered", "messages": 3},
        {"receipt": "blocked by the user", "messages": 0},
        {"receipt": "held back by WeChat (sent too often)", "messages": 0},
        {"receipt": "failed in WeChat", "messages": 1},
        {"receipt": "not yet received", "messages": 6},
    ]
    assert "## Delivery receipts" in found["campaign-c-1-report"]
    assert "**Delivery rate:** 75.0%" in found["campaign-c-1-report"]


@pytest.mark.parametrize(
    ("counts", "receipts", "extra"),
    [
        pytest.param(
            {"sent": 0, "failed": 4},
            dict.fromkeys(
                ("delivered", "user_block", "freq_limited", "system_failed", "awaiting"), 0
            ),
            {},
            id="nothing-sent",
        ),
        pytest.param({"would_send": 5}, None, {"dry_run": True}, id="dry-run"),
    ],
)
def test_no_receipt_table_without_sent_rows(
    monkeypatch: pytest.MonkeyPatch,
    counts: dict[str, int],
    receipts: dict[str, int] | None,
    extra: dict[str, Any],
) -> None:
    found = published(monkeypatch, build(counts, receipts, **extra))
    assert "campaign-c-1-receipts" not in found
    assert "Delivery receipts" not in found["campaign-c-1-report"]
