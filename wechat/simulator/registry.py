"""Who can receive what: the account's followers (subscription, blocks, customer-service
windows and counts, subscribe-message authorizations) and its templates (the keys each one
requires)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wechat.simulator.config import AccountConfig
from wechat.simulator.replies import (
    OUT_OF_RESPONSE_COUNT,
    OUT_OF_WINDOW,
    REQUIRE_REMOVE_BLACKLIST,
    REQUIRE_SUBSCRIBE,
    USER_BLOCKED_MESSAGES,
)

Blocked = Literal["blacklist", "refuse"]


@dataclass(slots=True)
class Follower:
    """One follower. Customer-service sends need an open window: the follower's last message
    (`last_interaction_at`, or as seeded) opens one of `custom_window_hours` for
    `custom_message_limit` sends; a menu click or a follow (`last_event_at`) opens one of
    `custom_event_seconds` for `custom_event_limit` sends. Each new interaction of a kind
    starts that kind's window and count afresh."""

    openid: str
    subscribed: bool = True
    blocked: Blocked | None = None
    last_interaction_at: float | None = None
    subscribe_authorizations: dict[str, int] = field(default_factory=dict)
    custom_used: int = 0  # customer-service sends since last_interaction_at
    last_event_at: float | None = None
    event_custom_used: int = 0  # customer-service sends since last_event_at

    def refusal(self) -> int:
        """Errcode that stops any message to this follower (0 = none)."""
        if not self.subscribed:
            return REQUIRE_SUBSCRIBE
        blocked = self.blocked
        if blocked is None:
            return 0
        return REQUIRE_REMOVE_BLACKLIST if blocked == "blacklist" else USER_BLOCKED_MESSAGES

    def wrote(self, at: float | None) -> None:
        """The follower's message (or a seeded last interaction; None = never): a new
        message window with its full count."""
        self.last_interaction_at, self.custom_used = at, 0

    def clicked_or_followed(self, at: float) -> None:
        """A menu click or a follow: a new short window with its full count."""
        self.last_event_at, self.event_custom_used = at, 0

    def _open(self, now: float, rules: AccountConfig) -> tuple[bool, bool]:
        """Whether the (message, event) windows are open at `now`."""
        message_at, event_at = self.last_interaction_at, self.last_event_at
        message = message_at is not None and now - message_at <= rules.custom_window_hours * 3600
        event = event_at is not None and now - event_at <= rules.custom_event_seconds
        return message, event

    def custom_sends_left(self, now: float, rules: AccountConfig) -> int:
        """Customer-service sends the follower can still be sent now, both windows together."""
        message, event = self._open(now, rules)
        left = max(0, rules.custom_message_limit - self.custom_used) if message else 0
        return left + (max(0, rules.custom_event_limit - self.event_custom_used) if event else 0)

    def take_custom_send(self, now: float, rules: AccountConfig) -> int:
        """Use one customer-service send, or say why not: 45015 when no window is open,
        45047 when the open ones have no send left. The short window is used first (it
        closes first), so a click never eats into what a message allowed."""
        message, event = self._open(now, rules)
        if not message and not event:
            return OUT_OF_WINDOW
        if event and self.event_custom_used < rules.custom_event_limit:
            self.event_custom_used += 1
            return 0
        if message and self.custom_used < rules.custom_message_limit:
            self.custom_used += 1
            return 0
        return OUT_OF_RESPONSE_COUNT


@dataclass(slots=True, frozen=True)
class Template:
    template_id: str
    keys: tuple[str, ...]
    title: str | None = None


class Registry:
    """Followers by openid and templates by id; upserts are what the admin API calls."""

    def __init__(self) -> None:
        self.followers: dict[str, Follower] = {}
        self.templates: dict[str, Template] = {}

    def upsert_follower(self, openid: str, changes: dict[str, object], now: float) -> bool:
        """Create or update one follower with the given fields; True if it was created.
        `subscribe_authorizations` is merged per template id, other fields are replaced. A new
        follower's last interaction defaults to `now`: following is an interaction."""
        follower = self.followers.get(openid)
        created = follower is None
        if follower is None:
            follower = self.followers[openid] = Follower(openid, last_interaction_at=now)
        for name, value in changes.items():
            if name == "subscribe_authorizations":
                follower.subscribe_authorizations.update(value)  # type: ignore[call-overload]
            elif name == "last_interaction_at":  # a seeded message: its window starts afresh
                follower.wrote(value)  # type: ignore[arg-type]
            else:
                setattr(follower, name, value)
        return created

    def add_template(self, template: Template) -> None:
        self.templates[template.template_id] = template
