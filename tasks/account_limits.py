"""The account-wide limits the send engine takes its chunks from (sending/account.py's
`AccountLimits`), in the ledger's database (db/account_limits.py): the one place every
campaign, shard and worker process of an account shares, on PostgreSQL across machines.

Each call runs in a thread (`asyncio.to_thread`), so the sends on the event loop go on
while the database answers; a short retry covers a locked or restarting database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import date
from typing import TypeVar

from sqlalchemy import Connection, Engine

from db.account_limits import give_back_quota, reserve_quota, reserve_slots
from db.errors import MISSING_TABLE_HINT, error_name, is_missing_table
from sending.account import QuotaChunk, SlotChunk
from tasks.blocks import WeChatApp
from tasks.database import engine
from tasks.events import QUOTA_ALERT_SHARE, quota_crossed

__all__ = ["AccountLimitsUnavailable", "SqlAccountLimits", "account_limits"]

#: Tries per reservation before the run pauses (0.2 s, 0.4 s, 0.8 s between them).
ATTEMPTS = 4

T = TypeVar("T")


class AccountLimitsUnavailable(RuntimeError):
    """The account's rows could not be reached: the message names the database error, never
    quotes it (its text can carry values), and says what to do when a table is missing."""


class SqlAccountLimits:
    """One account's rate and daily quota, reserved in the database (`AccountLimits`)."""

    def __init__(
        self,
        app_id: str,
        *,
        rate_per_second: float | None,
        daily_quota: int,
        database: Callable[[], Engine] = engine,
        app: str | None = None,
    ) -> None:
        self.app_id = app_id
        self.app = app  # the block's name, for the quota alert
        self.rate_per_second = rate_per_second or None
        self.daily_quota = daily_quota
        self._database = database

    async def take_slots(self, n: int) -> SlotChunk:
        rate = self.rate_per_second
        assert rate is not None, "no account rate: nothing to reserve"
        grant = await asyncio.to_thread(
            self._run, lambda conn: reserve_slots(conn, self.app_id, n, rate)
        )
        return SlotChunk(grant.count, grant.wait, grant.interval)

    async def take_quota(self, n: int) -> QuotaChunk:
        grant = await asyncio.to_thread(
            self._run, lambda conn: reserve_quota(conn, self.app_id, n, self.daily_quota)
        )
        if grant.granted and _crossed(grant.used - grant.granted, grant.used, grant.quota):
            # Exactly one reservation crosses the line: the database serialises them.
            quota_crossed(self.app_id, self.app, grant.used, grant.quota, grant.day).emit()
        return QuotaChunk(grant.granted, grant.day, grant.used, grant.quota)

    async def give_back(self, day: date, n: int) -> None:
        await asyncio.to_thread(self._run, lambda conn: give_back_quota(conn, self.app_id, day, n))

    def _run(self, work: Callable[[Connection], T]) -> T:
        """`work` in its own short transaction (the account's row stays locked until it
        commits), tried again a few times on a failure."""
        delay = 0.2
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with self._database().begin() as conn:
                    return work(conn)
            except Exception as exc:
                if is_missing_table(exc):
                    raise AccountLimitsUnavailable(f"the database: {MISSING_TABLE_HINT}") from exc
                if attempt == ATTEMPTS:
                    raise AccountLimitsUnavailable(f"the database: {error_name(exc)}") from exc
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


def _crossed(before: int, after: int, quota: int) -> bool:
    """Whether a reservation took the day's use from below QUOTA_ALERT_SHARE to it or above."""
    line = QUOTA_ALERT_SHARE * quota
    return before < line <= after


def account_limits(app: WeChatApp) -> SqlAccountLimits:
    """The limits of the account a wechat-app block names (its AppID: two blocks of one
    account share them)."""
    return SqlAccountLimits(
        app.app_id,
        rate_per_second=app.rate_per_second,
        daily_quota=app.daily_quota,
        app=getattr(app, "_block_document_name", None),
    )
