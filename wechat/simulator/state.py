"""The simulated account: everything the real server would know about one Official Account,
and the decisions it takes on each API call. Pure and synchronous (no HTTP here): one event
loop owns it, so every call is atomic."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from wechat.fields import check_field
from wechat.simulator import replies as r
from wechat.simulator.callbacks import CallbackOutbox, Fields, Push, PushKind
from wechat.simulator.clock import DailyCounter, SimClock
from wechat.simulator.config import AccountConfig, CallbackConfig, FaultConfig
from wechat.simulator.counters import Counters
from wechat.simulator.defaults import (
    DEMO_OPENID,
    DEMO_TEMPLATE_ID,
    DEMO_TEMPLATE_KEYS,
    DEMO_TEMPLATE_TITLE,
)
from wechat.simulator.faults import FaultInjector, RateLimiter
from wechat.simulator.messages import DedupeWindow, Kind, Message, MessageLog
from wechat.simulator.registry import Follower, Registry, Template
from wechat.simulator.replies import Reply
from wechat.simulator.tokens import Issued, TokenStore

TEMPLATE_SEND_PATH = "/cgi-bin/message/template/send"

CUSTOM_MSGTYPES = frozenset(
    {
        "text",
        "image",
        "voice",
        "video",
        "music",
        "news",
        "mpnews",
        "mpnewsarticle",
        "msgmenu",
        "wxcard",
        "miniprogrampage",
    }
)


class SimulatorState:
    """One account's tokens, followers, templates, messages, quotas, faults and clock."""

    def __init__(
        self,
        config: AccountConfig,
        faults: FaultConfig | None = None,
        *,
        seed_demo: bool = True,
        callbacks: CallbackConfig | None = None,
        clock: SimClock | None = None,
    ) -> None:
        self.startup_config = config
        self.startup_faults = faults or FaultConfig()
        self.seed_demo = seed_demo
        self.config = config
        self.clock = clock or SimClock()  # several accounts share one (wechat.simulator.accounts)
        self.tokens = TokenStore()
        self.registry = Registry()
        self.log = MessageLog()
        self.dedupe = DedupeWindow()
        self.counters = Counters()
        self.faults = FaultInjector(self.startup_faults)
        self.rate = RateLimiter()
        self.quota = DailyCounter()
        self.callbacks = CallbackOutbox(callbacks or CallbackConfig(), self.clock)
        self.generation = 0  # bumped by reset(), so requests in flight can tell
        if seed_demo:
            self._seed_demo()

    # ---- administration ------------------------------------------------------------------

    def reset(self, *, everything: bool = False, clock: bool = True) -> None:
        """Forget messages, counters, tokens, quota use, faults (off), the clock offset and the
        callback queue. `everything` also restores the start-up config, faults, callback
        config, followers and templates. `clock=False` keeps the clock, which one account of
        several shares with the others."""
        self.generation += 1
        if clock:
            self.clock.reset()
        self.tokens.reset()
        self.log.reset()
        self.dedupe.reset()
        self.counters.reset()
        self.rate.reset()
        self.quota.reset()
        self.callbacks.reset(everything=everything)
        if everything:
            self.config = self.startup_config
            self.faults.configure(self.startup_faults)
            self.registry = Registry()
            if self.seed_demo:
                self._seed_demo()
        else:
            self.faults.configure(FaultConfig())

    def _seed_demo(self) -> None:
        self.registry.add_template(
            Template(DEMO_TEMPLATE_ID, DEMO_TEMPLATE_KEYS, DEMO_TEMPLATE_TITLE)
        )
        self.registry.upsert_follower(DEMO_OPENID, {}, self.clock.now())

    def tokens_issued(self) -> dict[str, int]:
        return {kind.value: n for kind, n in self.tokens.issued.items()}

    # ---- tokens ------------------------------------------------------------------------------

    def fail(self, code: int, now: float, detail: str | None = None) -> Reply:
        """The error answer for `code`, counted in /_sim/counters."""
        self.counters.errcodes[code] += 1
        return r.error(code, now, detail)

    def _refuse_credentials(
        self, fields: Mapping[str, Any], now: float, bad_secret: int, bad_secret_text: str | None
    ) -> Reply | None:
        """The error for a token request's grant_type/appid/secret, or None if they are right.
        The two endpoints differ only in how they answer a wrong secret."""
        if fields.get("grant_type") != "client_credential":
            return self.fail(r.INVALID_GRANT_TYPE, now)
        appid = fields.get("appid")
        if not appid or not isinstance(appid, str):
            return self.fail(r.APPID_MISSING, now)
        if appid != self.config.app_id:
            return self.fail(r.INVALID_APPID, now)
        secret = fields.get("secret")
        if not secret or not isinstance(secret, str):
            return self.fail(r.APPSECRET_MISSING, now)
        if not hmac.compare_digest(secret.encode(), self.config.app_secret.encode()):
            return self.fail(bad_secret, now, bad_secret_text)
        return None

    def classic_token(self, query: Mapping[str, str]) -> Reply:
        """GET /cgi-bin/token?grant_type=client_credential&appid=&secret= (wrong secret: 40001)"""
        now = self.clock.now()
        refused = self._refuse_credentials(
            query, now, r.INVALID_CREDENTIAL, r.CLASSIC_BAD_SECRET_ERRMSG
        )
        if refused is not None:
            return refused
        issued = self.tokens.classic(now, self.clock.day(now), self.config)
        return self._token_reply(issued, now)

    def stable_token(self, payload: dict[str, Any] | int) -> Reply:
        """POST /cgi-bin/stable_token with the parsed JSON body, or the errcode parsing gave
        (wrong secret: 40125)."""
        now = self.clock.now()
        if isinstance(payload, int):
            return self.fail(payload, now)
        refused = self._refuse_credentials(payload, now, r.INVALID_APPSECRET, None)
        if refused is not None:
            return refused
        force = payload.get("force_refresh", False)
        if not isinstance(force, bool | None):
            return self.fail(r.DATA_FORMAT_ERROR, now)
        issued = self.tokens.stable(now, self.clock.day(now), self.config, force=bool(force))
        return self._token_reply(issued, now)

    def _token_reply(self, issued: Issued | int, now: float) -> Reply:
        if isinstance(issued, int):
            return self.fail(issued, now)
        return {"access_token": issued.token.value, "expires_in": issued.expires_in}

    def _token_error(self, token: str | None, now: float) -> int:
        if not token:
            return r.ACCESS_TOKEN_MISSING
        return self.tokens.check(token, now)

    def callback_ip(self, token: str | None) -> Reply:
        """GET /cgi-bin/getcallbackip: the cheapest call that proves a token works."""
        now = self.clock.now()
        code = self._token_error(token, now)
        if code:
            return self.fail(code, now)
        return {"ip_list": ["127.0.0.1"]}

    def api_quota(self, token: str | None, body: bytes) -> Reply:
        """POST /cgi-bin/openapi/quota/get: today's (Beijing day, simulator clock) template-send
        limit, use and rest, from the same counter that answers 45009. Only template/send has a
        daily counter here, so any other `cgi_path` is answered 76021."""
        now = self.clock.now()
        code = self._token_error(token, now)
        if code:
            return self.fail(code, now)
        payload = parse_body(body)
        if isinstance(payload, int):
            return self.fail(payload, now)
        if payload.get("cgi_path") != TEMPLATE_SEND_PATH:
            return self.fail(r.CGI_PATH_NOT_FOUND, now)
        limit = self.config.daily_quota
        used = self.quota.used(self.clock.day(now))
        reply: Reply = {
            "errcode": 0,
            "errmsg": "ok",
            "quota": {"daily_limit": limit, "used": used, "remain": max(0, limit - used)},
        }
        per_second = self.faults.config.rate_limit_per_second
        if per_second is not None:  # the simulator's only call-rate limit (45011)
            reply["rate_limit"] = {"call_count": per_second, "refresh_second": 1}
        return reply

    # ---- message sends -------------------------------------------------------------------
    # Each check raises _Refused; `_send` turns that into the error answer (and counts it).

    def send_template(self, token: str | None, body: bytes) -> Reply:
        """POST /cgi-bin/message/template/send. Checks in order: token, send rate (45011),
        body, daily quota (45009), client_msg_id dedupe, recipient, template, data."""
        return self._send(self._template_send, token, body)

    def send_custom(self, token: str | None, body: bytes) -> Reply:
        """POST /cgi-bin/message/custom/send: needs an open window (45015) with a send left
        (45047); see `Follower.take_custom_send`."""
        return self._send(self._custom_send, token, body)

    def send_subscribe(self, token: str | None, body: bytes) -> Reply:
        """POST /cgi-bin/message/subscribe/bizsend: each accepted send uses one of the
        follower's authorizations for that template (none left: 43101)."""
        return self._send(self._subscribe_send, token, body)

    def _send(
        self,
        handler: Callable[[float, dict[str, Any], bytes], Reply],
        token: str | None,
        body: bytes,
    ) -> Reply:
        now = self.clock.now()
        try:
            self._gate(token, now)
            payload = parse_body(body)
            if isinstance(payload, int):
                raise _Refused(payload)
            return handler(now, payload, body)
        except _Refused as refused:
            return self.fail(refused.code, now, refused.detail)

    def _gate(self, token: str | None, now: float) -> None:
        """Token check, then the per-second send limit (45011)."""
        code = self._token_error(token, now)
        if code:
            raise _Refused(code)
        limit = self.faults.config.rate_limit_per_second
        if limit is not None and not self.rate.allow(now, limit):
            self.counters.faults["rate_limited"] += 1
            raise _Refused(r.MINUTE_QUOTA)

    def _template_send(self, now: float, payload: dict[str, Any], body: bytes) -> Reply:
        day = self.clock.day(now)
        if self.quota.used(day) >= self.config.daily_quota:
            raise _Refused(r.DAILY_QUOTA)
        client_msg_id = payload.get("client_msg_id")
        if client_msg_id is not None and not isinstance(client_msg_id, str):
            client_msg_id = str(client_msg_id)
        openid = payload.get("touser")
        if client_msg_id and isinstance(openid, str):
            window = self.config.dedupe_window_seconds
            earlier = self.dedupe.lookup(openid, client_msg_id, now, window)
            if earlier is not None:
                self.counters.deduplicated += 1
                return {"errcode": 0, "errmsg": "ok", "msgid": earlier.msgid}
        follower = self._recipient(payload)
        template = self._template(payload)
        self._check_data(template, payload)
        message = self._accept("template", follower, template, client_msg_id or None, now, body)
        self.quota.add(day)
        if client_msg_id:
            self.dedupe.remember(message)
        if self.callbacks.enabled:  # queued: the answer below never waits for the receiver
            self.callbacks.receipt(follower.openid, message.msgid)
        return {"errcode": 0, "errmsg": "ok", "msgid": message.msgid}

    def _custom_send(self, now: float, payload: dict[str, Any], body: bytes) -> Reply:
        msgtype = payload.get("msgtype")
        if msgtype not in CUSTOM_MSGTYPES:
            raise _Refused(r.INVALID_MESSAGE_TYPE)
        if not isinstance(payload.get(msgtype), dict):
            raise _Refused(r.DATA_FORMAT_ERROR)
        follower = self._recipient(payload)
        code = follower.take_custom_send(now, self.config)
        if code:
            raise _Refused(code)
        self._accept("custom", follower, None, None, now, body)
        return {"errcode": 0, "errmsg": "ok"}

    def _subscribe_send(self, now: float, payload: dict[str, Any], body: bytes) -> Reply:
        follower = self._recipient(payload)
        template = self._template(payload)
        left = follower.subscribe_authorizations.get(template.template_id, 0)
        if left <= 0:
            raise _Refused(r.USER_REFUSE)
        self._check_data(template, payload)
        follower.subscribe_authorizations[template.template_id] = left - 1
        message = self._accept("subscribe", follower, template, None, now, body)
        # The docs list only errcode/errmsg, but real answers carry the msgid (silenceper#758).
        return {"errcode": 0, "errmsg": "ok", "msgid": message.msgid}

    def _recipient(self, payload: dict[str, Any]) -> Follower:
        """The follower `touser` names, if a message may reach them (40003/43004/43019/48002)."""
        openid = payload.get("touser")
        if not openid or not isinstance(openid, str):
            raise _Refused(r.INVALID_OPENID)
        follower = self.registry.followers.get(openid)
        if follower is None:
            raise _Refused(r.INVALID_OPENID)
        code = follower.refusal()
        if code:
            raise _Refused(code)
        return follower

    def _template(self, payload: dict[str, Any]) -> Template:
        template_id = payload.get("template_id")
        if not template_id or not isinstance(template_id, str):
            raise _Refused(r.INVALID_TEMPLATE_ID_SIZE)
        template = self.registry.templates.get(template_id)
        if template is None:
            raise _Refused(r.INVALID_TEMPLATE_ID)
        return template

    def _check_data(self, template: Template, payload: dict[str, Any]) -> None:
        """47003 naming the first of the template's keys (in template order) that is missing,
        empty or breaks a field rule of `wechat.fields`, in that module's words. Keys the
        template does not have are ignored, as WeChat does."""
        data = payload.get("data")
        if not isinstance(data, dict):
            data = {}
        for key in template.keys:
            problem = _check_field(key, _text(data.get(key)))
            if problem is not None:
                raise _Refused(r.ARGUMENT_INVALID, f"argument invalid! {problem.wechat_detail}")

    def _accept(
        self,
        kind: Kind,
        follower: Follower,
        template: Template | None,
        client_msg_id: str | None,
        now: float,
        body: bytes,
    ) -> Message:
        self.counters.accepted[kind] += 1
        return self.log.append(kind, follower.openid, template, client_msg_id, now, body)

    # ---- follower actions (admin): what a user does in WeChat, pushed to the server URL --------

    def follower_acts(
        self,
        kind: PushKind,
        openid: str,
        *,
        text: str = "",
        key: str = "",
        url: str = "",
        scene: str | None = None,
    ) -> Push:
        """Apply a follower's action to the account and build its push (not sent yet).

        A message opens the customer-service message window (last interaction = now,
        simulator clock: `custom_message_limit` sends in `custom_window_hours`); a menu click
        opens the short one (`custom_event_limit` sends in `custom_event_seconds`); subscribe
        creates or re-subscribes the follower and opens the short window too; unsubscribe
        makes later sends answer 43004; VIEW changes nothing.
        Raises LookupError for an unknown follower (except on subscribe) and
        FollowerNotFollowing when someone who does not follow sends, clicks or views.
        """
        now = self.clock.now()
        follower = self.registry.followers.get(openid)
        if kind == "subscribe":
            if follower is None:  # following is not writing: no message window
                self.registry.upsert_follower(openid, {"last_interaction_at": None}, now)
                follower = self.registry.followers[openid]
            follower.subscribed = True
            follower.clicked_or_followed(now)
            body: Fields = {"MsgType": "event", "Event": "subscribe"}
            if scene:
                body |= {"EventKey": f"qrscene_{scene}", "Ticket": f"sim-ticket-{scene}"}
            return self.callbacks.action(kind, openid, body)
        if follower is None:
            raise LookupError(openid)
        if kind == "unsubscribe":
            follower.subscribed = False
            return self.callbacks.action(kind, openid, {"MsgType": "event", "Event": "unsubscribe"})
        if not follower.subscribed:
            raise FollowerNotFollowing(openid)
        if kind == "message":
            follower.wrote(now)
            body = {"MsgType": "text", "Content": text, "MsgId": self.callbacks.new_user_msgid()}
        elif kind == "click":
            follower.clicked_or_followed(now)
            body = {"MsgType": "event", "Event": "CLICK", "EventKey": key}
        elif kind == "view":
            body = {"MsgType": "event", "Event": "VIEW", "EventKey": url}
        else:
            raise ValueError(f"not a follower action: {kind}")
        return self.callbacks.action(kind, openid, body)


class FollowerNotFollowing(Exception):
    """Only followers can message the account or use its menu."""


class _Refused(Exception):
    """A send check failed: answer `code` (with `detail` instead of the standard errmsg)."""

    def __init__(self, code: int, detail: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


# The rules are pure and campaigns repeat values (dates, amounts, goods), so a bounded cache
# takes most of their cost (~20 µs of ~33 µs per send) off the hot path.
_check_field = functools.lru_cache(maxsize=1 << 16)(check_field)


def _text(item: Any) -> str:
    """The `value` of one data item as text ("" when missing, so the rules call it empty)."""
    value = item.get("value") if isinstance(item, dict) else None
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return orjson.dumps(value).decode()


def parse_body(body: bytes) -> dict[str, Any] | int:
    """A JSON object body, or the errcode WeChat gives: 44002 empty, 47001 not a JSON object."""
    if not body:
        return r.EMPTY_POST_DATA
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return r.DATA_FORMAT_ERROR
    if not isinstance(payload, dict):
        return r.DATA_FORMAT_ERROR
    return payload
