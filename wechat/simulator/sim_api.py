"""The admin API under /_sim/: seed followers and templates, read accepted messages and
counters, set faults and config, move the clock, rotate tokens, reset; configure callbacks,
read what was pushed, and make a follower act. JSON in, JSON out; invalid input is answered
HTTP 400 with pydantic's error list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from wechat.simulator.accounts import Accounts, DuplicateAccount, UnknownAccount
from wechat.simulator.callbacks import PushKind
from wechat.simulator.clock import iso
from wechat.simulator.config import AccountConfig, CallbackConfig, FaultConfig
from wechat.simulator.counters import KINDS
from wechat.simulator.models import (
    ClockAdvance,
    FollowerAction,
    FollowerIn,
    ResetRequest,
    TemplateSpec,
)
from wechat.simulator.pusher import CallbackPusher
from wechat.simulator.registry import Follower, Template
from wechat.simulator.state import FollowerNotFollowing, SimulatorState

MAX_PAGE: Final = 100_000
SECRET_MASK: Final = "**********"  # how pydantic dumps a set SecretStr to JSON
PUSH_KINDS: Final = ("receipt", "message", "click", "subscribe", "unsubscribe", "view")
ACTIONS: Final[dict[str, PushKind]] = {
    "message": "message",
    "click": "click",
    "subscribe": "subscribe",
    "unsubscribe": "unsubscribe",
    "view": "view",
}
_FOLLOWERS_IN: Final = TypeAdapter(FollowerIn | list[FollowerIn])
_TEMPLATES_IN: Final = TypeAdapter(TemplateSpec | list[TemplateSpec])

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """Answered HTTP 400 with this payload."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload.get("error"))
        self.payload = payload


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _guard(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return _json(exc.payload, status=400)
        except UnknownAccount:
            return _json({"error": "no such account"}, status=404)
        except orjson.JSONDecodeError as exc:
            return _json({"error": f"invalid JSON: {exc}"}, status=400)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            return _json({"error": "invalid payload", "detail": errors}, status=400)

    return guarded


async def _body(request: web.Request) -> bytes:
    body = await request.read()
    return body or b"{}"


def _int_param(request: web.Request, name: str, default: int | None, low: int = 0) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest({"error": f"{name} must be an integer"}) from None
    if value < low:
        raise BadRequest({"error": f"{name} must be >= {low}"})
    return value


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in {"1", "true", "yes"}


def follower_json(follower: Follower, state: SimulatorState) -> dict[str, Any]:
    """One follower; `custom_sends_left` is for now, by the account's window rules."""
    return {
        "openid": follower.openid,
        "subscribed": follower.subscribed,
        "blocked": follower.blocked,
        "last_interaction_at": iso(follower.last_interaction_at),
        "last_event_at": iso(follower.last_event_at),
        "custom_sends_left": follower.custom_sends_left(state.clock.now(), state.config),
        "subscribe_authorizations": dict(follower.subscribe_authorizations),
    }


def template_json(template: Template) -> dict[str, Any]:
    return {
        "template_id": template.template_id,
        "keys": list(template.keys),
        "title": template.title,
    }


def callback_config_json(config: CallbackConfig) -> dict[str, Any]:
    """The callback config with its secrets masked (pydantic's JSON dump of SecretStr)."""
    return {
        **config.model_dump(mode="json"),
        "enabled": config.enabled,
        "safe_mode": config.safe_mode,
    }


def _merged(model: type[M], current: M, patch: bytes) -> M:
    """`current` with the fields of the JSON object `patch` changed, fully re-validated."""
    changes = orjson.loads(patch)
    if not isinstance(changes, dict):
        raise BadRequest({"error": "expected a JSON object"})
    return model.model_validate({**current.model_dump(), **changes})


class SimApi:
    """Handlers of /_sim/…. Account-level endpoints take an optional `?app_id=` (default: the
    default account; unknown: 404); the clock is shared and the callbacks are the default
    account's."""

    def __init__(
        self,
        accounts: Accounts | SimulatorState,
        pusher: CallbackPusher | None = None,
        *,
        on_reset: Callable[..., None] | None = None,
    ) -> None:
        self.accounts = accounts if isinstance(accounts, Accounts) else Accounts(accounts)
        self.pusher = pusher
        # What else a reset of the whole simulator resets (the group robots), called with
        # `everything=`.
        self.on_reset = on_reset

    @property
    def state(self) -> SimulatorState:
        """The default account (the clock and the callbacks live there)."""
        return self.accounts.default

    def _account(self, request: web.Request) -> SimulatorState:
        return self.accounts.get(request.query.get("app_id"))

    def routes(self) -> list[web.RouteDef]:
        g = _guard
        return [
            web.get("/_sim/health", g(self.health)),
            web.get("/_sim/messages", g(self.messages)),
            web.get("/_sim/followers", g(self.followers)),
            web.post("/_sim/followers", g(self.upsert_followers)),
            web.get("/_sim/followers/{openid}", g(self.follower)),
            web.get("/_sim/templates", g(self.templates)),
            web.post("/_sim/templates", g(self.add_templates)),
            web.delete("/_sim/templates/{template_id}", g(self.delete_template)),
            web.get("/_sim/faults", g(self.faults)),
            web.post("/_sim/faults", g(self.set_faults)),
            web.get("/_sim/config", g(self.config)),
            web.post("/_sim/config", g(self.set_config)),
            web.get("/_sim/clock", g(self.clock)),
            web.post("/_sim/clock", g(self.advance_clock)),
            web.post("/_sim/tokens/rotate", g(self.rotate_tokens)),
            web.get("/_sim/counters", g(self.counters)),
            web.post("/_sim/reset", g(self.reset)),
            web.get("/_sim/callbacks", g(self.callbacks)),
            web.get("/_sim/callbacks/config", g(self.callback_config)),
            web.post("/_sim/callbacks/config", g(self.set_callback_config)),
            web.get("/_sim/callbacks/pushes", g(self.callback_pushes)),
            web.post("/_sim/followers/{openid}/{action}", g(self.follower_action)),
            web.get("/_sim/accounts", g(self.list_accounts)),
            web.post("/_sim/accounts", g(self.add_account)),
        ]

    async def health(self, request: web.Request) -> web.StreamResponse:
        state = self._account(request)
        return _json(
            {
                "status": "ok",
                "app_id": state.config.app_id,
                "followers": len(state.registry.followers),
                "templates": len(state.registry.templates),
                "messages": len(state.log),
            }
        )

    async def messages(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        kind = query.get("kind")
        if kind is not None and kind not in KINDS:
            raise BadRequest({"error": f"kind must be one of {', '.join(KINDS)}"})
        since = _int_param(request, "since", None)
        offset = _int_param(request, "offset", 0) or 0
        limit = min(_int_param(request, "limit", 100, low=1) or 100, MAX_PAGE)
        total, page = self._account(request).log.query(
            openid=query.get("openid"),
            template_id=query.get("template_id"),
            kind=kind,
            client_msg_id=query.get("client_msg_id"),
            since=since,
            offset=offset,
            limit=limit,
        )
        return _json(
            {
                "total": total,
                "offset": offset,
                "next_since": page[-1].seq if page else since,
                "items": [message.to_json() for message in page],
            }
        )

    async def followers(self, request: web.Request) -> web.StreamResponse:
        state = self._account(request)
        registry = state.registry
        if _flag(request, "count_only"):
            return _json({"total": len(registry.followers)})
        offset = _int_param(request, "offset", 0) or 0
        limit = min(_int_param(request, "limit", 100, low=1) or 100, MAX_PAGE)
        page = islice(registry.followers.values(), offset, offset + limit)
        return _json(
            {
                "total": len(registry.followers),
                "followers": [follower_json(f, state) for f in page],
            }
        )

    async def upsert_followers(self, request: web.Request) -> web.StreamResponse:
        parsed = _FOLLOWERS_IN.validate_json(await request.read())
        state = self._account(request)
        registry = state.registry
        now = state.clock.now()
        created = updated = 0
        for item in parsed if isinstance(parsed, list) else [parsed]:
            changes: dict[str, object] = {
                name: getattr(item, name) for name in item.model_fields_set if name != "openid"
            }
            if "last_interaction_at" in changes:
                at = item.last_interaction_at
                changes["last_interaction_at"] = at.timestamp() if at is not None else None
            if registry.upsert_follower(item.openid, changes, now):
                created += 1
            else:
                updated += 1
        return _json({"created": created, "updated": updated, "total": len(registry.followers)})

    async def follower(self, request: web.Request) -> web.StreamResponse:
        state = self._account(request)
        follower = state.registry.followers.get(request.match_info["openid"])
        if follower is None:
            return _json({"error": "no such follower"}, status=404)
        return _json(follower_json(follower, state))

    async def templates(self, request: web.Request) -> web.StreamResponse:
        templates = self._account(request).registry.templates
        return _json([template_json(t) for t in templates.values()])

    async def add_templates(self, request: web.Request) -> web.StreamResponse:
        parsed = _TEMPLATES_IN.validate_json(await request.read())
        specs = parsed if isinstance(parsed, list) else [parsed]
        registry = self._account(request).registry
        for spec in specs:
            registry.add_template(Template(spec.template_id, tuple(spec.keys), spec.title))
        return _json([spec.model_dump() for spec in specs])

    async def delete_template(self, request: web.Request) -> web.StreamResponse:
        removed = self._account(request).registry.templates.pop(
            request.match_info["template_id"], None
        )
        if removed is None:
            return _json({"error": "no such template"}, status=404)
        return _json(template_json(removed))

    async def faults(self, request: web.Request) -> web.StreamResponse:
        return _json(self._account(request).faults.config.model_dump())

    async def set_faults(self, request: web.Request) -> web.StreamResponse:
        # Replaces the whole fault profile (fields not given are off), unlike /_sim/config.
        config = FaultConfig.model_validate_json(await _body(request))
        self._account(request).faults.configure(config)
        return _json(config.model_dump())

    async def config(self, request: web.Request) -> web.StreamResponse:
        return _json(self._account(request).config.model_dump())

    async def set_config(self, request: web.Request) -> web.StreamResponse:
        state = self._account(request)
        config = _merged(AccountConfig, state.config, await _body(request))
        other = self.accounts.find(config.app_id)
        if other is not None and other is not state:
            raise BadRequest({"error": "another account has this app_id"})
        state.config = config
        return _json(config.model_dump())

    def _clock_json(self) -> dict[str, Any]:
        clock = self.state.clock
        now = clock.now()
        return {
            "now": now,
            "now_iso": iso(now),
            "offset_seconds": clock.offset,
            "seconds_to_next_day": clock.seconds_to_next_day(),
        }

    async def clock(self, request: web.Request) -> web.StreamResponse:
        return _json(self._clock_json())

    async def advance_clock(self, request: web.Request) -> web.StreamResponse:
        advance = ClockAdvance.model_validate_json(await _body(request))
        self.state.clock.advance(advance.advance_seconds)
        return _json(self._clock_json())

    async def rotate_tokens(self, request: web.Request) -> web.StreamResponse:
        state = self._account(request)
        state.tokens.rotate(state.clock.now())
        return _json({"rotated": True})

    async def counters(self, request: web.Request) -> web.StreamResponse:
        state = self._account(request)
        return _json(state.counters.snapshot(state.tokens_issued()))

    async def reset(self, request: web.Request) -> web.StreamResponse:
        options = ResetRequest.model_validate_json(await _body(request))
        if request.query.get("app_id"):  # that account only; the shared clock keeps going
            self._account(request).reset(everything=options.everything, clock=False)
        else:
            self.accounts.reset(everything=options.everything)
            if self.on_reset is not None:
                self.on_reset(everything=options.everything)
        return _json({"reset": True, "everything": options.everything})

    # ---- callbacks -------------------------------------------------------------------------

    async def callbacks(self, request: web.Request) -> web.StreamResponse:
        return _json(self.state.callbacks.snapshot())

    async def callback_config(self, request: web.Request) -> web.StreamResponse:
        return _json(callback_config_json(self.state.callbacks.config))

    async def set_callback_config(self, request: web.Request) -> web.StreamResponse:
        """Merge the fields given, re-seed the receipt RNG. A secret posted back as the mask
        (a GET answer sent back whole) keeps its current value."""
        changes = orjson.loads(await _body(request))
        if not isinstance(changes, dict):
            raise BadRequest({"error": "expected a JSON object"})
        changes = {
            name: value
            for name, value in changes.items()
            if not (name in {"callback_token", "encoding_aes_key"} and value == SECRET_MASK)
        }
        changes.pop("enabled", None)
        changes.pop("safe_mode", None)
        outbox = self.state.callbacks
        config = CallbackConfig.model_validate({**outbox.config.model_dump(), **changes})
        outbox.configure(config)
        return _json(callback_config_json(config))

    async def callback_pushes(self, request: web.Request) -> web.StreamResponse:
        kind = request.query.get("kind")
        if kind is not None and kind not in PUSH_KINDS:
            raise BadRequest({"error": f"kind must be one of {', '.join(PUSH_KINDS)}"})
        since = _int_param(request, "since", None)
        limit = min(_int_param(request, "limit", 1000, low=1) or 1000, MAX_PAGE)
        page = self.state.callbacks.query(since=since, kind=kind, limit=limit)
        return _json(
            {
                "next_since": page[-1].seq if page else since,
                "items": [push.to_json() for push in page],
            }
        )

    async def follower_action(self, request: web.Request) -> web.StreamResponse:
        """A follower messages, clicks, (un)subscribes or views; pushed now, answered with the
        push and its outcome (the admin request waits for the receiver, retries included)."""
        kind = ACTIONS.get(request.match_info["action"])
        if kind is None:
            return _json({"error": f"action must be one of {', '.join(ACTIONS)}"}, status=404)
        params = FollowerAction.model_validate_json(await _body(request))
        openid = request.match_info["openid"]
        state = self._account(request)
        try:
            push = state.follower_acts(
                kind, openid, text=params.text, key=params.key, url=params.url, scene=params.scene
            )
        except LookupError:
            return _json({"error": "no such follower"}, status=404)
        except FollowerNotFollowing:
            return _json({"error": "the follower does not follow the account"}, status=409)
        outbox = state.callbacks  # only the default account's callbacks can be switched on
        if self.pusher is not None and outbox.enabled:
            await self.pusher.push_now(push)
        else:
            outbox.drop(push)
        return _json(push.to_json())

    # ---- accounts --------------------------------------------------------------------------

    async def list_accounts(self, request: web.Request) -> web.StreamResponse:
        return _json([account_json(state) for state in self.accounts])

    async def add_account(self, request: web.Request) -> web.StreamResponse:
        """Serve one more account (AccountConfig fields: app_id and app_secret required, e.g.
        daily_quota optional); 409 if its app_id is served already."""
        config = AccountConfig.model_validate_json(await request.read() or b"{}")
        try:
            state = self.accounts.add(config)
        except DuplicateAccount:
            return _json({"error": "an account with this app_id exists"}, status=409)
        return _json(account_json(state), status=201)


def account_json(state: SimulatorState) -> dict[str, Any]:
    """One account in GET/POST /_sim/accounts: no secret (GET /_sim/config?app_id= has it)."""
    config = state.config
    return {
        "app_id": config.app_id,
        "daily_quota": config.daily_quota,
        "quota_used_today": state.quota.used(state.clock.day()),
        "followers": len(state.registry.followers),
        "templates": len(state.registry.templates),
        "messages": len(state.log),
    }
