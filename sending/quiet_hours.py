"""Quiet hours: a daily window of an account's local time in which no campaign sends.

`QuietHours` is the window ("22:00-08:00" in Asia/Shanghai, say): whether a moment is inside
it, when the window around a moment ends, when the next one begins, across midnight and in
any IANA zone (wall-clock times: on a day a zone's clocks jump, a time the jump skips is
read after it). `QuietGuard` is what the send path holds: the moment the next window begins,
computed once when the run starts, compared to the clock before each HTTP attempt (one float
comparison). Prefect-free and database-free; the clock is injectable, so tests move time
instead of waiting for it (docs/operations.md, "Quiet hours").
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as wall_time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Clock", "QuietGuard", "QuietHours", "QuietHoursError", "wall_clock"]

#: Unix seconds now; tests pass their own.
Clock = Callable[[], float]

_WINDOW = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-3]):([0-5]\d)$")


def wall_clock() -> float:
    """The clock the flows read quiet hours on (a test replaces this module attribute)."""
    return time.time()


class QuietHoursError(ValueError):
    """A quiet-hours setting that cannot be read; the message says the expected form."""


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window [start, end) of wall-clock time in `zone`; an end before the start
    runs across midnight (22:00-08:00 is 22:00 to 08:00 the next morning)."""

    start: wall_time
    end: wall_time
    zone: ZoneInfo

    @classmethod
    def parse(cls, window: str, zone: str = "Asia/Shanghai") -> QuietHours:
        """`"22:00-08:00"` in IANA zone `zone`; QuietHoursError says what is wrong."""
        found = _WINDOW.match(window.strip())
        if found is None:
            raise QuietHoursError(
                f"quiet hours {window!r} are not HH:MM-HH:MM (24-hour clock), e.g. 22:00-08:00"
            )
        h1, m1, h2, m2 = (int(part) for part in found.groups())
        start, end = wall_time(h1, m1), wall_time(h2, m2)
        if start == end:
            raise QuietHoursError(
                f"quiet hours {window!r} start and end at the same time: give a window such "
                "as 22:00-08:00, or leave quiet hours empty (off)"
            )
        try:
            tz = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise QuietHoursError(
                f"quiet hours time zone {zone!r} is not an IANA zone name, e.g. Asia/Shanghai"
            ) from None
        return cls(start, end, tz)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.zone.key}"

    def contains(self, at: datetime) -> bool:
        """Whether moment `at` (aware) falls inside the window."""
        local = at.astimezone(self.zone).time()
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def ends_after(self, at: datetime) -> datetime:
        """The first end of the window after `at`: when sending may start again if `at`
        is inside it."""
        return self._next(at, self.end)

    def begins_after(self, at: datetime) -> datetime:
        """The first start of the window at or after `at` (`at` itself if it is a start)."""
        return self._next(at - timedelta(microseconds=1), self.start)

    def _next(self, at: datetime, wall: wall_time) -> datetime:
        """The first moment strictly after `at` whose wall clock in the zone reads `wall`."""
        day = at.astimezone(self.zone).date()
        for offset in range(3):
            candidate = datetime.combine(day + timedelta(days=offset), wall, tzinfo=self.zone)
            # A wall time a DST jump skips does not exist: zoneinfo reads it with the
            # offset before the jump; the round trip through UTC lands after it.
            candidate = candidate.astimezone(UTC).astimezone(self.zone)
            if candidate > at:
                return candidate
        raise AssertionError("a wall-clock time recurs within two days")


class QuietGuard:
    """One run's watch on its account's quiet hours: `begun()` before each attempt."""

    def __init__(self, hours: QuietHours, clock: Clock = wall_clock) -> None:
        self.hours = hours
        self._clock = clock
        now = datetime.fromtimestamp(clock(), UTC)
        #: When the next window begins (now, if the run starts inside one).
        self.begins_at = now if hours.contains(now) else hours.begins_after(now)
        self._deadline = self.begins_at.timestamp()

    def begun(self) -> bool:
        """Whether the window has begun: sending must pause."""
        return self._clock() >= self._deadline

    @property
    def ends_at(self) -> datetime:
        """When the window the run meets ends: when sending may start again."""
        return self.hours.ends_after(self.begins_at)

    def reason(self) -> str:
        """The pause's sentence for the operator (the resume's own words are added later)."""
        local = self.ends_at.astimezone(self.hours.zone)
        return (
            f"the account's quiet hours ({self.hours}) are on: no message is sent until they "
            f"end at {local:%Y-%m-%d %H:%M} {self.hours.zone.key}; the messages not sent stay "
            "pending"
        )
