"""Helpers for campaign tests: an audience in SQL and in the simulator, and what to expect."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select, text, update

from cli.seed import follower_payload
from db.models import AccountQuota, recipients
from db.seed import seed_recipients
from tasks.params import CampaignParams
from tests.waiting import wait_until
from wechat.fields import validate_template_data
from wechat.simulator.defaults import DEMO_TEMPLATE_ID, DEMO_TEMPLATE_VALUES

ROOT = Path(__file__).resolve().parents[1]

#: The demo template with the nickname in `thing1`: long nicknames make invalid rows.
DATA = {**dict(DEMO_TEMPLATE_VALUES), "thing1": "{nickname}"}


@dataclass
class Audience:
    """A seeded app: its block name, AppID and the database/simulator it lives in."""

    app: str
    app_id: str
    engine: Engine
    sim: Any


def seed(engine: Engine, sim: Any, app_id: str, count: int, seed_value: int = 7) -> None:
    """`count` recipients in SQL and the same followers in the simulator."""
    with engine.begin() as conn:
        seed_recipients(
            conn,
            app_id=app_id,
            count=count,
            seed=seed_value,
            on_chunk=lambda chunk: sim.admin.add_followers([follower_payload(r) for r in chunk]),
        )


def followers(engine: Engine, sim: Any, prefix: str, count: int) -> list[str]:
    """`count` recipients every campaign may message (subscribed, in the window, a short
    nickname, not blocked), in SQL and in the simulator."""
    ids = [f"{prefix}{i:05d}" for i in range(count)]
    recent = datetime.now(UTC) - timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(
            insert(recipients),
            [
                {
                    "app_id": sim.app_id,
                    "openid": openid,
                    "subscribed": True,
                    "last_interaction_at": recent,
                    "nickname": f"user {i}",
                    "attributes": {},
                }
                for i, openid in enumerate(ids)
            ],
        )
    sim.admin.add_followers(
        [{"openid": openid, "last_interaction_at": recent.isoformat()} for openid in ids]
    )
    return ids


def next_beijing_day(sim: Any, engine: Engine) -> None:
    """A Beijing midnight passes on both sides: the simulator's clock moves past it (its
    quota resets), and on ours the account's rows move back one day, so today starts from
    nothing, as a new day's row would."""
    sim.admin.advance(sim.admin.clock().seconds_to_next_day + 60)
    with engine.begin() as conn:
        days = conn.execute(
            select(AccountQuota.day)
            .where(AccountQuota.app_id == sim.app_id)
            .order_by(AccountQuota.day)
        ).scalars()
        for old in list(days):  # oldest first: no two rows on one day
            conn.execute(
                update(AccountQuota)
                .where(AccountQuota.app_id == sim.app_id, AccountQuota.day == old)
                .values(day=old - timedelta(days=1))
            )


def make_app(make_wechat_app: Any) -> Any:
    """A fresh wechat-app block against the simulator (sync wrapper for sync tests)."""
    return asyncio.run(make_wechat_app())


def params(app: str, **overrides: Any) -> CampaignParams:
    """Campaign parameters for the demo template; fast retries for tests."""
    values: dict[str, Any] = {
        "name": "test-campaign",
        "app": app,
        "template_id": DEMO_TEMPLATE_ID,
        "data": dict(DATA),
        "batch_size": 50,
        "concurrency": 8,
        "request_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return CampaignParams.model_validate(values)


def expected_statuses(engine: Engine, app_id: str, window_hours: int = 48) -> dict[str, tuple]:
    """What every recipient of the app should end as: (status, reason or errcode)."""
    cutoff = datetime.now(UTC) - timedelta(hours=window_hours)
    expected: dict[str, tuple] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT openid, nickname, subscribed, blocked, last_interaction_at "
                "FROM recipients WHERE app_id = :a"
            ),
            {"a": app_id},
        ).mappings()
        for row in rows:
            last = row["last_interaction_at"]
            if isinstance(last, str):
                last = datetime.fromisoformat(last)
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=UTC)
            if not row["subscribed"]:
                expected[row["openid"]] = ("skipped", "unsubscribed")
            elif last is None or last < cutoff:
                expected[row["openid"]] = ("skipped", "outside_window")
            elif validate_template_data({**dict(DEMO_TEMPLATE_VALUES), "thing1": row["nickname"]}):
                expected[row["openid"]] = ("invalid", None)
            elif row["blocked"] == "blacklist":
                expected[row["openid"]] = ("failed", 43019)
            elif row["blocked"] == "refuse":
                expected[row["openid"]] = ("failed", 48002)
            else:
                expected[row["openid"]] = ("sent", None)
    return expected


