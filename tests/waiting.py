"""Wait for a condition, not for a fixed time: a sleep long enough on a loaded CI machine is
too long everywhere else, and one that is short enough here is flaky there.

Both return as soon as `condition()` is true and fail naming `what` after `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 10.0, poll: float = 0.01
) -> None:
    """Block this thread until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(poll)


async def await_until(
    condition: Callable[[], object], what: str, timeout: float = 10.0, poll: float = 0.01
) -> None:
    """Yield to the event loop until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(poll)
