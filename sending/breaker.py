"""The circuit breaker: stop sending while WeChat's API is failing, probe, resume by itself.

Per-message retries cope with a busy moment; they do not cope with an outage. With every
answer -1 or 502, each message would burn its `max_attempts`, end `failed`, and the campaign
would go on hammering WeChat with the next rows. The breaker watches the run's most recent
HTTP attempts as one sliding window:

    closed ─(RETRY-class share of the window > `share`, at least `min_attempts` seen)─► open
    open:   no new attempt starts (those in flight finish); ONE probe at a time goes, after
            1 s, 2 s, 4 s … (at most `max_probe_interval`) since the previous one
    open ─(the probe gets any answer that is not RETRY-class: WeChat answers again)─► closed
    open for longer than `give_up_seconds` ─► the sender pauses the campaign (StopCause.BREAKER)

RETRY-class (wechat/errors.py): -1, HTTP 5xx/429, timeouts, dropped connections. 45011
(per-minute API quota) is RETRY-class for the message, which waits a minute, but to the
breaker it is an answer from a working API: it counts as one, so a campaign sent faster than
the account's per-minute quota is slowed by 45011's own wait, not paused as "WeChat failing".

Pure state, no I/O and no event loop: the sender asks `turn()` how long to wait and reports
each answer (`passed` / `failed`). The clock is injectable, so tests drive it by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Breaker", "BreakerPolicy", "Outage"]


class BreakerPolicy(BaseModel):
    """When the breaker opens, how it probes, and when it gives up (docs/sending.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(
        50, ge=2, le=10_000, description="The most recent HTTP attempts judged together."
    )
    share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Open when more than this share of the window failed RETRY-class; "
        "1 = never open.",
    )
    min_attempts: int = Field(
        20,
        ge=1,
        description="Attempts seen before the share is judged (at most `window`), so the first "
        "few answers of a run cannot open it alone.",
    )
    first_probe: float = Field(1.0, gt=0, description="Seconds from opening to the first probe.")
    max_probe_interval: float = Field(
        30.0, gt=0, description="Longest wait between two probes, seconds (the interval doubles)."
    )
    give_up_seconds: float = Field(
        600.0, gt=0, description="Open this long, seconds: the campaign is paused."
    )


@dataclass(frozen=True, slots=True)
class Outage:
    """What an open breaker has seen since it opened: the figures of a pause reason."""

    opened_at: float  # the breaker's clock
    seconds: float
    failed: int  # RETRY-class answers: the window's that opened it, and every one since
    probes: int  # probes sent (the one in flight included)
    window_failed: int  # RETRY-class answers in the window that opened it
    window_size: int


class Breaker:
    """One per campaign run. The hot path reads `closed` (a plain attribute) and reports
    each answer; everything else happens only while the breaker is open."""

    def __init__(
        self, policy: BreakerPolicy | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy = policy or BreakerPolicy()
        self.clock = clock
        self.closed = True
        self._size = policy.window
        self._min = min(policy.min_attempts, policy.window)
        self._ring = [False] * policy.window  # True: that attempt failed RETRY-class
        self._at = 0  # where the next answer goes in the ring
        self._seen = 0  # answers in the ring (≤ window)
        self._failures = 0  # True entries in the ring
        self._streak = 0  # RETRY-class failures in a row, the most recent answers
        self._opened_at = 0.0
        self._next_probe_at = 0.0
        self._closed_at = 0.0
        self._probe_out = False
        self._probes = 0
        self._failed_open = 0
        self._window_failed = 0
        self._window_seen = 0
        #: Times it opened during the run (reports, tests).
        self.opened = 0

    # -- answers -----------------------------------------------------------------------------

    def passed(self, probe: bool = False) -> None:
        """WeChat answered (sent, or any error that is not RETRY-class). A probe's answer
        closes an open breaker; other answers of attempts started before it opened do not."""
        if self.closed:
            self._push(False)
            self._streak = 0
        elif probe:
            self._close()

    def failed(self, probe: bool = False) -> bool:
        """A RETRY-class failure. True when the breaker is open now (this failure opened it,
        or came while it was open): the message waits for the breaker instead of counting
        the failure against its own attempts."""
        if self.closed:
            self._push(True)
            self._streak += 1
            if self._seen < self._min or self._failures <= self.policy.share * self._seen:
                return False
            self._open()
            return True
        self._failed_open += 1
        if probe:
            self._probe_out = False
            self._probes_failed()
        return True

    def storm(self, failures: int) -> bool:
        """The run's last `failures` answers all failed RETRY-class, and the breaker can
        open. A message that used up its attempts then waits on (its failures are the run's,
        not its own) instead of giving up: with few sends in flight, one message can fail
        `max_attempts` times before the window has seen enough to open; it opens within
        `window` failures in a row."""
        return self.policy.share < 1 and self._streak >= failures

    def withdraw(self) -> None:
        """The probe granted by `turn` was not sent (the campaign stopped first)."""
        self._probe_out = False

    # -- while open --------------------------------------------------------------------------

    def turn(self) -> float | None:
        """While open: None when the caller's attempt is the probe (report its answer with
        `probe=True`), else the seconds to wait before asking again (a probe is in flight,
        or the next one is not due yet), never past the moment it `expired`."""
        now = self.clock()
        left = self._opened_at + self.policy.give_up_seconds - now
        if self._probe_out:
            return max(0.0, min(self.policy.max_probe_interval, left))
        if now >= self._next_probe_at:
            self._probe_out = True
            self._probes += 1
            return None
        return max(0.0, min(self._next_probe_at - now, left))

    def expired(self) -> bool:
        """Open for longer than the policy's `give_up_seconds`: time to pause the campaign."""
        return not self.closed and self.clock() - self._opened_at >= self.policy.give_up_seconds

    def outage(self) -> Outage:
        """The current (or, once closed, the last) outage's figures."""
        end = self._closed_at if self.closed else self.clock()
        return Outage(
            opened_at=self._opened_at,
            seconds=max(0.0, end - self._opened_at),
            failed=self._failed_open,
            probes=self._probes,
            window_failed=self._window_failed,
            window_size=self._window_seen,
        )

    # -- inside ------------------------------------------------------------------------------

    def _push(self, failed: bool) -> None:
        at = self._at
        old = self._ring[at]
        self._ring[at] = failed
        self._at = 0 if at + 1 == self._size else at + 1
        if self._seen < self._size:
            self._seen += 1
            self._failures += failed
        elif old != failed:
            self._failures += 1 if failed else -1

    def _open(self) -> None:
        now = self.clock()
        self.closed = False
        self.opened += 1
        self._opened_at = now
        self._next_probe_at = now + self.policy.first_probe
        self._probe_out = False
        self._probes = 0
        self._failed_open = self._failures  # the window's, the one that opened it included
        self._window_failed, self._window_seen = self._failures, self._seen

    def _probes_failed(self) -> None:
        interval = min(self.policy.max_probe_interval, self.policy.first_probe * 2.0**self._probes)
        self._next_probe_at = self.clock() + interval

    def _close(self) -> None:
        self.closed = True
        self._probe_out = False
        self._closed_at = self.clock()
        # A fresh window: the outage's failures must not open it again at the next one.
        self._ring = [False] * self._size
        self._at = self._seen = self._failures = self._streak = 0
