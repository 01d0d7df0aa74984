"""Refuse a signed request seen before: a captured push replayed within the timestamp
window carries a valid signature, so only its (timestamp, nonce) gives it away.

Memory is bounded whatever arrives:
- a nonce longer than WeChat's (short digit strings) is refused before it is stored;
- each pair is kept as a 16-byte keyed digest, not as the strings;
- pairs live in three generations of one window each, so a pair is remembered for at
  least two windows (a timestamp at the window's edge stays refusable throughout);
- at `max_entries` the oldest generation is dropped early. A replay older than that is
  still harmless: the database's unique key makes its insert a no-op.

This cache is each process's cheap first filter; the database decides (db/nonces.py), so a
replay sent to another process is refused too. The app therefore asks `seen` before it
decodes a push and calls `remember` only once the push is stored: a push whose write
failed is not remembered, and WeChat's retry of it, even with the same timestamp and
nonce, is received.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque

GENERATIONS = 3
MAX_TIMESTAMP_LENGTH = 20  # an int64 in decimal


class NonceRefused(ValueError):
    """A nonce or timestamp no WeChat push carries (too long); never stored."""


class NonceCache:
    """Seen (timestamp, nonce) pairs inside the window; thread-safe, bounded."""

    def __init__(
        self,
        window_seconds: float,
        *,
        max_entries: int = 600_000,
        max_nonce_length: int = 32,
    ) -> None:
        self.window_seconds = window_seconds
        self.max_nonce_length = max_nonce_length
        self._per_generation = max(1, max_entries // GENERATIONS)
        self._generations: deque[set[bytes]] = deque([set()])
        self._started: float | None = None
        self._key = os.urandom(16)  # digests an outsider cannot aim collisions at
        self._lock = threading.Lock()

    def first_time(self, timestamp: str, nonce: str, now: float | None = None) -> bool:
        """Record the pair; False if it was already seen (a replay). Raises NonceRefused
        for a nonce or timestamp too long to be WeChat's."""
        digest = self._digest(timestamp, nonce)
        with self._lock:
            self._rotate(time.monotonic() if now is None else now)
            if self._holds(digest):
                return False
            self._generations[0].add(digest)
            return True

    def seen(self, timestamp: str, nonce: str, now: float | None = None) -> bool:
        """True if the pair was remembered (a replay); records nothing. Raises
        NonceRefused like `first_time`."""
        digest = self._digest(timestamp, nonce)
        with self._lock:
            self._rotate(time.monotonic() if now is None else now)
            return self._holds(digest)

    def remember(self, timestamp: str, nonce: str, now: float | None = None) -> None:
        """Record the pair (its push is stored)."""
        digest = self._digest(timestamp, nonce)
        with self._lock:
            self._rotate(time.monotonic() if now is None else now)
            if not self._holds(digest):
                self._generations[0].add(digest)

    def _digest(self, timestamp: str, nonce: str) -> bytes:
        if len(nonce) > self.max_nonce_length:
            raise NonceRefused(f"nonce longer than {self.max_nonce_length} characters")
        if len(timestamp) > MAX_TIMESTAMP_LENGTH:
            raise NonceRefused(f"timestamp longer than {MAX_TIMESTAMP_LENGTH} characters")
        return hashlib.blake2b(
            f"{timestamp}\n{nonce}".encode(), digest_size=16, key=self._key
        ).digest()

    def _holds(self, digest: bytes) -> bool:
        return any(digest in generation for generation in self._generations)

    def _rotate(self, now: float) -> None:
        # Rotations come a window apart unless the cache is full; a pair is dropped at the
        # third rotation after it was stored, so it is kept at least two windows.
        if self._started is None:
            self._started = now
        current = self._generations[0]
        if now - self._started >= self.window_seconds or len(current) >= self._per_generation:
            self._generations.appendleft(set())
            self._started = now
            while len(self._generations) > GENERATIONS:
                self._generations.pop()

    def __len__(self) -> int:
        return sum(len(generation) for generation in self._generations)
