"""Injected failures, drawn from one seeded RNG (one draw per faultable request, so the same
seed and the same request sequence replay the same outcomes), and the per-second send limit."""

from __future__ import annotations

import random
from enum import StrEnum

from wechat.simulator.config import FaultConfig


class Fault(StrEnum):
    DROP = "drop"  # close the TCP connection without an answer
    HTTP_5XX = "http_5xx"  # an HTTP 5xx with a small HTML body
    MINUS_ONE = "minus_one"  # {"errcode":-1,"errmsg":"system error ..."}
    SLOW = "slow"  # a normal answer after FaultConfig.slow_seconds


class FaultInjector:
    """Maps one uniform draw onto bands [drop | 5xx | -1 | slow | none]."""

    def __init__(self, config: FaultConfig) -> None:
        self.configure(config)

    def configure(self, config: FaultConfig) -> None:
        """Apply a fault config and re-seed: the outcome sequence starts over."""
        self.config = config
        self._random = random.Random(config.seed)
        self._active = config.injects
        bands: list[tuple[float, Fault]] = []
        upper = 0.0
        for rate, fault in (
            (config.drop_rate, Fault.DROP),
            (config.http_5xx_rate, Fault.HTTP_5XX),
            (config.minus_one_rate, Fault.MINUS_ONE),
            (config.slow_rate, Fault.SLOW),
        ):
            if rate > 0:
                upper += rate
                bands.append((upper, fault))
        self._bands = tuple(bands)

    def draw(self, *, token_endpoint: bool = False) -> Fault | None:
        """The fault for this request, or None. Token endpoints draw only if configured to."""
        if not self._active or (token_endpoint and not self.config.apply_to_token_endpoints):
            return None
        r = self._random.random()
        for upper, fault in self._bands:
            if r < upper:
                return fault
        return None


class RateLimiter:
    """At most `limit` message sends per simulator second (a fixed one-second window)."""

    __slots__ = ("_count", "_second")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._second = -1
        self._count = 0

    def allow(self, now: float, limit: int) -> bool:
        second = int(now)
        if second != self._second:
            self._second, self._count = second, 0
        if self._count >= limit:
            return False
        self._count += 1
        return True
