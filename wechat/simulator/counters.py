"""What happened since the last reset, for /_sim/counters: calls per endpoint, accepted and
deduplicated sends, errcodes answered, faults injected."""

from __future__ import annotations

from collections import Counter
from typing import Any

ENDPOINTS = (
    "token",
    "stable_token",
    "stable_token_force",
    "getcallbackip",
    "template_send",
    "custom_send",
    "subscribe_bizsend",
    "quota_get",
)
KINDS = ("template", "custom", "subscribe")
FAULTS = ("drop", "http_5xx", "minus_one", "slow", "rate_limited")


class Counters:
    """Plain dict increments: cheap enough for the hot path."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
        self.accepted: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.deduplicated = 0
        self.errcodes: Counter[int] = Counter()
        self.faults: dict[str, int] = dict.fromkeys(FAULTS, 0)

    def snapshot(self, tokens_issued: dict[str, int]) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "accepted": sum(self.accepted.values()),
            "accepted_by_kind": dict(self.accepted),
            "deduplicated": self.deduplicated,
            "errcodes": {str(code): n for code, n in sorted(self.errcodes.items())},
            "faults": dict(self.faults),
            "tokens_issued": tokens_issued,
        }
