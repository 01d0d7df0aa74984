"""The rate limiter's schedule, checked with a fake clock; one short real-time check.

Speed and precision *figures* belong to the benchmarks (bench/sender.py); here the schedule
itself is asserted, which is deterministic.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from sending.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def slots(limiter: RateLimiter, clock: FakeClock, n: int) -> list[float]:
    """Absolute slot times of `n` callers arriving at the clock's current time."""
    return [clock.now + limiter.reserve() for _ in range(n)]


@pytest.mark.parametrize("rate", [50, 200])
def test_waiting_senders_get_exactly_the_configured_rate(rate: int) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock)
    times = slots(limiter, clock, 5 * rate)
    start = times[0]
    assert start == clock.now
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {round(1 / rate, 9)}
    # Over 3 seconds of a saturated schedule: exactly 3 × rate slots (within ±5%, trivially).
    in_three_seconds = sum(1 for t in times if t < start + 3.0 - 1e-6)
    assert in_three_seconds == 3 * rate


def test_late_wakeups_do_not_lower_the_rate() -> None:
    """Callers arriving late (a slow loop) still get slots on the same grid."""
    clock = FakeClock()
    limiter = RateLimiter(100, clock=clock)
    first = slots(limiter, clock, 50)  # 0.00 … 0.49
    clock.now += 0.3  # some callers arrive while slots up to 0.49 are taken
    later = slots(limiter, clock, 50)
    assert later[0] == pytest.approx(first[-1] + 0.01)
    assert later[-1] - first[0] == pytest.approx(0.99)


def test_idle_time_is_not_saved_up_beyond_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=3, clock=clock)
    assert [limiter.reserve() for _ in range(5)] == pytest.approx([0, 0, 0, 0.1, 0.2])
    clock.now += 60  # a minute idle: still only `burst` at once
    assert [limiter.reserve() for _ in range(5)] == pytest.approx([0, 0, 0, 0.1, 0.2])


def test_threads_share_one_schedule() -> None:
    clock = FakeClock()
    limiter = RateLimiter(200, clock=clock)
    taken: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [limiter.reserve() for _ in range(250)]
        with lock:
            taken.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(round(t, 9) for t in taken) == [round(i / 200, 9) for i in range(1000)]


def test_unlimited_costs_nothing() -> None:
    for rate in (None, 0):
        limiter = RateLimiter(rate)
        assert limiter.unlimited and limiter.reserve() == 0
        started = time.perf_counter()
        assert not any(limiter.reserve() for _ in range(10_000))
        assert time.perf_counter() - started < 1.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="rate_per_second"):
        RateLimiter(-1)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(10, burst=0)


def test_real_event_loops_in_two_threads_hold_the_rate() -> None:
    """Bounded real-time check: 80 slots at 200/s take ≥ 79/200 s, whatever the threads."""
    limiter = RateLimiter(200)
    stamps: list[float] = []

    def batch() -> None:
        async def go() -> None:
            for _ in range(40):
                await asyncio.sleep(limiter.reserve())  # as the sender waits for its slot
                stamps.append(time.monotonic())

        asyncio.run(go())

    threads = [threading.Thread(target=batch) for _ in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(stamps) == 80
    span = max(stamps) - started
    assert 79 / 200 * 0.98 <= span < 2.0  # never faster than the rate; slack for a busy box
