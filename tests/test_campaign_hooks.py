"""A run that ends outside the flow body (cancelled in the UI, crashed) still leaves the
campaign row saying so, with the ledger's counts, and ready to be resumed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import Engine

from db import campaigns
from db.ledger import record_outcomes
from db.outcomes import CampaignStatus, DeliveryOutcome, DeliveryStatus
from flows.campaign import _end_abnormally
from tasks import database


@pytest.mark.parametrize(
    ("status", "word"),
    [(CampaignStatus.CANCELLED, "cancelled"), (CampaignStatus.FAILED, "crashed")],
)
def test_hook_records_how_the_run_ended(
    db_url: str,
    db_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    status: CampaignStatus,
    word: str,
) -> None:
    monkeypatch.setenv("WXPUSH_DATABASE_URL", db_url)
    database.dispose_all()
    with db_engine.begin() as conn:
        record = campaigns.create_or_resume(
            conn,
            campaign_id="c-hook",
            name="hook",
            app="default",
            kind="template",
            template_id="t",
            parameters={},
            audience_sql="SELECT openid FROM recipients",
            flow_run_id="run-1",
        )
        record_outcomes(conn, "c-hook", [DeliveryOutcome("o1", DeliveryStatus.SENT, msgid=1)])
    assert record.status is CampaignStatus.RUNNING
    hook = _end_abnormally(status, f"the run was {word}")
    hook(None, SimpleNamespace(id="run-1"), None)
    hook(None, SimpleNamespace(id="no-such-run"), None)  # another run: nothing to do
    with db_engine.connect() as conn:
        stored = campaigns.get_campaign(conn, "c-hook")
    assert stored is not None and stored.status is status
    assert stored.status_reason == f"the run was {word}"
    assert stored.sent_count == 1
    database.dispose_all()
