"""Simulator time: real time plus an offset that only moves forward, so tests can age tokens,
windows and quotas without sleeping. Days are counted in Beijing time, as WeChat resets quotas."""

from __future__ import annotations

import time
from datetime import UTC, datetime

BEIJING_OFFSET_SECONDS = 8 * 3600
DAY_SECONDS = 86_400


class SimClock:
    """`now()` is `time.time() + offset`; `advance()` moves the offset forward."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the simulator clock only moves forward")
        self.offset += seconds

    def reset(self) -> None:
        self.offset = 0.0

    def day(self, at: float | None = None) -> int:
        """Index of the Beijing-time calendar day containing `at` (default: now)."""
        moment = self.now() if at is None else at
        return int((moment + BEIJING_OFFSET_SECONDS) // DAY_SECONDS)

    def seconds_to_next_day(self) -> float:
        now = self.now()
        return (self.day(now) + 1) * DAY_SECONDS - BEIJING_OFFSET_SECONDS - now


class DailyCounter:
    """Uses per simulator day (a quota); yesterday's uses are forgotten when the day changes.
    Callers pass the day (`SimClock.day(now)`) so one request reads the clock once."""

    __slots__ = ("_day", "_used")

    def __init__(self) -> None:
        self._day = -1
        self._used = 0

    def used(self, day: int) -> int:
        return self._used if day == self._day else 0

    def add(self, day: int, n: int = 1) -> None:
        if day != self._day:
            self._day, self._used = day, 0
        self._used += n

    def reset(self) -> None:
        self._day, self._used = -1, 0


def iso(at: float | None) -> str | None:
    """Unix seconds as ISO-8601 UTC (`…Z`), the format the admin API answers with."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
