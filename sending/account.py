"""An account's limits as the send engine meets them: its send rate and its daily template
quota, shared by every campaign, shard and worker of the account (docs/scaling.md,
"Account-wide limits: as built").

`AccountLimits` is where they live: the flows' implementation reserves them in the database
(tasks/account_limits.py, db/account_limits.py); tests pass their own. The engine never calls
it per message: a run's `AccountGate` takes a chunk of slots and a chunk of quota at a time
(about 0.1 s of sending each, so an account that sends flat out costs about ten statements a
second for each limit, however many runs share it), fetches the next chunk in the background
when half of the last is left, and deals them out one per HTTP attempt. What a run reserved
and did not send goes back when it ends (`close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Protocol

__all__ = [
    "CHUNK_SECONDS",
    "AccountGate",
    "AccountLimits",
    "QuotaChunk",
    "SlotChunk",
    "quota_reason",
]

#: A chunk is about this much sending at the pace the run can go (the smaller of the account's
#: and the campaign's rates): ≤ 1/CHUNK_SECONDS reservations a second per limit and account.
CHUNK_SECONDS = 0.1
#: The most one reservation takes (at 5,000 messages/s and more).
MAX_CHUNK = 500
#: Without any rate to size it by, the quota chunk starts here and doubles while a chunk
#: lasts less than CHUNK_SECONDS (halves while it lasts over ten times that).
MIN_QUOTA_CHUNK = 10


@dataclass(frozen=True, slots=True)
class SlotChunk:
    """`count` send slots of the account: the first `wait` seconds from now, then one every
    `interval` seconds."""

    count: int
    wait: float
    interval: float


@dataclass(frozen=True, slots=True)
class QuotaChunk:
    """`granted` messages of the account's daily `quota` on Beijing day `day`; `used` is the
    day's count with them. 0 granted: the day's quota is spent."""

    granted: int
    day: date
    used: int
    quota: int


class AccountLimits(Protocol):
    """One account's shared limits. `rate_per_second` None: no account rate (only the
    quota is held)."""

    app_id: str
    rate_per_second: float | None
    daily_quota: int

    async def take_slots(self, n: int) -> SlotChunk: ...

    async def take_quota(self, n: int) -> QuotaChunk: ...

    async def give_back(self, day: date, n: int) -> None: ...


def chunk_size(pace: float) -> int:
    """Messages per reservation at `pace` messages a second."""
    return max(1, min(MAX_CHUNK, math.ceil(pace * CHUNK_SECONDS)))


def quota_reason(spent: QuotaChunk, app_id: str, campaign_id: str | int) -> str:
    """The QUOTA pause's reason when the account's own count, not WeChat, says stop."""
    return (
        f"the daily template quota of account {app_id} ({spent.quota:,} messages) is reached "
        f"for Beijing day {spent.day.isoformat()}: the messages not sent stay pending. "
        f"Resume after midnight Asia/Shanghai (`wxpush campaign resume {campaign_id}`), or "
        "raise the account's quota if WeChat grants it more (`wxpush setup --daily-quota N`)"
    )


@dataclass(slots=True)
class _Slots:
    next_at: float  # on the gate's clock
    left: int
    interval: float


@dataclass(slots=True)
class _Units:
    day: date
    left: int


class _Refill:
    """One fetch at a time: callers that find the pool empty await the fetch under way;
    a prefetch nobody awaits keeps its error to itself (the next fetch raises its own)."""

    def __init__(self, fetch: Callable[[], Awaitable[None]]) -> None:
        self._fetch = fetch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
            self._task.add_done_callback(_retrieved)
        return self._task

    async def wait(self) -> None:
        await asyncio.shield(self.start())

    async def _run(self) -> None:
        try:
            await self._fetch()
        finally:
            self._task = None

    async def settle(self) -> None:
        """Let a fetch under way finish (its chunk is then given back with the rest)."""
        task = self._task
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class AccountGate:
    """One run's share of its account's limits: `slot()` before each HTTP attempt (the
    seconds to wait for the account's next slot), then `take_unit()` just before the request
    (one message of the daily quota; False once the day's quota is spent). A unit taken for
    an attempt that then does not happen goes back with `put_back()`; `close()` returns every
    unit the run still holds.

    On the run's one event loop, like the rest of the engine. `counts_quota` is False for
    message kinds the template quota does not count (docs/scaling.md).
    """

    def __init__(
        self,
        limits: AccountLimits,
        *,
        counts_quota: bool,
        campaign_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.rate = limits.rate_per_second or None
        self.counts_quota = counts_quota
        paces = [r for r in (self.rate, campaign_rate) if r]
        self._paced = bool(paces)
        self.slot_chunk = chunk_size(min(paces)) if paces else MAX_CHUNK
        self.quota_chunk = chunk_size(min(paces)) if paces else MIN_QUOTA_CHUNK
        self._clock = clock
        self._slots: deque[_Slots] = deque()
        self._units: deque[_Units] = deque()
        self._last_day: date | None = None
        self._quota_fetched_at: float | None = None
        self._slot_refill = _Refill(self._fetch_slots)
        self._quota_refill = _Refill(self._fetch_quota)
        #: The grant of 0 that said the day's quota is spent, once one came.
        self.spent: QuotaChunk | None = None
        #: Reservations made (statements sent), for benches and tests.
        self.slot_reservations = 0
        self.quota_reservations = 0

    @property
    def active(self) -> bool:
        """False when there is nothing to hold (no account rate, a kind the quota ignores)."""
        return self.rate is not None or self.counts_quota

    # -- the rate ---------------------------------------------------------------------------

    def _slots_left(self) -> int:
        return sum(lot.left for lot in self._slots)

    async def slot(self) -> float:
        """Take the account's next send slot; the seconds to wait for it (0: go now)."""
        if self.rate is None:
            return 0.0
        while not self._slots:
            await self._slot_refill.wait()
        lot = self._slots[0]
        at = lot.next_at
        lot.next_at += lot.interval
        lot.left -= 1
        if not lot.left:
            self._slots.popleft()
        if self._slots_left() <= self.slot_chunk // 2:
            self._slot_refill.start()
        return max(0.0, at - self._clock())

    async def _fetch_slots(self) -> None:
        self.slot_reservations += 1
        chunk = await self.limits.take_slots(self.slot_chunk)
        self._slots.append(_Slots(self._clock() + chunk.wait, chunk.count, chunk.interval))

    # -- the daily quota ----------------------------------------------------------------------

    def _units_left(self) -> int:
        return sum(lot.left for lot in self._units)

    async def take_unit(self) -> bool:
        """One message of the account's daily quota for the attempt about to be sent; False
        once the day's quota is spent (nothing taken)."""
        if not self.counts_quota:
            return True
        while not self._units:
            if self.spent is not None:
                return False
            await self._quota_refill.wait()
        lot = self._units[0]
        lot.left -= 1
        if not lot.left:
            self._units.popleft()
        if self.spent is None and self._units_left() <= self.quota_chunk // 2:
            self._quota_refill.start()
        return True

    def put_back(self) -> None:
        """A unit `take_unit` gave for an attempt that did not happen (a stop came first)."""
        if not self.counts_quota:
            return
        if self._units:
            self._units[0].left += 1
        elif self._last_day is not None:
            self._units.append(_Units(self._last_day, 1))

    async def _fetch_quota(self) -> None:
        if self.spent is not None:
            return
        n = self._next_quota_chunk()
        self.quota_reservations += 1
        chunk = await self.limits.take_quota(n)
        self._last_day = chunk.day
        if chunk.granted:
            self._units.append(_Units(chunk.day, chunk.granted))
        else:
            self.spent = chunk

    def _next_quota_chunk(self) -> int:
        """Sized by the pace when there is one; otherwise by how long the last chunk lasted."""
        now = self._clock()
        last, self._quota_fetched_at = self._quota_fetched_at, now
        if not self._paced and last is not None:
            lasted = now - last
            if lasted < CHUNK_SECONDS:
                self.quota_chunk = min(MAX_CHUNK, self.quota_chunk * 2)
            elif lasted > 10 * CHUNK_SECONDS:
                self.quota_chunk = max(MIN_QUOTA_CHUNK, self.quota_chunk // 2)
        return self.quota_chunk

    # -- the end ----------------------------------------------------------------------------------

    @property
    def units_held(self) -> int:
        """Quota units reserved and not used yet (given back by `close`)."""
        return self._units_left()

    async def close(self) -> None:
        """Give back every unit the run reserved and did not send (slots are not given back:
        a slot passes with time, so an unused one only lowers the rate, never raises it)."""
        await self._slot_refill.settle()
        await self._quota_refill.settle()
        held: dict[date, int] = {}
        for lot in self._units:
            held[lot.day] = held.get(lot.day, 0) + lot.left
        self._units.clear()
        for day, n in held.items():
            if n:
                await self.limits.give_back(day, n)
