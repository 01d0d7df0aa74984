"""The WeCom group robot (企业微信群机器人) webhook, `POST /cgi-bin/webhook/send?key=KEY`, and its
admin API under /_sim/robots: alerts sent to it are recorded per key, so the demo and the tests
can show them arriving. Rules from https://developer.work.weixin.qq.com/document/path/91770
(docs/simulator.md, "WeCom group robot", says which are documented and which assumed).

The key is the robot's only credential: it is never logged, and listings show it masked."""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from wechat.simulator.clock import SimClock, iso
from wechat.simulator.defaults import DEMO_ROBOT_KEY

# Content limits in UTF-8 bytes, as the doc states them.
MAX_BYTES: Final = {"text": 2048, "markdown": 4096}
PER_MINUTE: Final = 20  # "每个机器人发送的消息不能超过20条/分钟"
WINDOW_SECONDS: Final = 60.0
JSON_CONTENT_TYPE: Final = "application/json; charset=UTF-8"

OK: Final = {"errcode": 0, "errmsg": "ok"}
INVALID_KEY: Final = {"errcode": 93000, "errmsg": "invalid webhook url"}
FREQ_OUT: Final = {"errcode": 45009, "errmsg": "api freq out of limit"}


def mask_key(key: str) -> str:
    """The first 4 characters and a mask: enough to tell robots apart, not to use one."""
    return key[:4] + "********"


@dataclass(slots=True)
class RobotMessage:
    seq: int
    msgtype: str
    content: str
    mentioned_list: list[str]
    mentioned_mobile_list: list[str]
    received_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "msgtype": self.msgtype,
            "content": self.content,
            "mentioned_list": self.mentioned_list,
            "mentioned_mobile_list": self.mentioned_mobile_list,
            "received_at": iso(self.received_at),
        }


@dataclass(slots=True)
class Robot:
    """One robot: what it received, and when it accepted its recent sends (the minute limit)."""

    key: str
    per_minute: int = PER_MINUTE
    messages: list[RobotMessage] = field(default_factory=list)
    recent: deque[float] = field(default_factory=deque)
    rejected: int = 0

    def clear(self) -> None:
        self.messages.clear()
        self.recent.clear()
        self.rejected = 0

    def summary(self) -> dict[str, Any]:
        return {
            "key": mask_key(self.key),
            "per_minute": self.per_minute,
            "messages": len(self.messages),
            "rejected": self.rejected,
        }


def _invalid(errcode: int, errmsg: str) -> dict[str, Any]:
    return {"errcode": errcode, "errmsg": errmsg}


def check_body(body: bytes) -> tuple[str, dict[str, Any]] | dict[str, Any]:
    """(msgtype, its object) of a valid text/markdown send, or the error reply."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return _invalid(40035, "invalid json body")  # assumed code (不合法的参数)
    msgtype = payload.get("msgtype")
    if msgtype not in MAX_BYTES:
        return _invalid(40008, "invalid message type")  # the simulator has text and markdown
    inner = payload.get(msgtype)
    content = inner.get("content") if isinstance(inner, dict) else None
    if not isinstance(content, str) or not content:
        return _invalid(44004, "empty content")
    limit = MAX_BYTES[msgtype]
    if len(content.encode()) > limit:
        return _invalid(40058, f"{msgtype}.content exceed max length {limit}")
    assert isinstance(inner, dict)
    return msgtype, inner


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


class Robots:
    """The robots the simulator knows, by key; the demo key is known from the start."""

    def __init__(self, clock: SimClock, startup_keys: tuple[str, ...] = (DEMO_ROBOT_KEY,)) -> None:
        self.clock = clock
        self.startup_keys = startup_keys
        self.robots: dict[str, Robot] = {}
        self._seq = 0
        self.reset(everything=True)

    def reset(self, *, everything: bool = False) -> None:
        """Clear every robot's messages; `everything` also forgets the keys added later."""
        if everything:
            self.robots = {key: Robot(key) for key in self.startup_keys}
        for robot in self.robots.values():
            robot.clear()

    def add(self, key: str | None = None, per_minute: int = PER_MINUTE) -> Robot:
        """Register a robot (a random UUID-like key if none is given); an existing key keeps
        its messages and takes the new limit."""
        key = key or _new_key()
        robot = self.robots.setdefault(key, Robot(key))
        robot.per_minute = per_minute
        return robot

    def send(self, key: str | None, body: bytes) -> dict[str, Any]:
        """Decide one webhook call as WeCom does: unknown key, bad body, minute limit, ok."""
        robot = self.robots.get(key or "")
        if robot is None:
            return dict(INVALID_KEY)
        checked = check_body(body)
        if isinstance(checked, dict):
            robot.rejected += 1
            return checked
        now = self.clock.now()
        while robot.recent and robot.recent[0] <= now - WINDOW_SECONDS:
            robot.recent.popleft()
        if len(robot.recent) >= robot.per_minute:
            robot.rejected += 1
            return dict(FREQ_OUT)
        robot.recent.append(now)
        msgtype, inner = checked
        self._seq += 1
        robot.messages.append(
            RobotMessage(
                self._seq,
                msgtype,
                inner["content"],
                _strings(inner.get("mentioned_list")),
                _strings(inner.get("mentioned_mobile_list")),
                now,
            )
        )
        return dict(OK)


