"""One daemon thread that runs blocking database calls one at a time, for an event loop.

The receiver's group commit (receiver/writer.py) writes through one: a call returns a
future of the running loop, settled when the call returns. (The push API's writer,
api/store.py, runs its own daemon thread that takes batches itself.) A daemon thread, not
asyncio's pool, whose threads the interpreter joins at exit: a statement stuck on a dead
database must not keep the process alive after SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DatabaseThread"]

T = TypeVar("T")


class DatabaseThread:
    """Runs blocking calls one at a time in a daemon thread; each call returns a future of
    the running loop. A call stuck in the database never delays the process's exit."""

    def __init__(self, name: str = "wxpush-db") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((loop, future, function, args))
        return future

    def stop(self) -> None:
        """Let the thread end once the call in progress, if any, returns."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, function, args = job
            try:
                outcome: tuple[bool, Any] = (True, function(*args))
            except BaseException as exc:
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
