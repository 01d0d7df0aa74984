"""Notice when the receiver refuses many pushes, or stores many receipts no message matches.

A few refusals are noise (a scanner, a retry after a restart); fifty in a minute mean a wrong
Token or EncodingAESKey after a rotation, or an attack, and WeChat is meanwhile dropping real
callbacks. The receiver only counts: whoever starts it decides what "tell" means (`wxpush
receiver` emits a Prefect event that the alert automations send, docs/alerts.md), so this
layer stays free of Prefect.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable

__all__ = ["SPIKE_SECONDS", "SPIKE_THRESHOLD", "SpikeWatch", "Tell"]

#: How many in how long make a spike (per process: each receiver process counts its own).
SPIKE_THRESHOLD = 50
SPIKE_SECONDS = 60

#: tell(kind, count, seconds, detail): kind is "refused" or "unmatched".
Tell = Callable[[str, int, int, str], None]


class SpikeWatch:
    """A sliding window of events of one kind: `tell` once when `threshold` of them fall
    within `seconds`, then not again until a whole window has passed since that call."""

    def __init__(
        self,
        kind: str,
        tell: Tell | None,
        *,
        threshold: int = SPIKE_THRESHOLD,
        seconds: int = SPIKE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self._tell = tell
        self.threshold = threshold
        self.seconds = seconds
        self._clock = clock
        self._times: deque[float] = deque()
        self._told_at: float | None = None
        self.spikes = 0

    def note(self, detail: str, n: int = 1) -> None:
        """Count `n` events; `detail` (no secret: a refusal's reason) goes into the alert."""
        if n < 1:
            return
        now = self._clock()
        self._times.extend([now] * min(n, self.threshold))
        start = now - self.seconds
        while self._times and self._times[0] < start:
            self._times.popleft()
        while len(self._times) > self.threshold:
            self._times.popleft()
        if len(self._times) < self.threshold:
            return
        if self._told_at is not None and now - self._told_at < self.seconds:
            return
        self._told_at = now
        self.spikes += 1
        if self._tell is not None:
            # Telling must never cost a push its answer.
            with contextlib.suppress(Exception):
                self._tell(self.kind, len(self._times), self.seconds, detail)
