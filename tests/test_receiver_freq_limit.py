"""`failed:freq limit` receipts, with real parts: the simulator is told to give some followers
that Status, pushes its TEMPLATESENDJOBFINISH receipts (safe mode) to `wxpush receiver` (a
process), and the ledger, `campaign_stats` and the report count them as `freq_limited`: never
as blocked, since a frequency limit says nothing about the user. SQLite and PostgreSQL.

Public sources for the Status: developers.weixin.qq.com community threads showing the pushed
XML, https://developers.weixin.qq.com/community/personal/oCJUsw3wodZLOPz0rEGohEItTOEI/question
and https://developers.weixin.qq.com/community/minihome/doc/0002c6c128c0407af9dce35e95b000
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from bench.receiver import start_receiver
from db.callbacks import match_pending_receipts
from db.campaigns import create_or_resume, find_campaign
from db.ledger import ledger_figures, receipt_counts, record_outcomes
from db.outcomes import DeliveryOutcome, DeliveryStatus
from tasks.report import CampaignReport
from tests.fixtures.simulator import WeChatHttp
from tests.waiting import wait_until
from wechat.events import normalise_receipt_status
from wechat.simulator.process import SimulatorProcess

pytestmark = pytest.mark.process  # each test starts a receiver process

TOKEN = "freq-limit-callback-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
FREQ = "failed:freq limit"
# Who gets which receipt Status: two frequency-limited, one who blocked the account, the rest
# from the mix (all `success`).
OVERRIDES = {"o-fl-1": FREQ, "o-fl-2": FREQ, "o-blk-1": "failed:user block"}
FOLLOWERS = ("o-ok-1", "o-ok-2", "o-ok-3", *OVERRIDES)


@pytest.mark.parametrize(
    "raw",
    ["failed:freq limit", "failed: freq limit", "Failed:Freq Limit", "failed:freqlimit"],
)
def test_every_spelling_is_freq_limited_never_user_block(raw: str) -> None:
    assert normalise_receipt_status(raw) == "freq_limited"


@pytest.fixture
def receiver(db_url: str, sim: SimulatorProcess) -> Iterator[str]:
    """`wxpush receiver` on a free port, for the simulator's account, writing to db_url."""
    process = start_receiver(db_url, app_id=sim.app_id, token=TOKEN, aes_key=AES_KEY)
    yield process.base
    assert process.stop(timeout=30) < 10, "SIGTERM ends the receiver within 10 s"


def _stored_receipts(engine: Engine, msgids: list[int]) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT msgid, receipt_status FROM callback_events WHERE kind = 'receipt'")
        )
        return {int(msgid): status for msgid, status in rows if msgid in msgids}


def _record_campaign(engine: Engine, sent: dict[str, int]) -> str:
    """The campaign's ledger rows for the sends, as the campaign flow records them after the
    answers (receipts may be stored before: the flow then matches them)."""
    now = datetime.now(UTC)
    outcomes = [
        DeliveryOutcome(
            openid=openid, status=DeliveryStatus.SENT, msgid=msgid, attempts=1, sent_at=now
        )
        for openid, msgid in sent.items()
    ]
    with engine.begin() as conn:
        campaign = create_or_resume(
            conn,
            campaign_id=None,
            name="freq-limit",
            app="default",
            kind="template",
            template_id="TPL",
            parameters={},
            audience_sql="SELECT openid FROM recipients",
        )
        record_outcomes(conn, campaign.id, outcomes)
        match_pending_receipts(conn, list(sent.values()))
    return campaign.id


def test_freq_limit_receipts_are_stored_counted_and_not_blocked(
    db_engine: Engine, sim: SimulatorProcess, wx: WeChatHttp, receiver: str
) -> None:
    admin = sim.admin
    admin.add_followers({"openid": openid} for openid in FOLLOWERS)
    admin.set_callbacks(
        callback_url=f"{receiver}/wechat/callback",
        callback_token=TOKEN,
        encoding_aes_key=AES_KEY,
        receipt_mix={"success": 1.0},
    )
    admin.set_receipt_status(["o-fl-1", "o-fl-2"])  # WeChat's `failed:freq limit`
    config = admin.set_receipt_status(["o-blk-1"], "failed:user block")
    assert config.receipt_overrides == OVERRIDES

    token = wx.token()
    sent: dict[str, int] = {}
    for openid in FOLLOWERS:
        answer = wx.send_template(token, touser=openid)
        assert answer["errcode"] == 0, answer
        sent[openid] = int(answer["msgid"])
    pushed = admin.wait_callbacks_idle(timeout=30)
    assert pushed.gave_up == 0 and pushed.mode == "safe"
    assert pushed.receipts_delivered == {"success": 3, FREQ: 2, "failed:user block": 1}
    by_openid = {p.openid: p.status for p in admin.callback_pushes(kind="receipt")}
    assert by_openid == {openid: OVERRIDES.get(openid, "success") for openid in FOLLOWERS}

    msgids = list(sent.values())
    wait_until(
        lambda: len(_stored_receipts(db_engine, msgids)) == len(msgids),
        "the receiver stored every receipt",
        timeout=30,
        poll=0.1,
    )
    assert httpx.get(f"{receiver}/health", timeout=5).json()["backlog"] == 0
    stored = _stored_receipts(db_engine, msgids)
    assert stored == {
        sent["o-ok-1"]: "delivered",
        sent["o-ok-2"]: "delivered",
        sent["o-ok-3"]: "delivered",
        sent["o-fl-1"]: "freq_limited",
        sent["o-fl-2"]: "freq_limited",
        sent["o-blk-1"]: "user_block",
    }

    campaign_id = _record_campaign(db_engine, sent)
    with db_engine.connect() as conn:
        ledger: dict[str, Any] = dict(
            conn.execute(
                text("SELECT openid, receipt_status FROM deliveries WHERE campaign_id = :c"),
                {"c": campaign_id},
            ).all()
        )
        stats = (
            conn.execute(
                text(
                    "SELECT sent, delivered, blocked, freq_limited, system_failed, "
                    "receipts_pending, delivery_rate FROM campaign_stats WHERE campaign_id = :c"
                ),
                {"c": campaign_id},
            )
            .mappings()
            .one()
        )
        counts = receipt_counts(conn, campaign_id)
        record = find_campaign(conn, campaign_id)
        figures = ledger_figures(conn, campaign_id)
    assert ledger["o-fl-1"] == ledger["o-fl-2"] == "freq_limited"
    assert ledger["o-blk-1"] == "user_block"
    assert dict(stats) == {
        "sent": 6,
        "delivered": 3,
        "blocked": 1,  # the user block only
        "freq_limited": 2,
        "system_failed": 0,
        "receipts_pending": 0,
        "delivery_rate": 0.5,  # a held-back message is a receipt received, not delivered
    }
    assert counts == {
        "delivered": 3,
        "user_block": 1,
        "freq_limited": 2,
        "system_failed": 0,
        "awaiting": 0,
    }
    assert record is not None
    lines = CampaignReport.from_record(record, figures, {}).markdown().splitlines()
    assert "| held back by WeChat (sent too often) | 2 |" in lines
    assert "| blocked by the user | 1 |" in lines
