"""access_token issuing and checking: the classic endpoint (each call supersedes the previous
token after an overlap) and the stable endpoint (one shared token, rolled near its end, force
refresh rationed). The two kinds never affect each other."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

from wechat.simulator.clock import DailyCounter
from wechat.simulator.config import AccountConfig
from wechat.simulator.replies import (
    ACCESS_TOKEN_EXPIRED,
    DAILY_QUOTA,
    INVALID_CREDENTIAL,
)


class TokenKind(StrEnum):
    CLASSIC = "classic"
    STABLE = "stable"


@dataclass(slots=True)
class Token:
    value: str
    kind: TokenKind
    expires_at: float
    invalid_after: float | None = None  # set when superseded, force-refreshed or rotated

    def status(self, now: float) -> int:
        """0 if usable now; 40001 if it was invalidated before it expired; 42001 if expired."""
        invalid_after = self.invalid_after
        if invalid_after is not None and invalid_after <= now and invalid_after < self.expires_at:
            return INVALID_CREDENTIAL
        if self.expires_at <= now:
            return ACCESS_TOKEN_EXPIRED
        return 0

    def invalidate(self, at: float) -> None:
        if self.invalid_after is None or self.invalid_after > at:
            self.invalid_after = at


def new_token_value() -> str:
    """A real-looking token: a short numeric prefix, `_`, then URL-safe random (~140 chars)."""
    return f"{secrets.randbelow(90) + 10}_{secrets.token_urlsafe(102)}"


@dataclass(slots=True)
class Issued:
    """A token handed to a caller, with the life left to announce as `expires_in`."""

    token: Token
    expires_in: int


class TokenStore:
    """Every token ever issued (until reset), so an expired one answers 42001, not 40001."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every token and every daily use."""
        self.tokens: dict[str, Token] = {}
        self.issued = {TokenKind.CLASSIC: 0, TokenKind.STABLE: 0}
        self._classic_latest: Token | None = None
        self._classic_calls = DailyCounter()
        self._stable_current: Token | None = None
        self._stable_live: list[Token] = []
        self._force_refreshes = DailyCounter()
        self._last_force_at: float | None = None

    def check(self, value: str, now: float) -> int:
        """Errcode for an API call made with `value` (0 = fine)."""
        token = self.tokens.get(value)
        if token is None:
            return INVALID_CREDENTIAL
        return token.status(now)

    def _issue(self, kind: TokenKind, now: float, config: AccountConfig) -> Token:
        token = Token(new_token_value(), kind, now + config.token_expires_in)
        self.tokens[token.value] = token
        self.issued[kind] += 1
        return token

    def classic(self, now: float, day: int, config: AccountConfig) -> Issued | int:
        """GET /cgi-bin/token: always a new token; the previous one dies after the overlap."""
        if self._classic_calls.used(day) >= config.classic_token_daily_limit:
            return DAILY_QUOTA
        self._classic_calls.add(day)
        previous = self._classic_latest
        if previous is not None:
            previous.invalidate(now + config.classic_overlap_seconds)
        self._classic_latest = token = self._issue(TokenKind.CLASSIC, now, config)
        return Issued(token, config.token_expires_in)

    def stable(self, now: float, day: int, config: AccountConfig, *, force: bool) -> Issued | int:
        """POST /cgi-bin/stable_token, normal or force_refresh mode."""
        if force:
            # Only a force call that really refreshes uses up one of the day's allowance; one
            # sooner than min_interval after the last refresh is answered like a normal call.
            last = self._last_force_at
            if last is None or now - last >= config.force_refresh_min_interval:
                if self._force_refreshes.used(day) >= config.force_refresh_daily_limit:
                    return DAILY_QUOTA
                self._force_refreshes.add(day)
                self._last_force_at = now
                for token in self._stable_live:
                    token.invalidate(now)
                return self._new_stable(now, config)
        current = self._stable_current
        if current is None or current.status(now) != 0:
            return self._new_stable(now, config)
        if current.expires_at - now <= config.stable_roll_seconds:
            # Roll: the new token is handed out, the old one stays valid until it expires.
            return self._new_stable(now, config)
        return Issued(current, int(current.expires_at - now))

    def _new_stable(self, now: float, config: AccountConfig) -> Issued:
        token = self._issue(TokenKind.STABLE, now, config)
        self._stable_live = [t for t in self._stable_live if t.status(now) == 0]
        self._stable_live.append(token)
        self._stable_current = token
        return Issued(token, config.token_expires_in)

    def rotate(self, now: float) -> None:
        """Admin: every token of both kinds stops working now."""
        for token in self.tokens.values():
            token.invalidate(now)
        self._classic_latest = None
        self._stable_current = None
        self._stable_live = []
