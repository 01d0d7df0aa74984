"""One run per campaign (db/run_lock.py): a second run of a campaign that is still sending is
refused in one line before it sends anything, and the first finishes with everyone messaged
once; a holder killed with SIGKILL frees the campaign at once; every way a run ends frees it.
Real Prefect server, real simulator, child processes; SQLite, and PostgreSQL when configured.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from db import campaigns
from db.engine import make_engine
from db.outcomes import CampaignStatus
from db.run_lock import CampaignBusy, hold_campaign, lock_file
from flows.campaign import push_campaign
from tests.campaign_helpers import (
    DATA,
    ROOT,
    assert_exactly_once,
    params,
    start_cli_campaign,
    wait_until_accepted,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.harness

BUSY = "is being sent by another run"
#: The seeded audience has followers WeChat refuses, so a full send ends either way.
ENDED_WELL = (CampaignStatus.COMPLETED, CampaignStatus.COMPLETED_WITH_FAILURES)

#: A process that holds campaign argv[2] of database argv[1] until it is killed.
HOLDER = """
import sys, time
from db.engine import make_engine
from db.run_lock import hold_campaign
with hold_campaign(make_engine(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def _busy(engine: Engine, campaign_id: str) -> str | None:
    """The refusal a run would get now, or None when the campaign is free (then released)."""
    try:
        with hold_campaign(engine, campaign_id):
            return None
    except CampaignBusy as busy:
        return str(busy)


def test_a_second_run_of_a_sending_campaign_is_refused_in_one_line_and_sends_nothing(
    audience: Any, db_engine: Engine, db_url: str, sim: Any, prefect_harness: Any
) -> None:
    from cli.main import app as cli

    first = start_cli_campaign(
        audience.name, db_url, prefect_harness, name="twice", campaign_id="twice", rate="40"
    )
    try:
        wait_until_accepted(first, sim, 20)
        # The first run must still be sending while the second ones try: every answer now
        # takes 4 s (16 at a time), so its 280 other rows need a minute; normal again below.
        sim.admin.set_faults(slow_rate=1.0, slow_seconds=4.0)
        with db_engine.connect() as conn:
            holder = campaigns.get_campaign(conn, "twice")
        assert holder is not None and holder.status is CampaignStatus.RUNNING
        # A resume from the UI (the same campaign ID) while the first run sends.
        state = asyncio.run(
            push_campaign(params(audience.name, campaign_id="twice"), return_state=True)
        )
        assert state.is_failed(), state
        message = state.message or ""
        assert BUSY in message and f"(flow run {holder.flow_run_id})" in message, message
        assert "wxpush campaign cancel twice" in message and "\n" not in message
        # `wxpush campaign resume` in a terminal: the refusal in one line, no traceback.
        out = CliRunner().invoke(cli, ["campaign", "resume", "twice", "--here"])
        assert out.exit_code == 1, out.output
        assert "Traceback" not in out.output, out.output
        refusals = [line for line in out.output.splitlines() if BUSY in line]
        assert len(refusals) == 1 and "The campaign run ended Failed" in refusals[0], out.output
        with db_engine.connect() as conn:
            still = campaigns.get_campaign(conn, "twice")
        assert still is not None and still.run_count == 1, "the refused runs never touched it"
        assert still.flow_run_id == holder.flow_run_id
        sim.admin.set_faults(slow_rate=0.0)
        output, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == 0, output[-3000:]
    with db_engine.connect() as conn:
        done = campaigns.get_campaign(conn, "twice")
    assert done is not None and done.status in ENDED_WELL, done.status
    assert_exactly_once(db_engine, sim, sim.app_id, "twice")


def test_a_holder_killed_with_sigkill_frees_the_campaign_at_once(db_url: str) -> None:
    engine = make_engine(db_url, poolclass=NullPool)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db_url, "killed-holder"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refusal = _busy(engine, "killed-holder")
        assert refusal is not None and "campaign killed-holder" in refusal, refusal
        assert _busy(engine, "another-campaign") is None, "only that campaign is held"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        # No lease to run out: the kernel (SQLite) or the server (PostgreSQL, once it sees
        # the socket close: measured 22-50 ms, first try) releases it. Bounded, not timed.
        wait_until(lambda: _busy(engine, "killed-holder") is None, "the lock is free", 10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        engine.dispose()


def test_two_runs_in_one_process_conflict_and_the_lock_file_sits_beside_the_database(
    db_url: str,
) -> None:
    engine = make_engine(db_url, poolclass=NullPool)
    try:
        with hold_campaign(engine, "same-process"):
            assert BUSY in (_busy(engine, "same-process") or "")
        assert _busy(engine, "same-process") is None, "released at the end of the block"
    finally:
        engine.dispose()
    if engine.url.get_backend_name() == "sqlite":
        path = lock_file(str(engine.url.database), "same-process")
        assert path.parent.name.endswith(".db.locks") and path.exists()


def test_an_in_memory_sqlite_database_is_held_within_the_process() -> None:
    engine = make_engine("sqlite://")
    try:
        with hold_campaign(engine, "memory"):
            assert BUSY in (_busy(engine, "memory") or "")
        assert _busy(engine, "memory") is None
    finally:
        engine.dispose()


def test_a_run_that_failed_or_raised_frees_the_campaign_for_a_resume(
    audience: Any, db_engine: Engine, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.campaign as flow_module

    # Preflight refuses it: Failed, nothing sent.
    broken = params(audience.name, campaign_id="ends", data={**DATA, "thing1": "{no_such_column}"})
    state = asyncio.run(push_campaign(broken, return_state=True))
    assert state.is_failed() and BUSY not in (state.message or ""), state
    assert _busy(db_engine, "ends") is None

    # A bug in the body: the run fails with its traceback; the campaign is free all the same.
    def count(*args: Any, **kwargs: Any) -> int:
        raise ZeroDivisionError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(flow_module, "count_audience", count)
        state = asyncio.run(
            push_campaign(params(audience.name, campaign_id="ends"), return_state=True)
        )
    assert state.is_failed() and BUSY not in (state.message or ""), state
    assert _busy(db_engine, "ends") is None

    # The resume sends everyone once.
    state = asyncio.run(push_campaign(params(audience.name, campaign_id="ends"), return_state=True))
    assert state.is_completed(), state.message
    assert_exactly_once(db_engine, sim, sim.app_id, "ends")


def test_a_late_hook_of_a_run_that_let_go_leaves_the_resumed_campaign_alone(
    db_url: str, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's hooks (cancel, crash, failure) run after its body released the campaign: if a
    resume took the row over in that moment, the old run's hook must not close it."""
    from flows.campaign import _close
    from sending.sender import StopSignal
    from tasks import database

    monkeypatch.setenv("WXPUSH_DATABASE_URL", db_url)
    database.dispose_all()
    with db_engine.begin() as conn:
        campaigns.create_or_resume(
            conn,
            campaign_id="taken-over",
            name="taken-over",
            app="app",
            kind="template",
            template_id="T",
            parameters={},
            audience_sql="SELECT 1",
            flow_run_id="the-resume",
        )
    stop = StopSignal()
    stop.set("stop", "the run failed")
    try:
        status, _, _ = _close("taken-over", stop, owner="the-old-run")
        assert status is CampaignStatus.RUNNING
        with db_engine.connect() as conn:
            record = campaigns.get_campaign(conn, "taken-over")
        assert record is not None and record.status is CampaignStatus.RUNNING
        status, _, _ = _close("taken-over", stop, owner="the-resume")
        assert status is CampaignStatus.FAILED, "its own run's hook still closes it"
    finally:
        database.dispose_all()
