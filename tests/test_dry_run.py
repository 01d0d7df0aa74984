"""`wxpush campaign run --dry-run` and `wxpush digest run --dry-run`: the plan a dry run
prints (counts per outcome, skipped by reason, invalid by field rule, example messages) is
what a real run of the same campaign then does, and the dry run itself writes nothing."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from cli.main import app as cli
from db.campaigns import find_campaign
from db.digest import previous_day
from tests.campaign_helpers import DATA
from wechat.simulator.defaults import DEMO_TEMPLATE_ID

pytestmark = pytest.mark.harness

#: How the plan names each skip reason (deliveries.reason), in the operator's words.
SKIP_WORDS = {
    "outside_window": "outside the interaction window",
    "unsubscribed": "unsubscribed",
    "nothing_to_send": "nothing to send",
}


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def _written(engine: Engine) -> tuple[int, int]:
    """(campaign rows, ledger rows) in the test's database."""
    with engine.connect() as conn:
        campaigns = conn.execute(text("SELECT count(*) FROM campaigns")).scalar_one()
        deliveries = conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one()
    return campaigns, deliveries


def _what_the_run_did(engine: Engine, campaign_id: str) -> tuple[Counter[str], dict[str, str]]:
    """Per plan line, the rows the real run recorded (a failed send was a send WeChat
    refused: the dry run counts it as `would send`); and the nickname of each row it sent
    or tried to send."""
    rows = Counter[str]()
    with engine.connect() as conn:
        ledger = conn.execute(
            text(
                "SELECT d.openid, d.status, d.reason, r.nickname FROM deliveries d "
                "JOIN recipients r ON r.openid = d.openid WHERE d.campaign_id = :c"
            ),
            {"c": campaign_id},
        ).all()
    sends = {}
    for openid, status, reason, nickname in ledger:
        rows["audience"] += 1
        if status in ("sent", "failed"):
            rows["would send"] += 1
            sends[openid] = nickname
        elif status == "skipped":
            rows[f"skipped: {SKIP_WORDS[reason]}"] += 1
        else:
            assert status == "invalid", (openid, status)
            rows["invalid"] += 1
            # The rule, without the row's own value ("…; got 27").
            rows[f"reason: {re.sub(r'; got .*$', '', reason)}"] += 1
    return rows, sends


def _assert_plan_matches(plan: str, did: Counter[str], sends: dict[str, str]) -> list[str]:
    """Every figure of the real run is the plan's; returns the example openids shown."""
    assert did["would send"] and did["skipped: unsubscribed"], did
    for line, count in did.items():
        row = line.removeprefix("reason: ")
        assert f"| {row} | {count} |" in plan, (line, count, plan)
    if did["invalid"]:
        assert "## Invalid rows by reason" in plan
    assert "## Example messages" in plan
    examples = re.findall(r"to `([^`]+)`", plan)
    assert 1 <= len(examples) <= 3, plan
    assert set(examples) <= set(sends), "the examples are recipients a real run sends to"
    assert "access_token" not in plan and "secret" not in plan.lower()
    return examples


def test_campaign_dry_run_prints_the_plan_a_real_run_then_follows(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    args = [
        *("campaign", "run", "--name", "spring-sale", "--app", audience.name),
        *("--template-id", DEMO_TEMPLATE_ID, "--batch-size", "50"),
        *[f"--data={key}={value}" for key, value in DATA.items()],
    ]
    plan = _invoke([*args, "--dry-run"])
    assert plan.startswith("# Dry run of campaign spring-sale"), plan
    assert "Nothing was sent and nothing was recorded" in plan
    assert _written(db_engine) == (0, 0), "a dry run stores no campaign and no ledger row"
    assert sim.admin.counters().accepted == 0

    report = _invoke(args)
    with db_engine.connect() as conn:
        campaign = find_campaign(conn, "spring-sale")
    assert campaign is not None and campaign.id in report
    did, sends = _what_the_run_did(db_engine, campaign.id)
    assert did["invalid"], f"the seeded nicknames make some rows invalid: {did}"
    examples = _assert_plan_matches(plan, did, sends)
    assert f"thing1: {sends[examples[0]]}" in plan, "rendered with that row's own values"


def test_digest_dry_run_prints_the_plan_a_real_run_then_follows(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    day = previous_day("Asia/Shanghai", datetime.now(UTC)) - timedelta(days=1)
    args = ["digest", "run", "--app", audience.name, "--day", day.isoformat()]
    plan = _invoke([*args, "--dry-run"])
    campaign_id = f"digest-daily-digest-{day.isoformat()}"
    assert plan.startswith(f"# Dry run of campaign daily digest {day.isoformat()}"), plan
    assert f"`{campaign_id}`" in plan
    assert _written(db_engine) == (0, 0), "a dry run stores no campaign and no ledger row"
    assert sim.admin.counters().accepted == 0

    assert campaign_id in _invoke(args)
    did, sends = _what_the_run_did(db_engine, campaign_id)
    assert did["skipped: nothing to send"], did
    _assert_plan_matches(plan, did, sends)
    assert "thing1: 当日互动 " in plan, "the digest's own fields, rendered"
