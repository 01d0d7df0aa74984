"""What every part shares: the bench audience and message, names, and printing."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sending.message import client_msg_id_for
from wechat.simulator.defaults import DEMO_TEMPLATE_ID, DEMO_TEMPLATE_VALUES

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("ceiling", "e2e", "rate", "rss", "map")
APP = "bench"  # wechat-app block of the sending population (the simulator's app)
RSS_APP = "bench-rss"  # block of the dry-run population (no simulator followers needed)
RSS_APP_ID = "wx00000000000000b1"  # an AppID of the right form (wechat/identifiers.py)
#: Every seeded interaction is at most 240 h old: a wider window keeps every row inside it
#: while the window CASE still runs on each row.
WINDOW_HOURS = 264
#: Share of seed_recipients rows the audience SQL keeps (≈0.90 measured); seeding aims a
#: little above the need and tops up if short.
ELIGIBLE_SHARE = 0.88
CONSTANT_FIELDS = {k: v for k, v in DEMO_TEMPLATE_VALUES if k != "thing1"}
TEMPLATE_DATA = {"thing1": "{nickname}", **CONSTANT_FIELDS}
URL_TEMPLATE = "https://shop.example/u/{openid}"
#: Rate runs cut their audience into batches of this many seconds of sending, so batch
#: hand-overs fall inside the measurement (4 batches, two at a time).
RATE_BATCH_SECONDS = 2.5
RATE_CONCURRENCY = 16
WARM_UP_MESSAGES = 300
MIB = 1024 * 1024


def audience_sql(limit: int) -> str:
    """The bench audience: the first `limit` sendable recipients of the app, by openid."""
    return (
        "SELECT openid, nickname, city, last_interaction_at\n"
        "FROM recipients\n"
        "WHERE app_id = :app_id AND subscribed AND blocked IS NULL\n"
        "  AND last_interaction_at IS NOT NULL AND length(nickname) <= 20\n"
        f"ORDER BY openid\nLIMIT {int(limit)}"
    )


def wire(row: dict[str, Any], campaign: str) -> dict[str, Any]:
    """The JSON body `push_campaign` sends for this row (same keys, order and values)."""
    openid = row["openid"]
    data = {"thing1": {"value": row["nickname"]}}
    data.update({key: {"value": value} for key, value in CONSTANT_FIELDS.items()})
    return {
        "touser": openid,
        "template_id": DEMO_TEMPLATE_ID,
        "data": data,
        "url": URL_TEMPLATE.format(openid=openid),
        "client_msg_id": client_msg_id_for(campaign, openid),
    }


def say(text_: str) -> None:
    print(text_, flush=True)


def pause_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.0f}"


def us(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
