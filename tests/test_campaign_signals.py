"""`wxpush campaign run` stopped by SIGTERM or Ctrl-C (SIGINT): the campaign row ends `paused`
with a reason, every answer WeChat gave is in the ledger, the exit code is non-zero and the
terminal gets one clear line, not a traceback. A real CLI process, the simulator and the
Prefect harness; SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from db import campaigns
from db.outcomes import CampaignStatus
from tests.campaign_helpers import accepted_openids, assert_exactly_once, ledger, params
from tests.campaign_helpers import run_campaign as run

pytestmark = pytest.mark.harness
ROOT = Path(__file__).resolve().parents[1]


def _start(
    audience: Any, db_url: str, prefect_harness: Any, campaign_id: str, rate: str = "5"
) -> Any:
    p = params(audience.name)
    argv = [
        sys.executable,
        "-m",
        "cli.main",
        "campaign",
        "run",
        "--name",
        "signalled",
        "--app",
        audience.name,
        "--campaign-id",
        campaign_id,
        "--template-id",
        str(p.template_id),
        "--rate",
        rate,
        "--batch-size",
        "20",
        *[f"--data={k}={v}" for k, v in p.data.items()],
    ]
    env = {
        **os.environ,
        **prefect_harness.env(),
        "WXPUSH_DATABASE_URL": db_url,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize(
    ("signum", "code", "words"),
    [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")],
    ids=["sigterm", "sigint"],
)
def test_a_signal_pauses_the_campaign_and_keeps_every_answer(
    audience: Any,
    db_engine: Engine,
    db_url: str,
    sim: Any,
    prefect_harness: Any,
    signum: int,
    code: int,
    words: str,
) -> None:
    campaign_id = f"sig-{signum}"
    proc = _start(audience, db_url, prefect_harness, campaign_id)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and sim.admin.counters().accepted < 10:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        time.sleep(0.05)
    assert sim.admin.counters().accepted >= 10, "the campaign was sending"
    signalled = time.monotonic()
    proc.send_signal(signum)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"the CLI did not stop within 60 s of the signal:\n{output[-3000:]}")
    took = time.monotonic() - signalled
    print(f"{words}: the CLI exited {took:.1f} s after the signal")
    assert took < 30, f"the CLI took {took:.1f} s to stop"
    assert proc.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if words in line]
    assert len(lines) == 1, output[-3000:]
    assert f"wxpush campaign resume {campaign_id}" in lines[0]

    with db_engine.connect() as conn:
        record = campaigns.get_campaign(conn, campaign_id)
    assert record is not None
    assert record.status is CampaignStatus.PAUSED, record
    assert words in (record.status_reason or "")
    rows = ledger(db_engine, campaign_id)
    sent = {openid for openid, row in rows.items() if row["status"] == "sent"}
    assert set(accepted_openids(sim)) == sent, "every message WeChat accepted is in the ledger"
    assert record.sent_count == len(sent)
    assert len(sent) < 200, "stopped mid-way"

    run(params(audience.name, name="signalled", campaign_id=campaign_id))
    assert_exactly_once(db_engine, sim, sim.app_id, campaign_id)


def test_sigterm_at_the_slowest_rate_stops_at_once(
    audience: Any, db_engine: Engine, db_url: str, sim: Any, prefect_harness: Any
) -> None:
    """At 0.1 msg/s the senders wait up to 80 s for their slots; a stop wakes them."""
    proc = _start(audience, db_url, prefect_harness, "sig-slow", rate="0.1")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and sim.admin.counters().accepted < 1:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        time.sleep(0.05)
    time.sleep(1)  # the other senders are now waiting for their slots
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"the CLI did not stop within 60 s of SIGTERM:\n{output[-3000:]}")
    took = time.monotonic() - signalled
    print(f"SIGTERM at 0.1 msg/s: the CLI exited {took:.1f} s after the signal")
    assert proc.returncode == 143, output[-3000:]
    assert took < 15, f"the CLI took {took:.1f} s to stop after SIGTERM"
    with db_engine.connect() as conn:
        record = campaigns.get_campaign(conn, "sig-slow")
    assert record is not None and record.status is CampaignStatus.PAUSED
    assert sim.admin.counters().accepted == record.sent_count == 1
