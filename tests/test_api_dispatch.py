"""The push API's dispatcher in-process, on the real simulator and a real (SQLite) database,
without Prefect: the block and the token are handed in. What holds a lane and what does not:
WeChat failing until the breaker gives up (held, the alert emitted, the message re-sent once
the lane reopens, exactly once), quiet hours with and without `api_follows_guardrails`, the
frequency cap."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from api.dispatch import Dispatcher
from api.store import Store
from db import api_messages
from db.api_messages import NewMessage, Request, StoredMessage
from db.campaigns import create_or_resume
from db.ledger import record_outcomes
from db.outcomes import DeliveryOutcome, DeliveryStatus
from sending.breaker import BreakerPolicy
from sending.message import client_msg_id_for
from sending.sender import RetryPolicy
from tasks.blocks import WeChatApp
from tasks.events import Alert, WxpushEvent
from tests.api_helpers import TEMPLATE_DATA
from tests.fixtures.database import sqlite_only
from wechat.simulator.defaults import DEMO_OPENID, DEMO_TEMPLATE_ID

db_backend = sqlite_only()


class Harness:
    """A dispatcher over a store, its blocks by name, the alerts it emitted."""

    def __init__(self, engine: Engine, sim: Any, wx: Any) -> None:
        self.engine = engine
        self.sim = sim
        self.wx = wx
        self.blocks: dict[str, WeChatApp] = {}
        self.alerts: list[Alert] = []
        self.store = Store(engine)
        self.dispatcher = Dispatcher(
            self.store,
            engine,
            load_app=self._load,
            get_token=self._token,
            refresh=lambda app, failed: self._token(app),
            retry=RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05),
            breaker=BreakerPolicy(
                window=3,
                min_attempts=3,
                first_probe=0.1,
                max_probe_interval=0.2,
                give_up_seconds=1.0,
            ),
            emit=self.alerts.append,
            first_hold_seconds=0.5,
        )

    async def _load(self, app: str) -> WeChatApp:
        return self.blocks[app]

    async def _token(self, app: str) -> SecretStr:
        return SecretStr(await asyncio.to_thread(self.wx.token))

    def app(self, **fields: Any) -> str:
        name = f"d-{uuid.uuid4().hex[:8]}"
        self.blocks[name] = WeChatApp(
            app_id=self.sim.app_id,
            app_secret=SecretStr(self.sim.app_secret),
            api_base_url=self.sim.base_url,
            **fields,
        )
        return name

    def accept(self, app: str, openid: str = DEMO_OPENID) -> StoredMessage:
        message_id = api_messages.new_message_id()
        message = NewMessage(
            id=message_id,
            caller="tests",
            key_id="wxk" + "0" * 20,
            idempotency_key=None,
            request_hash="0" * 64,
            app=app,
            kind="template",
            openid=openid,
            template_id=DEMO_TEMPLATE_ID,
            payload={"data": TEMPLATE_DATA},
            client_msg_id=client_msg_id_for("api", message_id),
            created_at=datetime.now(UTC) - timedelta(seconds=5),
        )
        with self.engine.begin() as conn:
            api_messages.accept(conn, [Request(None, [message])])
            row = api_messages.get(conn, message_id)
        assert row is not None
        return row

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Harness]:
        self.store.start()
        await self.dispatcher.start()
        try:
            yield self
        finally:
            await self.dispatcher.close()
            await self.store.close()

    def row(self, message_id: str) -> StoredMessage:
        with self.engine.connect() as conn:
            row = api_messages.get(conn, message_id)
        assert row is not None
        return row


@pytest.fixture
def harness(db_engine: Engine, sim: Any, wx: Any) -> Harness:
    """Started by each test on its own event loop (`async with harness.running()`)."""
    return Harness(db_engine, sim, wx)


async def _until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := condition()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.05)
    return value


async def test_wechat_failing_holds_the_lane_alerts_and_sends_once_it_reopens(
    harness: Harness, sim: Any
) -> None:
    async with harness.running():
        app = harness.app()
        sim.admin.set_faults(minus_one_rate=1.0)
        row = harness.accept(app)
        future = harness.dispatcher.submit(row)
        hold = await _until(lambda: harness.dispatcher.held(app, "template"))
        assert hold.cause == "breaker"
        assert not future.done()
        await _until(lambda: harness.alerts)
        (alert,) = harness.alerts
        assert alert.event is WxpushEvent.API_HELD and alert.facts["cause"] == "breaker"
        assert alert.facts["app"] == app and "Push API holding template messages" in alert.message
        assert alert.facts["queued"] == 1
        assert "campaign resume" not in hold.reason
        await _until(lambda: harness.row(row.id).attempts > 0)  # recorded, still queued
        assert harness.row(row.id).status == "queued"
        assert sim.admin.counters().accepted == 0

        sim.admin.set_faults()  # WeChat answers again: the loop reopens the lane and re-sends
        done = await _until(lambda: harness.row(row.id).status != "queued" and harness.row(row.id))
        assert done.status == "sent" and done.msgid
        assert sim.admin.counters().accepted == 1
        assert harness.dispatcher.held(app, "template") is None


def _window_around_now(zone: str = "Asia/Shanghai") -> str:
    hour = datetime.now(ZoneInfo(zone)).hour
    return f"{(hour - 1) % 24:02d}:00-{(hour + 2) % 24:02d}:00"


async def test_quiet_hours_hold_api_messages_only_when_the_account_says_so(
    harness: Harness, sim: Any
) -> None:
    async with harness.running():
        quiet = _window_around_now()
        follows = harness.app(quiet_hours=quiet, api_follows_guardrails=True)
        held_row = harness.accept(follows)
        harness.dispatcher.submit(held_row)
        hold = await _until(lambda: harness.dispatcher.held(follows, "template"))
        assert hold.cause == "quiet_hours" and "quiet hours" in hold.reason
        assert not harness.alerts  # quiet hours are planned: no alert

        transactional = harness.app(quiet_hours=quiet)  # the default: the API ignores them
        result = await asyncio.wait_for(
            harness.dispatcher.submit(harness.accept(transactional)), 20
        )
        assert result.status == "sent"
        assert sim.admin.counters().accepted == 1
        assert harness.row(held_row.id).status == "queued"


async def test_the_frequency_cap_applies_only_when_the_account_says_so(
    harness: Harness, sim: Any, db_engine: Engine
) -> None:
    async with harness.running():
        # The follower had one message from a campaign of this account an hour ago.
        with db_engine.begin() as conn:
            campaign = create_or_resume(
                conn,
                campaign_id=None,
                name="earlier",
                app="earlier-block",
                kind="template",
                template_id=DEMO_TEMPLATE_ID,
                parameters={},
                audience_sql="SELECT openid FROM recipients",
                app_id=sim.app_id,
            )
            sent_at = datetime.now(UTC) - timedelta(hours=1)
            record_outcomes(
                conn,
                campaign.id,
                [
                    DeliveryOutcome(
                        DEMO_OPENID,
                        DeliveryStatus.SENT,
                        msgid=1,
                        attempts=1,
                        first_attempt_at=sent_at,
                        last_attempt_at=sent_at,
                        sent_at=sent_at,
                    )
                ],
            )
        capped = harness.app(frequency_cap=1, api_follows_guardrails=True)
        result = await asyncio.wait_for(harness.dispatcher.submit(harness.accept(capped)), 20)
        assert result.status == "failed" and result.reason.startswith("frequency_cap")
        assert sim.admin.counters().accepted == 0

        uncapped = harness.app(frequency_cap=1)
        result = await asyncio.wait_for(harness.dispatcher.submit(harness.accept(uncapped)), 20)
        assert result.status == "sent"
