"""The record of accepted messages (what a follower would have received) with the indexes the
admin API pages through, and the client_msg_id dedupe window of template/send."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from wechat.simulator.clock import iso
from wechat.simulator.registry import Template

Kind = Literal["template", "custom", "subscribe"]

MSGID_LOW = 1 << 60  # msgids live in [2^60, 2^63): 64-bit, above 2^53 like real ones
MSGID_SPAN = (1 << 63) - MSGID_LOW


@dataclass(slots=True)
class Message:
    """One accepted send. The request body is kept as bytes and decoded only when listed,
    which keeps the hot path and the memory per message small."""

    seq: int
    kind: Kind
    openid: str
    template: Template | None
    client_msg_id: str | None
    msgid: int
    accepted_at: float
    body: bytes

    def to_json(self) -> dict[str, Any]:
        payload = orjson.loads(self.body)
        msgtype: str | None = None
        data: dict[str, Any]
        if self.kind == "custom":
            msgtype = payload.get("msgtype")
            data = payload.get(msgtype) or {}
        else:
            sent = payload.get("data") or {}
            keys = self.template.keys if self.template is not None else tuple(sent)
            data = {key: _value(sent.get(key)) for key in keys}
        return {
            "seq": self.seq,
            "kind": self.kind,
            "openid": self.openid,
            "template_id": self.template.template_id if self.template is not None else None,
            "client_msg_id": self.client_msg_id,
            "msgtype": msgtype,
            "data": data,
            "url": payload.get("url"),
            "page": payload.get("page"),
            "miniprogram": payload.get("miniprogram"),
            "msgid": self.msgid,
            "msgid_str": str(self.msgid),
            "accepted_at": iso(self.accepted_at),
        }


def _value(item: Any) -> Any:
    return item.get("value") if isinstance(item, dict) else item


class MessageLog:
    """Accepted messages in order, indexed by openid, template_id and kind."""

    def __init__(self) -> None:
        self._msgid_random = random.Random()
        self.reset()

    def reset(self) -> None:
        self.messages: list[Message] = []
        self._by_openid: dict[str, list[Message]] = {}
        self._by_template: dict[str, list[Message]] = {}
        self._by_kind: dict[str, list[Message]] = {}
        self._msgids: set[int] = set()

    def __len__(self) -> int:
        return len(self.messages)

    def new_msgid(self) -> int:
        while True:
            msgid = MSGID_LOW + self._msgid_random.randrange(MSGID_SPAN)
            if msgid not in self._msgids:
                self._msgids.add(msgid)
                return msgid

    def append(
        self,
        kind: Kind,
        openid: str,
        template: Template | None,
        client_msg_id: str | None,
        accepted_at: float,
        body: bytes,
    ) -> Message:
        message = Message(
            len(self.messages) + 1,
            kind,
            openid,
            template,
            client_msg_id,
            self.new_msgid(),
            accepted_at,
            body,
        )
        self.messages.append(message)
        self._by_openid.setdefault(openid, []).append(message)
        if template is not None:
            self._by_template.setdefault(template.template_id, []).append(message)
        self._by_kind.setdefault(kind, []).append(message)
        return message

    def query(
        self,
        *,
        openid: str | None = None,
        template_id: str | None = None,
        kind: str | None = None,
        client_msg_id: str | None = None,
        since: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[int, list[Message]]:
        """(number of matches, one page of them), oldest first. `since` is a `seq` cursor:
        only messages after it are considered, so a poller can pass the last seq it saw."""
        candidates = self.messages
        indexed: list[list[Message]] = []
        if openid is not None:
            indexed.append(self._by_openid.get(openid, []))
        if template_id is not None:
            indexed.append(self._by_template.get(template_id, []))
        if kind is not None:
            indexed.append(self._by_kind.get(kind, []))
        if indexed:
            candidates = min(indexed, key=len)
        start = bisect_right(candidates, since, key=_seq) if since else 0
        checks: list[tuple[str, object]] = [
            (name, wanted)
            for name, wanted in (
                ("openid", openid),
                ("template_id", template_id),
                ("kind", kind),
                ("client_msg_id", client_msg_id),
            )
            if wanted is not None
        ]
        if not checks or (len(checks) == 1 and indexed):  # an index alone answers
            return len(candidates) - start, candidates[start + offset : start + offset + limit]
        matching = [m for m in candidates[start:] if all(_field(m, n) == w for n, w in checks)]
        return len(matching), matching[offset : offset + limit]


def _seq(message: Message) -> int:
    return message.seq


def _field(message: Message, name: str) -> object:
    if name == "template_id":
        return message.template.template_id if message.template is not None else None
    return getattr(message, name)


class DedupeWindow:
    """(openid, client_msg_id) → the message it produced, for `window` seconds after it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._entries: dict[tuple[str, str], Message] = {}
        self._order: deque[tuple[tuple[str, str], Message]] = deque()

    def lookup(self, openid: str, client_msg_id: str, now: float, window: float) -> Message | None:
        order, entries = self._order, self._entries
        while order and now - order[0][1].accepted_at >= window:
            key, message = order.popleft()
            if entries.get(key) is message:
                del entries[key]
        return entries.get((openid, client_msg_id))

    def remember(self, message: Message) -> None:
        key = (message.openid, message.client_msg_id or "")
        self._entries[key] = message
        self._order.append((key, message))
