"""At most `burst` log lines per reason and interval: a flood of refused requests (each one
a line) must not become a flood of log. Like the kernel's printk rate limit, the first line
of a reason after its interval says how many were suppressed, so nothing goes uncounted.

A record's reason is its `ratelimit_key` attribute (`extra={"ratelimit_key": …}`) or else
its message template, so "bad signature" and "stale timestamp (…)" are counted apart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_REASONS = 256  # reasons come from code, but a key never grows without bound


@dataclass
class _Budget:
    started: float
    logged: int = 0
    suppressed: int = 0


class RateLimitFilter(logging.Filter):
    """Passes the first `burst` records per reason in each `interval` seconds."""

    def __init__(
        self, burst: int, interval: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._budgets: dict[str, _Budget] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(getattr(record, "ratelimit_key", record.msg))
        now = self.clock()
        with self._lock:
            if key not in self._budgets and len(self._budgets) >= MAX_REASONS:
                key = "(other reasons)"
            budget = self._budgets.setdefault(key, _Budget(now))
            if now - budget.started >= self.interval:
                if budget.suppressed:
                    # Said on this record, which is logged: a separate record would bypass
                    # the handlers' own formatting.
                    record.msg = f"{record.msg} (… {budget.suppressed} more like this "
                    record.msg += f"suppressed in the last {now - budget.started:.0f} s)"
                budget.started, budget.logged, budget.suppressed = now, 0, 0
            if budget.logged < self.burst:
                budget.logged += 1
                return True
            budget.suppressed += 1
            return False


def limit(logger_names: list[str], burst: int, interval: float) -> RateLimitFilter:
    """Install one filter on each named logger (records logged on them directly)."""
    rate_limit = RateLimitFilter(burst, interval)
    for name in logger_names:
        logging.getLogger(name).addFilter(rate_limit)
    return rate_limit
