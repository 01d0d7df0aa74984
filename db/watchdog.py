"""A wall-clock limit enforced from outside the database session.

A session's own timeout is a setting the SQL inside it can change (`set_config(
'statement_timeout', '0', true)` in an audience query switched its limit off). The watchdog
is a thread of this process that, once the limit passes while a statement runs, asks the
driver to cancel it: PostgreSQL's cancel request (psycopg `cancel_safe()`, on a separate
connection) or SQLite's `interrupt()`; both may be called from another thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

#: How long the watchdog waits for PostgreSQL to take a cancel request.
CANCEL_TIMEOUT_SECONDS = 5.0


def canceller(dialect: str, driver_connection: Any) -> Callable[[], None]:
    """How to cancel the statement running on `driver_connection` from another thread."""
    if dialect == "postgresql":
        return lambda: driver_connection.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)
    if dialect == "sqlite":
        return driver_connection.interrupt
    raise ValueError(f"no cancel for {dialect}")  # pragma: no cover - make_engine refuses


class Watchdog:
    """Cancels the running statement when `seconds` pass inside `running()`.

    One daemon thread per watchdog, idle between statements; `fired` tells afterwards that
    the limit was hit (the statement may have failed with "canceled", or just finished).
    Cancelling happens under the lock `running()` takes on the way out, so a cancel never
    lands after its statement's block has ended.
    """

    def __init__(self, cancel: Callable[[], None], seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        self._cancel = cancel
        self._seconds = seconds
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._closed = False
        self.fired = False
        self._thread = threading.Thread(target=self._watch, name="sql-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def running(self) -> Iterator[None]:
        """Arm the limit for the statement (or fetch) run inside the block."""
        with self._cond:
            self._deadline = time.monotonic() + self._seconds
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None
                self._cond.notify()

    def close(self) -> None:
        """Stop the thread (it holds no resources beyond itself)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(CANCEL_TIMEOUT_SECONDS + 1)

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self.fired = True
                self._deadline = None
                # A failed cancel leaves the statement's own error (or `fired`) to tell.
                with suppress(Exception):
                    self._cancel()
