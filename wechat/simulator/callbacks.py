"""The callback outbox: what the simulator has to push to the account's server URL, and what
became of it. Synchronous and cheap (the send path calls `receipt()` for every accepted
template send); `wechat.simulator.pusher` does the HTTP, from the same event loop.

A push is one WeChat callback (a TEMPLATESENDJOBFINISH receipt, or a follower's message or
event). Its XML body is fixed at its first attempt (CreateTime, MsgId …) and repeated on every
retry, so a receiver dedupes retries the way it would WeChat's; the signature, timestamp and
nonce are fresh per attempt.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from wechat.simulator.clock import SimClock
from wechat.simulator.config import CallbackConfig

PushKind = Literal["receipt", "message", "click", "subscribe", "unsubscribe", "view"]
Outcome = Literal["pending", "delivered", "failed", "dropped"]
Fields = dict[str, str | int]

RECEIPT_EVENT = "TEMPLATESENDJOBFINISH"
MSGID_LOW = 1 << 62  # user-message MsgIds: 64-bit like real ones, apart from send msgids


@dataclass(slots=True, eq=False)
class Push:
    """One callback and its delivery so far."""

    seq: int
    kind: PushKind
    openid: str
    generation: int
    to_user: str = ""  # the account's gh_ id (ToUserName)
    fields: Fields | None = None  # follower actions; receipts build theirs on demand
    create_time: int | None = None  # receipts: fixed at the first attempt
    msgid: int | None = None  # the send's msgid (receipts) or the message's MsgId
    status: str | None = None  # receipt Status as pushed
    attempts: int = 0
    http_statuses: list[int | None] = field(default_factory=list)
    outcome: Outcome = "pending"
    error: str | None = None

    def receipt_fields(self) -> Fields | None:
        """A receipt's XML fields, built on demand (a dict per stored receipt would cost ~0.6 KB
        each); None before its first attempt."""
        if self.create_time is None:
            return None
        return {
            "ToUserName": self.to_user,
            "FromUserName": self.openid,
            "CreateTime": self.create_time,
            "MsgType": "event",
            "Event": RECEIPT_EVENT,
            "MsgID": self.msgid or 0,
            "Status": self.status or "",
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "openid": self.openid,
            "msgid": self.msgid,
            "status": self.status,
            "fields": self.fields if self.kind != "receipt" else self.receipt_fields(),
            "attempts": self.attempts,
            "http_statuses": list(self.http_statuses),
            "outcome": self.outcome,
            "error": self.error,
        }


class CallbackOutbox:
    """Config, seeded receipt draws, the due-time heap, counters and the record of pushes."""

    def __init__(self, config: CallbackConfig, clock: SimClock) -> None:
        self.startup_config = config
        self.clock = clock
        self.generation = 0
        self.in_flight = 0  # attempts running now (the pusher keeps it; a reset keeps it too)
        self.wake: Callable[[], None] = _nothing  # the pusher's doorbell
        self.on_reset: Callable[[], None] = _nothing  # the pusher cancels its attempts
        self._user_msgids = random.Random()
        self.configure(config)
        self._clear()

    # ---- configuration and lifecycle --------------------------------------------------------

    def configure(self, config: CallbackConfig) -> None:
        """Apply a config and re-seed the receipt RNG: the Status sequence starts over."""
        self.config = config
        self._random = random.Random(config.seed)
        self._statuses = list(config.receipt_mix)
        self._cum_weights = list(itertools.accumulate(config.receipt_mix.values()))
        self._single = self._statuses[0] if len(self._statuses) == 1 else None
        self.wake()

    def reset(self, *, everything: bool = False) -> None:
        """Forget queued pushes, records and counters; in-flight attempts are cancelled.
        `everything` also restores the start-up config (else it is kept and re-seeded)."""
        self.generation += 1
        self.configure(self.startup_config if everything else self.config)
        self._clear()
        self.on_reset()

    def _clear(self) -> None:
        self._heap: list[tuple[float, int, Push]] = []
        self.records: list[Push] = []
        self.scheduled: Counter[str] = Counter()  # receipts drawn, by Status
        self.delivered: Counter[str] = Counter()  # receipts answered 200, by Status
        self.failed: Counter[str] = Counter()  # receipts given up on, by Status
        self.events_delivered: Counter[str] = Counter()  # follower actions answered 200, by kind
        self.events_failed: Counter[str] = Counter()
        self.attempts = 0
        self.attempts_failed = 0
        self.retries = 0
        self.dropped = 0
        self.last_error: str | None = None

    @property
    def enabled(self) -> bool:
        return self.config.callback_url is not None

    def now(self) -> float:
        """Time for a push's timestamp and CreateTime, from the configured clock."""
        return self.clock.now() if self.config.clock == "simulator" else time.time()

    # ---- what goes in -----------------------------------------------------------------------

    def receipt(self, openid: str, msgid: int) -> None:
        """Schedule the TEMPLATESENDJOBFINISH of an accepted send (caller checked `enabled`).
        One RNG draw per receipt not overridden for its openid, so a seed and a number of
        sends give exact Status counts."""
        status = self.config.receipt_overrides.get(openid) or (
            self._single or self._random.choices(self._statuses, cum_weights=self._cum_weights)[0]
        )
        self.scheduled[status] += 1
        push = Push(
            len(self.records) + 1,
            "receipt",
            openid,
            self.generation,
            self.config.original_id,
            msgid=msgid,
            status=status,
        )
        self.records.append(push)
        self.schedule(push, self.config.receipt_delay_seconds)

    def action(self, kind: PushKind, openid: str, body: Fields) -> Push:
        """A follower's message or event, with its fields complete (pushed inline, not queued)."""
        fields: Fields = {
            "ToUserName": self.config.original_id,
            "FromUserName": openid,
            "CreateTime": int(self.now()),
            **body,
        }
        msgid = fields.get("MsgId")
        push = Push(
            len(self.records) + 1,
            kind,
            openid,
            self.generation,
            self.config.original_id,
            fields=fields,
            msgid=msgid if isinstance(msgid, int) else None,
        )
        self.records.append(push)
        return push

    def new_user_msgid(self) -> int:
        """A 64-bit MsgId for a follower's message."""
        return MSGID_LOW + self._user_msgids.randrange(1 << 62)

    def schedule(self, push: Push, delay: float) -> None:
        heapq.heappush(self._heap, (time.monotonic() + delay, push.seq, push))
        self.wake()

    def fields(self, push: Push) -> Fields:
        """The push's XML fields; a receipt's CreateTime is fixed at its first attempt, so
        retries repeat the same body (a receiver dedupes them as it would WeChat's)."""
        if push.kind != "receipt":
            assert push.fields is not None
            return push.fields
        if push.create_time is None:
            push.create_time = int(self.now())
        fields = push.receipt_fields()
        assert fields is not None
        return fields

    # ---- what the pusher takes out --------------------------------------------------------

    def next_due(self) -> float | None:
        """Monotonic time the next queued push is due, or None if none is queued."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Push | None:
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[2]
        return None

    @property
    def queued(self) -> int:
        return len(self._heap)

    @property
    def pending(self) -> int:
        """Pushes not finished yet: queued (incl. awaiting a retry) plus attempts in flight."""
        return len(self._heap) + self.in_flight

    # ---- outcomes (ignored for pushes from before a reset) -----------------------------------

    def attempted(self, push: Push, status: int | None, error: str | None) -> bool:
        """Record one attempt; True if the receiver took it (HTTP 200)."""
        if push.generation != self.generation:
            return False
        push.attempts += 1
        push.http_statuses.append(status)
        self.attempts += 1
        if push.attempts > 1:
            self.retries += 1
        if status == 200:
            push.error = None
            return True
        push.error = error or f"HTTP {status}"
        self.attempts_failed += 1
        self.last_error = push.error
        return False

    def finish(self, push: Push, *, delivered: bool) -> None:
        if push.generation != self.generation:
            return
        push.outcome = "delivered" if delivered else "failed"
        if push.kind == "receipt":
            (self.delivered if delivered else self.failed)[push.status or ""] += 1
        else:
            (self.events_delivered if delivered else self.events_failed)[push.kind] += 1

    def drop(self, push: Push) -> None:
        """Callbacks were switched off before this push was due: it is never sent."""
        if push.generation == self.generation:
            push.outcome = "dropped"
            self.dropped += 1

    def snapshot(self) -> dict[str, Any]:
        """The /_sim/callbacks answer."""
        return {
            "enabled": self.enabled,
            "mode": None if not self.enabled else "safe" if self.config.safe_mode else "plain",
            "pending": self.pending,
            "queued": self.queued,
            "in_flight": self.in_flight,
            "receipts_scheduled": dict(self.scheduled),
            "receipts_delivered": dict(self.delivered),
            "receipts_failed": dict(self.failed),
            "events_delivered": dict(self.events_delivered),
            "events_failed": dict(self.events_failed),
            "pushes": len(self.records),
            "attempts": self.attempts,
            "attempts_failed": self.attempts_failed,
            "retries": self.retries,
            "gave_up": sum(self.failed.values()) + sum(self.events_failed.values()),
            "dropped": self.dropped,
            "last_error": self.last_error,
        }

    def query(self, *, since: int | None, kind: str | None, limit: int) -> list[Push]:
        """Records after `since` (a seq), oldest first, optionally of one kind."""
        start = since or 0
        records = self.records[start:]
        if kind is not None:
            records = [p for p in records if p.kind == kind]
        return records[:limit]


def _nothing() -> None:
    return None