def _new_key() -> str:
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


class RobotIn(BaseModel):
    """POST /_sim/robots."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(None, min_length=1, max_length=200)
    per_minute: int = Field(PER_MINUTE, ge=1)


class RobotInfo(BaseModel):
    """A robot in the admin API's answers; `key` is masked except in the answer to its creation."""

    key: str
    per_minute: int
    messages: int
    rejected: int


class ReceivedMessage(BaseModel):
    """One message a robot accepted, as GET /_sim/robots/{key}/messages lists it."""

    seq: int
    msgtype: str
    content: str
    mentioned_list: list[str]
    mentioned_mobile_list: list[str]
    received_at: str


class RobotInbox(RobotInfo):
    items: list[ReceivedMessage]


def _json(data: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=content_type)


class RobotApi:
    """The webhook path and /_sim/robots…; registered by build_app next to the others."""

    def __init__(self, robots: Robots) -> None:
        self.robots = robots

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", "/cgi-bin/webhook/send", self.webhook),
            web.get("/_sim/robots", self.list_robots),
            web.post("/_sim/robots", self.add_robot),
            web.get("/_sim/robots/{key}/messages", self.messages),
            web.delete("/_sim/robots/{key}/messages", self.clear),
        ]

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read() if request.method == "POST" else b""
        reply = self.robots.send(request.query.get("key"), body)
        return web.Response(body=orjson.dumps(reply), headers={"Content-Type": JSON_CONTENT_TYPE})

    async def list_robots(self, request: web.Request) -> web.StreamResponse:
        return _json([robot.summary() for robot in self.robots.robots.values()])

    async def add_robot(self, request: web.Request) -> web.StreamResponse:
        try:
            spec = RobotIn.model_validate_json(await request.read() or b"{}")
        except ValueError as exc:
            return _json({"error": "invalid payload", "detail": str(exc)}, status=400)
        robot = self.robots.add(spec.key, spec.per_minute)
        # The full key once, to its creator (a generated one is unknown otherwise).
        return _json({**robot.summary(), "key": robot.key}, status=201)

    def _robot(self, request: web.Request) -> Robot | None:
        return self.robots.robots.get(request.match_info["key"])

    async def messages(self, request: web.Request) -> web.StreamResponse:
        robot = self._robot(request)
        if robot is None:
            return _json({"error": "no such robot"}, status=404)
        return _json(
            {**robot.summary(), "items": [message.to_json() for message in robot.messages]}
        )

    async def clear(self, request: web.Request) -> web.StreamResponse:
        robot = self._robot(request)
        if robot is None:
            return _json({"error": "no such robot"}, status=404)
        cleared = len(robot.messages)
        robot.clear()
        return _json({"cleared": cleared})
