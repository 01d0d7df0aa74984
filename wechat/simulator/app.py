"""The WeChat API paths (`/cgi-bin/…`) on aiohttp.web: parse, ask the state, answer. Faults that
live below JSON (a dropped connection, an HTTP 5xx, a slow answer) are acted out here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

import orjson
from aiohttp import web

from wechat.simulator import replies
from wechat.simulator.accounts import Accounts
from wechat.simulator.faults import Fault
from wechat.simulator.pusher import CallbackPusher
from wechat.simulator.replies import Reply
from wechat.simulator.robots import RobotApi, Robots
from wechat.simulator.sim_api import Handler, SimApi
from wechat.simulator.state import SimulatorState, parse_body

# What api.weixin.qq.com sends (sic: "encoding", not "charset").
JSON_CONTENT_TYPE: Final = "application/json; encoding=utf-8"
MAX_BODY_BYTES: Final = 256 * 1024 * 1024  # bulk follower seeding posts tens of MB

_5XX_BODY: Final = (
    "<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n"
    "<center><h1>{status}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def json_response(reply: Reply) -> web.Response:
    return web.Response(body=orjson.dumps(reply), headers={"Content-Type": JSON_CONTENT_TYPE})


class CgiBin:
    """Handlers of the real API paths. Each request is answered by one account: the token
    endpoints pick it by appid, the others by access_token (wechat.simulator.accounts)."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    def routes(self) -> list[web.RouteDef]:
        send = self._send
        return [
            web.get("/cgi-bin/token", self.token),
            web.route("*", "/cgi-bin/stable_token", self.stable_token),
            web.get("/cgi-bin/getcallbackip", self.getcallbackip),
            # Any method: a GET carries no body, so it is answered 44002 like WeChat does.
            web.route(
                "*",
                "/cgi-bin/message/template/send",
                send("template_send", SimulatorState.send_template),
            ),
            web.route(
                "*", "/cgi-bin/message/custom/send", send("custom_send", SimulatorState.send_custom)
            ),
            web.route(
                "*",
                "/cgi-bin/message/subscribe/bizsend",
                send("subscribe_bizsend", SimulatorState.send_subscribe),
            ),
            web.route("*", "/cgi-bin/openapi/quota/get", self.quota_get),
        ]

    async def _fault(
        self, state: SimulatorState, request: web.Request, *, token_endpoint: bool = False
    ) -> web.StreamResponse | None:
        """Draw this request's fault (the account's profile) and act it out; None means:
        answer normally."""
        fault = state.faults.draw(token_endpoint=token_endpoint)
        if fault is None:
            return None
        state.counters.faults[fault.value] += 1
        if fault is Fault.SLOW:
            generation = state.generation
            await asyncio.sleep(state.faults.config.slow_seconds)  # other requests go on
            # A reset while this request slept must not let it land in the new state.
            return None if state.generation == generation else _drop(request)
        if fault is Fault.DROP:
            return _drop(request)
        if fault is Fault.HTTP_5XX:
            status = state.faults.config.http_5xx_status
            return web.Response(
                status=status,
                text=_5XX_BODY.format(status=f"{status} {_reason(status)}"),
                content_type="text/html",
            )
        return json_response(state.fail(replies.SYSTEM_ERROR, state.clock.now()))

    async def token(self, request: web.Request) -> web.StreamResponse:
        state = self.accounts.by_appid(request.query.get("appid"))
        state.counters.calls["token"] += 1
        if (faulted := await self._fault(state, request, token_endpoint=True)) is not None:
            return faulted
        return json_response(state.classic_token(request.query))

    async def stable_token(self, request: web.Request) -> web.StreamResponse:
        # Only a POSTed JSON body is read: a GET has no body, so it is answered 44002.
        payload = parse_body(await request.read() if request.method == "POST" else b"")
        force = isinstance(payload, dict) and payload.get("force_refresh") is True
        appid = payload.get("appid") if isinstance(payload, dict) else None
        state = self.accounts.by_appid(appid)
        state.counters.calls["stable_token_force" if force else "stable_token"] += 1
        if (faulted := await self._fault(state, request, token_endpoint=True)) is not None:
            return faulted
        return json_response(state.stable_token(payload))

    async def getcallbackip(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("access_token")
        state = self.accounts.by_token(token)
        state.counters.calls["getcallbackip"] += 1
        return json_response(state.callback_ip(token))

    async def quota_get(self, request: web.Request) -> web.StreamResponse:
        # Any method: a GET carries no body, so it is answered 44002.
        token = request.query.get("access_token")
        state = self.accounts.by_token(token)
        state.counters.calls["quota_get"] += 1
        body = await request.read() if request.method == "POST" else b""
        return json_response(state.api_quota(token, body))

    def _send(
        self, endpoint: str, send: Callable[[SimulatorState, str | None, bytes], Reply]
    ) -> Handler:
        """A message-send path: find the account, count, maybe fault, then let it decide."""

        async def handler(request: web.Request) -> web.StreamResponse:
            token = request.query.get("access_token")
            state = self.accounts.by_token(token)
            state.counters.calls[endpoint] += 1
            if (faulted := await self._fault(state, request)) is not None:
                return faulted
            body = await request.read()
            return json_response(send(state, token, body))

        return handler


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the TCP connection without any HTTP answer. aiohttp then fails to write the
    placeholder returned here and discards it quietly (no log, no bytes on the wire)."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=499)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Server Error"


def build_app(state: SimulatorState | Accounts) -> web.Application:
    """The whole simulator: the real API paths, the admin API under /_sim/, and the callback
    pusher of the default account (started and stopped with the app). One state is served as
    the only account."""
    accounts = state if isinstance(state, Accounts) else Accounts(state)
    default = accounts.default
    robots = Robots(accounts.clock)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    pusher = CallbackPusher(default.callbacks, lambda: default.config.app_id)
    app.on_startup.append(pusher.start)
    app.on_cleanup.append(pusher.stop)
    app.add_routes(CgiBin(accounts).routes())
    app.add_routes(SimApi(accounts, pusher, on_reset=robots.reset).routes())
    app.add_routes(RobotApi(robots).routes())
    return app
