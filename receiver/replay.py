"""Refuse a signed request seen before: a captured push replayed within the timestamp
window carries a valid signature, so only its (timestamp, nonce) gives it away.

Remembers each accepted (timestamp, nonce) until it falls out of the window; memory is
bounded by the push rate times the window (at 1,000/s and 300 s: 300k short strings).
"""

from __future__ import annotations

import threading
import time
from collections import deque


class NonceCache:
    """Seen (timestamp, nonce) pairs inside the window; thread-safe."""

    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        self._seen: set[tuple[str, str]] = set()
        self._order: deque[tuple[float, tuple[str, str]]] = deque()
        self._lock = threading.Lock()

    def first_time(self, timestamp: str, nonce: str, now: float | None = None) -> bool:
        """Record the pair; False if it was already seen inside the window (a replay)."""
        now = time.monotonic() if now is None else now
        key = (timestamp, nonce)
        with self._lock:
            self._expire(now)
            if key in self._seen:
                return False
            self._seen.add(key)
            self._order.append((now, key))
            return True

    def _expire(self, now: float) -> None:
        # Kept twice the window: a timestamp at the window's edge stays refusable throughout.
        horizon = now - 2 * self.window_seconds
        while self._order and self._order[0][0] < horizon:
            _, key = self._order.popleft()
            self._seen.discard(key)

    def __len__(self) -> int:
        return len(self._seen)
