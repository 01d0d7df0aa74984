"""The account's daily template quota as a campaign meets it: before it starts (preflight:
does the audience fit in what is left today?) and in its report (used and left today).

Two counts say what is left, and the smaller one wins: WeChat's own answer to
`POST /cgi-bin/openapi/quota/get` (it also counts sends by any other system using the
account), and this account's count in the database (db/account_limits.py: the
`wechat-app` block's daily quota, shared by every campaign of the account). Both reset at
midnight Beijing time (docs/operations.md, "Quota check and auto-resume").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from pydantic import BaseModel, SecretStr

from db.account_limits import BEIJING, quota_used
from tasks.blocks import WeChatApp
from tasks.database import engine
from wechat.client import WeChatClient
from wechat.errors import WeChatError
from wechat.models import ApiQuota

__all__ = ["QuotaLeft", "QuotaToday", "next_reset", "quota_left", "quota_today"]


def next_reset(now: datetime) -> datetime:
    """The next midnight in Beijing after `now` (aware): when WeChat's daily quotas reset."""
    day = now.astimezone(BEIJING).date() + timedelta(days=1)
    return datetime.combine(day, datetime.min.time(), tzinfo=BEIJING)


class QuotaToday(BaseModel):
    """This account's count for one Beijing day: what the report shows."""

    app_id: str
    day: date
    used: int
    limit: int

    @property
    def left(self) -> int:
        return max(self.limit - self.used, 0)

    def line(self) -> str:
        return (
            f"**Daily quota of account {self.app_id}** (Beijing day {self.day.isoformat()}): "
            f"{self.used:,} used, {self.left:,} left of {self.limit:,} template messages; "
            "it resets at midnight Asia/Shanghai"
        )


def quota_today(app: WeChatApp, now: datetime | None = None) -> QuotaToday:
    """This account's count for today (Beijing), from the database."""
    day = (now or datetime.now(UTC)).astimezone(BEIJING).date()
    with engine().connect() as conn:
        used = quota_used(conn, app.app_id, day)
    return QuotaToday(app_id=app.app_id, day=day, used=used, limit=app.daily_quota)


@dataclass(frozen=True, slots=True)
class QuotaLeft:
    """Template messages the account may still send today, by both counts."""

    account: QuotaToday
    #: WeChat's answer; None when the query failed (`wechat_error` says how).
    wechat: ApiQuota | None
    wechat_error: str | None
    resets_at: datetime

    @property
    def left(self) -> int:
        left = self.account.left
        return left if self.wechat is None else min(left, self.wechat.remain)

    def figures(self) -> str:
        """`WeChat: 70 of 100 left; this account: 99,930 of 100,000 left`."""
        said = [f"this account: {self.account.left:,} of {self.account.limit:,} left"]
        if self.wechat is not None:
            said.insert(0, f"WeChat: {self.wechat.remain:,} of {self.wechat.daily_limit:,} left")
        return "; ".join(said)


async def quota_left(app: WeChatApp, token: SecretStr, now: datetime) -> QuotaLeft:
    """Both counts of what is left today. A failed WeChat query is not fatal: the answer
    carries its one-line description and the account's count alone."""
    wechat: ApiQuota | None = None
    error: str | None = None
    try:
        async with WeChatClient(app.api_base_url, kind=app.kind) as client:
            wechat = await client.get_api_quota(token)
    except WeChatError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return QuotaLeft(
        account=quota_today(app, now),
        wechat=wechat,
        wechat_error=error,
        resets_at=next_reset(now),
    )
