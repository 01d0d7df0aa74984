"""`wxpush campaign run` (and `wxpush digest run`) stopped by SIGTERM or Ctrl-C (SIGINT): the
campaign row ends `paused` with a reason, every answer WeChat gave is in the ledger, the exit
code is non-zero and the terminal gets one clear line, not a traceback. A real CLI process,
the simulator and the Prefect harness; SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

from db import campaigns
from db.outcomes import CampaignStatus
from tests.campaign_helpers import (
    accepted_openids,
    assert_exactly_once,
    ledger,
    params,
    start_cli,
    start_cli_campaign,
    stop_cli,
    wait_until_accepted,
)
from tests.campaign_helpers import run_campaign as run

pytestmark = pytest.mark.harness


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
    proc = start_cli_campaign(
        audience.name, db_url, prefect_harness, name="signalled", campaign_id=campaign_id, rate="5"
    )
    wait_until_accepted(proc, sim, 10)
    output, took = stop_cli(proc, signum)
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
    proc = start_cli_campaign(
        audience.name, db_url, prefect_harness, name="signalled", campaign_id="sig-slow", rate="0.1"
    )
    wait_until_accepted(proc, sim, 1)
    time.sleep(1)  # the other senders are now waiting for their slots
    output, took = stop_cli(proc, signal.SIGTERM)
    print(f"SIGTERM at 0.1 msg/s: the CLI exited {took:.1f} s after the signal")
    assert proc.returncode == 143, output[-3000:]
    assert took < 15, f"the CLI took {took:.1f} s to stop after SIGTERM"
    with db_engine.connect() as conn:
        record = campaigns.get_campaign(conn, "sig-slow")
    assert record is not None and record.status is CampaignStatus.PAUSED
    assert sim.admin.counters().accepted == record.sent_count == 1


def test_sigterm_stops_a_digest_run_in_one_line(
    audience: Any, db_engine: Engine, db_url: str, sim: Any, prefect_harness: Any, tmp_path: Path
) -> None:
    """`wxpush digest run` runs the same campaign flow: a signal leaves the same one line,
    naming the day's campaign, and the same paused row."""
    day = (datetime.now(ZoneInfo("Asia/Shanghai")).date() - timedelta(days=1)).isoformat()
    campaign_id = f"digest-daily-digest-{day}"
    knobs = tmp_path / "digest.json"
    knobs.write_text(json.dumps({"rate_per_second": 2, "batch_size": 5}))
    proc = start_cli(
        ["digest", "run"],
        *("--app", audience.name, "--day", day, "--params-file", str(knobs)),
        db_url=db_url,
        harness=prefect_harness,
    )
    wait_until_accepted(proc, sim, 2)
    output, _ = stop_cli(proc, signal.SIGTERM)
    assert proc.returncode == 143, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if "SIGTERM" in line]
    assert len(lines) == 1, output[-3000:]
    assert f"wxpush campaign resume {campaign_id}" in lines[0]
    with db_engine.connect() as conn:
        record = campaigns.get_campaign(conn, campaign_id)
    assert record is not None and record.status is CampaignStatus.PAUSED, record
    assert record.sent_count == sim.admin.counters().accepted
