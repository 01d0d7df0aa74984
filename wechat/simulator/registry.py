"""Who can receive what: the account's followers (subscription, blocks, last interaction,
subscribe-message authorizations) and its templates (the keys each one requires)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wechat.simulator.replies import (
    REQUIRE_REMOVE_BLACKLIST,
    REQUIRE_SUBSCRIBE,
    USER_BLOCKED_MESSAGES,
)

Blocked = Literal["blacklist", "refuse"]


@dataclass(slots=True)
class Follower:
    openid: str
    subscribed: bool = True
    blocked: Blocked | None = None
    last_interaction_at: float | None = None
    subscribe_authorizations: dict[str, int] = field(default_factory=dict)

    def refusal(self) -> int:
        """Errcode that stops any message to this follower (0 = none)."""
        if not self.subscribed:
            return REQUIRE_SUBSCRIBE
        blocked = self.blocked
        if blocked is None:
            return 0
        return REQUIRE_REMOVE_BLACKLIST if blocked == "blacklist" else USER_BLOCKED_MESSAGES


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
            else:
                setattr(follower, name, value)
        return created

    def add_template(self, template: Template) -> None:
        self.templates[template.template_id] = template
