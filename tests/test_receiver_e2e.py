"""The loop closed, with real parts only: a campaign sends through the simulator, the
simulator pushes WeChat's callbacks to `wxpush receiver` (a uvicorn process), and the
ledger and the next campaign show what the followers did. SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from bench.receiver import start_receiver
from tests.campaign_helpers import ledger, params
from tests.campaign_helpers import run_campaign as run

pytestmark = pytest.mark.harness

TOKEN = "e2e-callback-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
MIX = {"success": 0.8, "failed:user block": 0.15, "failed: system failed": 0.05}
STATUS_OF = {"success": "delivered", "failed:user block": "user_block"}


@pytest.fixture
def receiver(db_url: str, sim: Any) -> Iterator[str]:
    """`wxpush receiver` on a free port, for the simulator's account, writing to db_url."""
    process = start_receiver(db_url, app_id=sim.app_id, token=TOKEN, aes_key=AES_KEY)
    yield process.base
    assert process.stop(timeout=30) < 10, "SIGTERM ends the receiver within 10 s"


def _settled(base: str, condition: Any, timeout: float = 20.0) -> None:
    """Wait until the receiver has written everything and `condition()` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(f"{base}/health", timeout=5).json()
        if health["backlog"] == 0 and condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not settled: {health}")


def _receipts(engine: Engine, campaign_id: str) -> dict[str | None, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT receipt_status, count(*) FROM deliveries "
                "WHERE campaign_id = :c AND status = 'sent' GROUP BY receipt_status"
            ),
            {"c": campaign_id},
        )
        return {status: n for status, n in rows}


def test_receipts_pushed_by_the_simulator_land_in_the_ledger(
    audience: Any, db_engine: Engine, sim: Any, receiver: str
) -> None:
    sim.admin.set_callbacks(
        callback_url=f"{receiver}/wechat/callback",
        callback_token=TOKEN,
        encoding_aes_key=AES_KEY,  # safe mode
        receipt_mix=MIX,
        seed=5,
    )
    result = run(params(audience.name))
    pushed = sim.admin.wait_callbacks_idle(timeout=60)
    assert pushed.mode == "safe" and pushed.gave_up == 0
    delivered = pushed.receipts_delivered
    assert sum(delivered.values()) == result.counts["sent"], "one receipt per accepted send"
    assert delivered.get("failed:user block", 0) > 0, "the mix really varied"
    expected = {
        "delivered": delivered.get("success", 0),
        "user_block": delivered.get("failed:user block", 0),
        "system_failed": delivered.get("failed: system failed", 0),
    }
    _settled(
        receiver,
        lambda: (
            {k: v for k, v in _receipts(db_engine, result.campaign_id).items() if k}
            == {k: v for k, v in expected.items() if v}
        ),
    )
    with db_engine.connect() as conn:
        stats = (
            conn.execute(
                text(
                    "SELECT delivered, blocked, system_failed, receipts_pending "
                    "FROM campaign_stats WHERE campaign_id = :c"
                ),
                {"c": result.campaign_id},
            )
            .mappings()
            .one()
        )
    assert (stats["delivered"], stats["blocked"], stats["system_failed"]) == (
        expected["delivered"],
        expected["user_block"],
        expected["system_failed"],
    )
    assert stats["receipts_pending"] == 0


def _one(engine: Engine, app_id: str, where: str) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                text(
                    f"SELECT openid FROM recipients WHERE app_id = :a AND {where} "
                    "ORDER BY openid LIMIT 1"
                ),
                {"a": app_id, "cutoff": datetime.now(UTC) - timedelta(hours=72)},
            ).scalar_one()
        )


def test_a_follower_outside_the_window_who_writes_is_in_the_next_campaign(
    audience: Any, db_engine: Engine, sim: Any, receiver: str
) -> None:
    sim.admin.set_callbacks(callback_url=f"{receiver}/wechat/callback", callback_token=TOKEN)
    openid = _one(
        db_engine,
        sim.app_id,
        "subscribed AND blocked IS NULL AND last_interaction_at < :cutoff",
    )
    before = run(params(audience.name, name="before"))
    assert ledger(db_engine, before.campaign_id)[openid]["reason"] == "outside_window"

    push = sim.admin.follower_sends_message(openid, text="还有货吗？")
    assert push.http_statuses[-1] == 200

    def moved() -> bool:
        with db_engine.connect() as conn:
            last = conn.execute(
                text("SELECT last_interaction_at FROM recipients WHERE openid = :o"),
                {"o": openid},
            ).scalar_one()
        return str(last) >= str(datetime.now(UTC) - timedelta(minutes=5))[:19]

    _settled(receiver, moved)
    after = run(params(audience.name, name="after"))
    assert ledger(db_engine, after.campaign_id)[openid]["status"] == "sent"


def test_an_unsubscribe_makes_the_next_campaign_skip_them(
    audience: Any, db_engine: Engine, sim: Any, receiver: str
) -> None:
    sim.admin.set_callbacks(callback_url=f"{receiver}/wechat/callback", callback_token=TOKEN)
    recent = datetime.now(UTC) - timedelta(hours=24)
    with db_engine.connect() as conn:
        openid = conn.execute(
            text(
                "SELECT openid FROM recipients WHERE app_id = :a AND subscribed "
                "AND blocked IS NULL AND last_interaction_at > :recent ORDER BY openid LIMIT 1"
            ),
            {"a": sim.app_id, "recent": recent},
        ).scalar_one()
    push = sim.admin.follower_unsubscribes(openid)
    assert push.http_statuses[-1] == 200

    def unsubscribed() -> bool:
        with db_engine.connect() as conn:
            return not conn.execute(
                text("SELECT subscribed FROM recipients WHERE openid = :o"), {"o": openid}
            ).scalar_one()

    _settled(receiver, unsubscribed)
    accepted_before = sim.admin.counters().accepted
    result = run(params(audience.name))
    row = ledger(db_engine, result.campaign_id)[openid]
    assert (row["status"], row["reason"]) == ("skipped", "unsubscribed")
    assert not any(m.openid == openid for m in sim.admin.messages(openid=openid).items), (
        "nothing was sent to them"
    )
    assert sim.admin.counters().accepted - accepted_before == result.counts["sent"]