def ledger(engine: Engine, campaign_id: str) -> dict[str, dict[str, Any]]:
    """Every ledger row of the campaign, by openid."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM deliveries WHERE campaign_id = :c"), {"c": campaign_id}
        ).mappings()
        return {row["openid"]: dict(row) for row in rows}


def accepted_openids(sim: Any) -> Counter[str]:
    """How often the simulator accepted a message for each openid."""
    return Counter(message.openid for message in sim.admin.iter_messages())


def assert_exactly_once(engine: Engine, sim: Any, app_id: str, campaign_id: str) -> None:
    """Every audience row has one ledger row with the right status; every sent row reached
    the simulator once and nothing else reached it."""
    expected = expected_statuses(engine, app_id)
    rows = ledger(engine, campaign_id)
    assert set(rows) == set(expected), "every audience row has exactly one ledger row"
    for openid, (status, detail) in expected.items():
        row = rows[openid]
        assert row["status"] == status, (openid, row, status)
        if status == "skipped":
            assert row["reason"] == detail
        if status == "failed":
            assert row["errcode"] == detail
        if status == "sent":
            assert row["msgid"] and int(row["msgid"]) > 2**53
    seen = accepted_openids(sim)
    sent = {o for o, (status, _) in expected.items() if status == "sent"}
    assert set(seen) == sent, "exactly the eligible followers got a message"
    assert max(seen.values(), default=1) == 1, "nobody got a message twice"


def run_campaign(p: CampaignParams) -> Any:
    """Run push_campaign in-process and return its result; the run must complete."""
    from flows.campaign import push_campaign

    state = asyncio.run(push_campaign(p, return_state=True))
    assert state.is_completed(), state.message
    return state.result()


def start_cli_campaign(
    app: str, db_url: str, harness: Any, *, name: str, campaign_id: str, rate: str
) -> subprocess.Popen[str]:
    """`wxpush campaign run` as a child process (text output), batches of 20 at `rate`/s."""
    p = params(app)
    return start_cli(
        ["campaign", "run"],
        *("--name", name, "--app", app, "--campaign-id", campaign_id),
        *("--template-id", str(p.template_id), "--rate", rate, "--batch-size", "20"),
        *[f"--data={k}={v}" for k, v in p.data.items()],
        db_url=db_url,
        harness=harness,
    )


def start_cli(command: list[str], *args: str, db_url: str, harness: Any) -> subprocess.Popen[str]:
    """`wxpush <command> <args>` as a child process (text output) on this database and the
    test's Prefect API."""
    env = {**os.environ, **harness.env(), "WXPUSH_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *command, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_accepted(proc: subprocess.Popen[str], sim: Any, count: int) -> None:
    """Block until the simulator accepted `count` messages; the process must stay alive."""

    def sending() -> bool:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        return sim.admin.counters().accepted >= count

    wait_until(sending, f"the campaign was sending ({count} accepted)", timeout=90, poll=0.05)


def stop_cli(proc: subprocess.Popen[str], signum: int) -> tuple[str, float]:
    """Send `signum` and wait (≤ 60 s) for the process to end: its output and the seconds."""
    signalled = time.monotonic()
    proc.send_signal(signum)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        name = signal.Signals(signum).name
        raise AssertionError(
            f"the CLI did not stop within 60 s of {name}:\n{output[-3000:]}"
        ) from None
    return output, time.monotonic() - signalled


# -- runs from a deployment: what a scheduled resume needs --------------------------------------


async def push_campaign_deployment() -> Any:
    """The push-campaign deployment on the test's Prefect server (created once, as `wxpush
    serve` names it), without a worker: its runs are started in this process."""
    from flows.campaign import push_campaign

    deployment = await push_campaign.ato_deployment(name="push-campaign")
    return await deployment.apply()


def run_deployed(p: CampaignParams, flow_run: Any = None) -> tuple[Any, Any]:
    """Run push_campaign in this process as a run of its deployment (a new run, or the
    given one, e.g. a scheduled resume): (its final state, its flow run)."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from flows.campaign import push_campaign

    async def go() -> tuple[Any, Any]:
        run = flow_run
        if run is None:
            deployment_id = await push_campaign_deployment()
            async with get_client() as client:
                run = await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"params": p.model_dump(mode="json")}
                )
        state = await run_flow(
            push_campaign, flow_run=run, parameters={"params": p}, return_type="state"
        )
        return state, run

    return asyncio.run(go())


def scheduled_resumes(campaign_id: str) -> list[Any]:
    """The Scheduled flow runs that will resume `campaign_id` (tasks/resume.py)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    from tasks.resume import RESUME_TAG

    async def go() -> list[Any]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[RESUME_TAG]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    ),
                )
            )
        return [r for r in runs if r.parameters["params"].get("campaign_id") == campaign_id]

    return asyncio.run(go())


def run_scheduled(flow_run: Any) -> Any:
    """Run a scheduled resume now, in this process, with its own parameters; its result.
    Prefect's clock cannot be moved like the simulator's: the run's time is brought to now
    first (as if it had come), or Prefect would hold the run until then."""
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    async def due() -> None:
        async with get_client() as client:
            now = Scheduled(scheduled_time=datetime.now(UTC))
            await client.set_flow_run_state(flow_run.id, now, force=True)

    asyncio.run(due())
    state, _ = run_deployed(CampaignParams.model_validate(flow_run.parameters["params"]), flow_run)
    assert state.is_completed(), state.message
    return state.result()
