"""A `wxpush campaign run` killed with SIGKILL mid-send, then resumed (issue 11): past
WeChat's 10-minute client_msg_id dedupe window the rows the killed run left in flight become
`unknown` and are not sent again, until the operator asks (resend_unknown); inside the window
they are sent again with the same client_msg_id and WeChat (the simulator) drops the repeat.
A real CLI process, the simulator and the Prefect harness; SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from typer.testing import CliRunner

from cli.main import app as cli
from db import campaigns
from db.models import deliveries
from db.outcomes import (
    DEDUPE_WINDOW,
    CampaignStatus,
    DeliveryStatus,
    PendingReason,
    UnknownReason,
)
from sending.message import client_msg_id_for
from tests.campaign_helpers import (
    accepted_openids,
    assert_exactly_once,
    expected_statuses,
    ledger,
    params,
    start_cli_campaign,
    wait_until_accepted,
)
from tests.campaign_helpers import run_campaign as run

pytestmark = pytest.mark.harness

#: A share of the simulator's answers comes this late, so several sends are always on the
#: wire when the kill comes; below the 10 s request timeout, so nothing is retried.
SLOW_SECONDS = 2.0
#: How far both clocks move: past WeChat's dedupe window (and the ledger's safety margin).
PAST_THE_WINDOW = DEDUPE_WINDOW + timedelta(minutes=1)
#: Accepted messages the ledger does not record yet when the kill comes.
UNRECORDED_AT_KILL = 3


def _kill_mid_send(
    audience: Any, db_engine: Engine, db_url: str, sim: Any, harness: Any, campaign_id: str
) -> tuple[set[str], Counter[str], Counter[str]]:
    """Start the CLI campaign, SIGKILL it while answers WeChat gave are not recorded yet and
    slow sends are on the wire, and wait until those could have landed in the simulator.
    Returns the openids the ledger still holds in flight, and the simulator's accepted
    counts at the kill and after."""
    sim.admin.set_faults(slow_rate=0.3, slow_seconds=SLOW_SECONDS)
    proc = start_cli_campaign(
        audience.name, db_url, harness, name="killed", campaign_id=campaign_id, rate="40"
    )
    try:
        wait_until_accepted(proc, sim, 30)
        _wait_for_unrecorded_answers(proc, sim, db_engine, campaign_id)
    finally:
        proc.send_signal(signal.SIGKILL)  # no handler, no flush: the answers in memory are lost
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    at_kill = accepted_openids(sim)
    # A slow request the dead process left on the wire could still land (WeChat may act on a
    # request whose caller is gone; the simulator drops it): wait, so no repeat races it.
    time.sleep(SLOW_SECONDS + 1)
    landed = accepted_openids(sim)
    sim.admin.set_faults()  # the resumes get prompt answers

    rows = ledger(db_engine, campaign_id)
    in_flight = {
        openid
        for openid, row in rows.items()
        if row["status"] == DeliveryStatus.PENDING and row["reason"] == PendingReason.IN_FLIGHT
    }
    assert len(rows) < 300, "the run was killed mid-way"
    assert in_flight, "the kill left rows in flight"
    recorded = {o for o, row in rows.items() if row["status"] == DeliveryStatus.SENT}
    for openid in in_flight:
        assert rows[openid]["client_msg_id"] == client_msg_id_for(campaign_id, openid)
        assert rows[openid]["last_attempt_at"] is not None
    unrecorded = {o: (rows[o]["status"], rows[o]["reason"]) for o in landed if o not in recorded}
    assert in_flight & set(landed), f"some in-flight rows did reach WeChat: {unrecorded}"
    assert recorded <= set(at_kill), "only what WeChat accepted is recorded sent"
    assert set(landed) <= recorded | in_flight, "everything WeChat accepted is in the ledger"
    print(
        f"{campaign_id}: {len(at_kill)} accepted at the kill, {len(landed)} after the slow "
        f"answers; {len(recorded)} recorded sent, {len(in_flight)} in flight, of which "
        f"{len(in_flight & set(landed))} reached the simulator"
    )
    return in_flight, at_kill, landed


def _wait_for_unrecorded_answers(
    proc: subprocess.Popen[str], sim: Any, db_engine: Engine, campaign_id: str
) -> None:
    """Return just after a ledger flush, once WeChat accepted a few messages the ledger
    does not record `sent` yet (their answers wait for the next flush, ≤ 1 s away): a kill
    then loses answers to messages that went out, the case `unknown` is for."""
    query = text("SELECT count(*) FROM deliveries WHERE campaign_id = :c AND status = 'sent'")

    def unrecorded() -> int:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        accepted = sim.admin.counters().accepted
        with db_engine.connect() as conn:
            return accepted - int(conn.execute(query, {"c": campaign_id}).scalar_one())

    flushed = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        gap = unrecorded()
        flushed = flushed or gap <= 1
        if flushed and gap >= UNRECORDED_AT_KILL:
            # Once more a moment later: a flush that was committing is seen by now.
            time.sleep(0.03)
            if unrecorded() >= gap:
                return
            flushed = False
    raise AssertionError("no ledger flush followed by unrecorded answers within 30 s")


def _age(db_engine: Engine, campaign_id: str, openids: set[str], by: timedelta) -> None:
    """Stands for `by` passing on the ledger's side: the ledger judges the dedupe window by
    the real clock, so the in-flight attempts are moved back instead of the test waiting."""
    with db_engine.begin() as conn:
        rows = conn.execute(
            select(deliveries.c.openid, deliveries.c.first_attempt_at, deliveries.c.last_attempt_at)
            .where(deliveries.c.campaign_id == campaign_id)
            .where(deliveries.c.openid.in_(sorted(openids)))
        ).all()
        assert len(rows) == len(openids)
        for row in rows:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.campaign_id == campaign_id)
                .where(deliveries.c.openid == row.openid)
                .values(
                    first_attempt_at=row.first_attempt_at and row.first_attempt_at - by,
                    last_attempt_at=row.last_attempt_at - by,
                )
            )


def test_a_resume_past_the_window_leaves_the_killed_runs_sends_in_doubt(
    audience: Any, db_engine: Engine, db_url: str, sim: Any, prefect_harness: Any
) -> None:
    campaign_id = "killed-late"
    in_flight, _, landed = _kill_mid_send(
        audience, db_engine, db_url, sim, prefect_harness, campaign_id
    )

    # Eleven minutes pass, on both sides: WeChat (the simulator) no longer drops a repeat of
    # the same client_msg_id, and the ledger's in-flight attempts are as old.
    sim.admin.advance(PAST_THE_WINDOW.total_seconds())
    _age(db_engine, campaign_id, in_flight, PAST_THE_WINDOW)

    first = run(params(audience.name, name="killed", campaign_id=campaign_id))
    expected = expected_statuses(db_engine, sim.app_id)
    rows = ledger(db_engine, campaign_id)
    seen = accepted_openids(sim)
    assert set(rows) == set(expected), "every audience row has exactly one ledger row"
    assert max(seen.values()) == 1, "nobody got a message twice"
    for openid in seen:
        assert rows[openid]["status"] in ("sent", "unknown"), rows[openid]
    for openid in in_flight:
        assert rows[openid]["status"] == DeliveryStatus.UNKNOWN, rows[openid]
        assert rows[openid]["reason"] == UnknownReason.NO_ANSWER, rows[openid]
        assert seen[openid] == landed[openid], f"{openid} was in doubt and sent again"
    for openid, (status, _) in expected.items():
        if openid not in in_flight:
            assert rows[openid]["status"] == status, (openid, rows[openid], status)
    assert {o for o, row in rows.items() if row["status"] == "sent"} <= set(seen)
    assert first.status == CampaignStatus.COMPLETED_WITH_FAILURES
    assert first.counts["unknown"] == len(in_flight)
    with db_engine.connect() as conn:
        record = campaigns.get_campaign(conn, campaign_id)
    assert record is not None and record.status is CampaignStatus.COMPLETED_WITH_FAILURES
    assert f"{len(in_flight)} recipients are in doubt" in (record.status_reason or "")
    assert "wxpush campaign resume --resend-unknown" in (record.status_reason or "")

    report = CliRunner().invoke(cli, ["report", campaign_id])
    assert report.exit_code == 0, report.output
    assert f"| unknown | {len(in_flight)} |" in report.output
    assert f"wxpush campaign resume {campaign_id} --resend-unknown" in report.output
    sql = report.output.split("## Recipients in doubt (unknown)")[1].split("```sql\n")[1]
    with db_engine.connect() as conn:
        listed = {row.openid for row in conn.execute(text(sql.split("```")[0]))}
    assert listed == in_flight, "the report's SQL lists exactly the rows in doubt"

    # The operator's explicit choice: send the rows in doubt again. Past the window the
    # simulator accepts each once more, even those the killed run had delivered.
    before = accepted_openids(sim)
    asked = run(params(audience.name, name="killed", campaign_id=campaign_id, resend_unknown=True))
    after = accepted_openids(sim)
    rows = ledger(db_engine, campaign_id)
    resent = {o for o in in_flight if expected[o][0] == "sent"}
    assert after - before == Counter(resent), "exactly the rows in doubt were sent again"
    for openid in in_flight:
        status, detail = expected[openid]
        assert rows[openid]["status"] == status, (openid, rows[openid])
        if status == "failed":
            assert rows[openid]["errcode"] == detail
    assert asked.sent_this_run == len(resent)
    assert asked.counts.get("unknown", 0) == 0 and asked.counts.get("pending", 0) == 0
    assert asked.status in (CampaignStatus.COMPLETED, CampaignStatus.COMPLETED_WITH_FAILURES)
    assert "in doubt" not in (asked.reason or "")
    assert {o: s for o, (s, _) in expected.items()} == {o: r["status"] for o, r in rows.items()}


def test_a_resume_inside_the_window_sends_the_killed_runs_sends_once(
    audience: Any, db_engine: Engine, db_url: str, sim: Any, prefect_harness: Any
) -> None:
    """No clock moves: the resume sends the in-flight rows again with the same
    client_msg_id, and the simulator drops the repeats of those it had accepted."""
    campaign_id = "killed-early"
    in_flight, _, landed = _kill_mid_send(
        audience, db_engine, db_url, sim, prefect_harness, campaign_id
    )
    delivered = in_flight & set(landed)
    messages = {m.openid: m for m in sim.admin.iter_messages()}
    deduplicated = sim.admin.counters().deduplicated

    result = run(params(audience.name, name="killed", campaign_id=campaign_id))
    assert result.counts.get("unknown", 0) == 0
    assert_exactly_once(db_engine, sim, sim.app_id, campaign_id)
    repeats = sim.admin.counters().deduplicated - deduplicated
    assert repeats == len(delivered), "each delivered in-flight row was repeated and dropped"
    rows = ledger(db_engine, campaign_id)
    for openid in delivered:
        # The answer to the repeat carries the msgid of the message the killed run sent.
        assert int(rows[openid]["msgid"]) == messages[openid].msgid
        assert messages[openid].client_msg_id == client_msg_id_for(campaign_id, openid)
    for message in sim.admin.iter_messages():
        assert message.client_msg_id == client_msg_id_for(campaign_id, message.openid)
