"""The rate limiter of one campaign run: one schedule for every batch of the run.

Per-message throttling is plain code, not Prefect's server limiter (polling based, ~160 ms
per acquire: docs/performance.md, docs/architecture.md decision 10). A run's batches all
send from its one event loop (sending.sender.CampaignRun), so the schedule needs no lock
beyond the one that keeps `reserve()` safe if a second thread ever calls it.

The algorithm is GCRA (the "virtual scheduling" form of a token bucket): the limiter keeps
the theoretical arrival time `tat` of the next message. `reserve()` takes the slot
`max(now, tat - (burst - 1)/rate)`, advances `tat` by `1/rate` and returns the wait for it.
Slots are handed out on a fixed grid, so a late wake-up never lowers the rate over time,
and the achieved rate equals the configured one whenever senders are waiting.
A caller cancelled while sleeping wastes its slot (the rate dips, never overshoots).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """`reserve()` before each send, then wait the seconds it returns; at most `rate` per
    second on average. (The sender waits on its StopSignal, so that a stop wakes it.)

    `burst` messages may go back to back after an idle spell (1 = evenly spaced). A rate
    of `None` or 0 means unlimited: `reserve()` returns 0 (callers can skip it altogether
    by checking `unlimited`).
    """

    def __init__(
        self,
        rate_per_second: float | None,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_second is not None and rate_per_second < 0:
            raise ValueError("rate_per_second must be >= 0 (0 or None: unlimited)")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate: float | None = rate_per_second or None
        self.burst = burst
        self._clock = clock
        self._interval = 1.0 / self.rate if self.rate else 0.0
        self._tolerance = (burst - 1) * self._interval
        self._tat = float("-inf")
        self._lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        """True when there is no rate to hold."""
        return self.rate is None

    def reserve(self) -> float:
        """Take the next slot; return how many seconds to wait for it (0 = go now).

        The whole schedule in one place, thread-safe and I/O-free (tests drive it with a
        fake clock).
        """
        if self.rate is None:
            return 0.0
        with self._lock:
            now = self._clock()
            slot = max(now, self._tat - self._tolerance)
            self._tat = max(slot, self._tat) + self._interval
        return slot - now

    def __repr__(self) -> str:
        rate = "unlimited" if self.rate is None else f"{self.rate:g}/s"
        return f"RateLimiter({rate}, burst={self.burst})"
