"""The send engine: one `CampaignRun` per run of a campaign, on one event loop.

Prefect-free and database-free: the flow gives the run its client, token, limiter and a
`Ledger` (two async calls: mark attempts, record outcomes), then hands it one batch of
audience rows at a time (`CampaignRun.send`).

    rows ─► render (invalid ⇒ outcome `invalid`, never sent)
         ─► mark in flight, a chunk ahead of the senders (the ledger says which may go)
         ─► `concurrency` sender coroutines, each: limiter slot ─► the account's slot and,
            for template messages, one of its daily quota (sending/account.py; none left:
            QUOTA pause before WeChat's 45009) ─► client.send_* ─► answer
         ─► by the error's class (docs/architecture.md decision 4, docs/sending.md):
              RETRY      back off (full jitter) and try again, same client_msg_id
              REFRESH    compare-and-expire the token once (single flight), retry once
              RECIPIENT  `failed` for this row, carry on
              REQUEST    `failed`, stop the campaign: no new sends anywhere
              CONFIG     `failed`, stop the campaign
              QUOTA      `pending`, pause the campaign (a resume finishes it)
         ─► outcomes buffered, written at least every second (FLUSH_SECONDS)

Rows never attempted get no outcome (marked ones go back to `pending`): a resume sends them.
The hot loop logs nothing and validates nothing twice; see docs/sending.md for the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from db.outcomes import Attempt, DeliveryOutcome, DeliveryStatus, PendingReason
from sending.account import AccountGate, AccountLimits, quota_reason
from sending.breaker import Breaker, BreakerPolicy
from sending.message import (
    MessageSpec,
    RenderedMessage,
    client_msg_id_for,
    invalid_reason,
    render,
    unrenderable_reason,
)
from sending.quiet_hours import QuietGuard
from sending.ratelimit import RateLimiter
from wechat.client import WeChatClient
from wechat.errors import ErrorClass, TransportError, WeChatError, lookup
from wechat.models import SendResult

__all__ = [
    "BatchResult",
    "CampaignRun",
    "Ledger",
    "RetryPolicy",
    "Stop",
    "StopCause",
    "StopKind",
    "StopSignal",
    "TokenSource",
    "send_rows",
]

MINUTE_QUOTA_ERRCODE = 45011

# -- knobs -----------------------------------------------------------------------------------


class RetryPolicy(BaseModel):
    """How RETRY-class errors (-1, 45011, HTTP 5xx, timeouts, dropped connections) are retried.

    Delays use "full jitter": attempt n waits uniform(0, min(max_delay, base_delay·2ⁿ⁻¹)).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(
        5,
        ge=1,
        le=50,
        description="HTTP attempts per message for RETRY errors, the first included.",
    )
    base_delay: float = Field(0.5, ge=0, description="First backoff ceiling, seconds.")
    max_delay: float = Field(8.0, ge=0, description="Largest backoff ceiling, seconds.")
    minute_quota_delay: float = Field(
        60.0,
        ge=0,
        description="Wait after 45011 (per-minute quota: WeChat says retry next minute), "
        "seconds; up to 25% jitter is added so senders do not return together.",
    )
    retry_without_dedupe: bool = Field(
        False,
        description="Also retry timeouts and dropped connections for customer_service and "
        "subscribe messages. WeChat does not dedupe those (no client_msg_id), so a retry "
        "after an unknown outcome may deliver twice; off by default.",
    )

    def delay(self, retry: int, errcode: int | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1 = the first retry)."""
        if errcode == MINUTE_QUOTA_ERRCODE:
            return self.minute_quota_delay * (1.0 + 0.25 * rng.random())
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        return rng.uniform(0.0, ceiling)


# -- stopping --------------------------------------------------------------------------------

StopKind = Literal["pause", "stop", "cancel"]
_SEVERITY: dict[str, int] = {"pause": 0, "stop": 1, "cancel": 2}


class StopCause(StrEnum):
    """Why a run stopped, in one word: what alerts and reports branch on (the reason is the
    sentence an operator reads). Only the causes someone may want told apart have one."""

    QUOTA = "quota"  # the account's daily quota (its own count, or WeChat's 45009)
    ERROR_RATIO = "error_ratio"  # more than max_error_ratio of the attempts failed
    BREAKER = "breaker"  # WeChat's API kept failing past the breaker's limit
    QUIET_HOURS = "quiet_hours"  # the account's quiet hours began (or had begun)
    SIGNAL = "signal"  # Ctrl-C / SIGTERM


@dataclass(frozen=True, slots=True)
class Stop:
    """Why a campaign stopped sending: `pause` (quota; resumable), `stop` (request/config
    error: fix, then resume), `cancel` (an operator said so)."""

    kind: StopKind
    reason: str
    errcode: int | None = None
    error_class: str | None = None
    openid: str | None = None
    #: What stopped it, in one word alerts and reports can branch on (StopCause).
    cause: StopCause | None = None


class StopSignal:
    """One per campaign run: a stop raised by any send halts every batch of the run.

    An `asyncio.Event` on the run's event loop wakes waiting senders (a rate-limit slot, a
    retry back-off) at once. `set` may be called from another thread (a signal handler, a
    database thread): the event is then set through the loop. A more severe kind replaces a
    milder one (pause < stop < cancel); otherwise the first reason stays.
    """

    def __init__(self) -> None:
        self._stop: Stop | None = None
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stop(self) -> Stop | None:
        """The stop in force, or None while sending may go on."""
        return self._stop

    def is_set(self) -> bool:
        return self._stop is not None

    @property
    def kind(self) -> StopKind | None:
        return None if self._stop is None else self._stop.kind

    @property
    def reason(self) -> str | None:
        return None if self._stop is None else self._stop.reason

    @property
    def errcode(self) -> int | None:
        return None if self._stop is None else self._stop.errcode

    def pause(self, errcode: int | None, reason: str, *, cause: StopCause | None = None) -> Stop:
        """Stop sending, resumable (quota, error ratio, breaker, quiet hours)."""
        return self.set("pause", reason, errcode=errcode, cause=cause)

    def set(
        self,
        kind: StopKind,
        reason: str,
        *,
        errcode: int | None = None,
        error_class: str | None = None,
        openid: str | None = None,
        cause: StopCause | None = None,
    ) -> Stop:
        """Raise the signal (idempotent); returns the stop now in force."""
        current = self._stop
        if current is None or _SEVERITY[kind] > _SEVERITY[current.kind]:
            self._stop = Stop(kind, reason, errcode, error_class, openid, cause)
        if self._event is not None and self._loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:
                self._event.set()
            else:
                # A closed loop has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._event.set)
        return self._stop

    def _waitable(self) -> asyncio.Event:
        if self._event is None:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
            if self._stop is not None:
                self._event.set()
        return self._event

    async def wait(self) -> None:
        """Return once the signal is raised."""
        await self._waitable().wait()

    async def sleep(self, seconds: float, *, until: asyncio.Event | None = None) -> bool:
        """Sleep `seconds`, waking early on a stop (or once `until` is set); True if stopped."""
        if self._stop is not None:
            return True
        event = self._waitable()
        if until is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await event.wait()
            return self._stop is not None
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(until.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return self._stop is not None


# -- the token ---------------------------------------------------------------------------------

Refresh = Callable[[SecretStr], Awaitable[SecretStr]]


class TokenSource:
    """The run's current access token, and a single-flight refresh of it.

    `refresh(failed)` calls the caller's coroutine (in production
    `lambda t: tasks.token.refresh_if_current(app, t)`, compare-and-expire across processes)
    at most once per refused token: concurrent refusals of the same token share one call,
    and a refusal of a token already replaced returns the replacement without any call.
    One per campaign run, on the run's event loop; across processes, tasks.token's lock.
    """

    def __init__(self, token: SecretStr | str, refresh: Refresh) -> None:
        self._current = token if isinstance(token, SecretStr) else SecretStr(token)
        self._refresh = refresh
        self._inflight: asyncio.Future[SecretStr] | None = None
        self.refresh_calls = 0

    @property
    def current(self) -> SecretStr:
        return self._current

    def offer(self, token: SecretStr) -> None:
        """Take the token store's current token (read at each batch's start), so a run
        longer than a token's life follows the refresh flow's renewals. Ignored while a
        refresh is in flight: that refresh's answer is at least as new."""
        if self._inflight is None:
            self._current = token

    async def refresh(self, failed: SecretStr) -> SecretStr:
        """A token to retry with after WeChat refused `failed`."""
        if failed.get_secret_value() != self._current.get_secret_value():
            return self._current  # someone in this run already replaced it
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        future: asyncio.Future[SecretStr] = asyncio.get_running_loop().create_future()
        self._inflight = future
        self.refresh_calls += 1
        try:
            fresh = await self._refresh(failed)
            if not isinstance(fresh, SecretStr):
                fresh = SecretStr(str(fresh))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it; no "never retrieved" warning
            raise
        finally:
            self._inflight = None
        self._current = fresh
        future.set_result(fresh)
        return fresh


def _is_unknown(exc: WeChatError) -> bool:
    """An answer the errcode table does not know (or an HTTP 4xx): not the row's fault."""
    return exc.errcode is None or not lookup(exc.errcode).known


# -- the batch result ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Everything one `send` call did; its `outcomes` are the rows answered or refused."""

    outcomes: list[DeliveryOutcome]
    rows: int  # rows given; rows - len(outcomes) were never attempted (stop/pause)
    counts: dict[str, int]  # per DeliveryStatus value
    errcodes: dict[int, int]  # final errcode per row → rows
    http_attempts: int
    token_refreshes: int
    started_at: datetime
    finished_at: datetime
    seconds: float
    messages_per_second: float  # rows answered (sent/failed/pending) per second
    stop: Stop | None = None

    @property
    def not_attempted(self) -> int:
        return self.rows - len(self.outcomes)


# -- where a run writes --------------------------------------------------------------------------


class Ledger(Protocol):
    """Where a run records what it does (the flow's is the SQL ledger, db/ledger.py).

    `mark` runs before a chunk of sends and returns the openids that may be sent: the
    others are final already, or in doubt. `record` stores answers; both may be slow
    (a database thread), never blocking the sends already in flight.
    """

    async def mark(self, attempts: Sequence[Attempt]) -> Collection[str]: ...

    async def record(self, outcomes: Sequence[DeliveryOutcome]) -> None: ...


# -- the engine ------------------------------------------------------------------------------

Sender = Callable[[SecretStr, Any], Awaitable[SendResult]]
_RETRY, _REFRESH = ErrorClass.RETRY, ErrorClass.REFRESH
_RECIPIENT, _QUOTA = ErrorClass.RECIPIENT, ErrorClass.QUOTA
#: Rows marked in flight per `ledger.mark` call, ahead of the senders; the next chunk is
#: marked once fewer than half of this one are left. A crash therefore leaves fewer than
#: 1.5 × this many marked rows per batch that were never sent (a resume after the dedupe
#: window records them `unknown`): small, yet large enough that marking keeps ahead.
MARK_CHUNK = 128
#: Answers are written to the ledger at least this often (seconds) and in chunks of at
#: most FLUSH_ROWS, so a crash loses at most about a second of answers.
FLUSH_SECONDS = 1.0
FLUSH_ROWS = 500


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(slots=True)
class _Ready:
    """A rendered message, marked in flight, waiting for a sender."""

    openid: str
    cmid: str | None
    message: RenderedMessage


class _Feed:
    """One batch's rows, rendered and marked a chunk ahead of its senders."""

    def __init__(self, stop: StopSignal) -> None:
        self.ready: deque[_Ready] = deque()
        self.done = False
        self._stop = stop
        self._more = asyncio.Event()
        self._room = asyncio.Event()

    def put(self, items: Iterable[_Ready]) -> None:
        self.ready.extend(items)
        self._more.set()

    def close(self) -> None:
        self.done = True
        self._more.set()

    async def take(self) -> _Ready | None:
        """The next message, or None when the batch has no more."""
        while not self.ready:
            if self.done:
                return None
            self._more.clear()
            await self._more.wait()
        item = self.ready.popleft()
        if len(self.ready) < MARK_CHUNK // 2:
            self._room.set()
        return item

    def wake(self) -> None:
        """A sender left (a stop): the filler must not wait for room any more."""
        self._room.set()

    async def wait_for_room(self) -> None:
        """Hold the next chunk's marking until the senders are halfway through this one."""
        while len(self.ready) >= MARK_CHUNK // 2 and self._stop._stop is None:
            self._room.clear()
            await self._room.wait()


class CampaignRun:
    """One run of one campaign: what its batches share on its one event loop.

    It owns the connection pool (through `client`), the token, the rate limiter, the stop
    signal and the ledger buffer; `send(rows)` sends one batch through them. Per row:

        render (a problem ⇒ `invalid`, never sent) ─► mark in flight (`ledger.mark`, a chunk
        ahead) ─► `concurrency` senders: limiter slot ─► client.send_* ─► WeChat's answer
        ─► by the answer's class (module docstring) ─► the outcome, buffered ─► `ledger.record`
        at least every FLUSH_SECONDS

    Without a ledger (tests, benches) nothing is marked or recorded: `send` returns the
    outcomes. Use it as an async context manager: leaving writes what is still buffered.
    """

    def __init__(
        self,
        *,
        spec: MessageSpec,
        campaign_id: int | str,
        client: WeChatClient,
        tokens: TokenSource,
        limiter: RateLimiter | None = None,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        stop: StopSignal | None = None,
        ledger: Ledger | None = None,
        account: AccountLimits | None = None,
        quiet: QuietGuard | None = None,
        breaker: BreakerPolicy | Breaker | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.spec = spec
        self.campaign_id = campaign_id
        self.client = client
        self.tokens = tokens
        self.limiter = None if limiter is None or limiter.unlimited else limiter
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.stop = stop or StopSignal()
        self.ledger = ledger
        self.dedupe = spec.kind == "template"  # WeChat dedupes this kind on client_msg_id
        # The account's rate and daily quota, shared with every run of the account. WeChat's
        # daily template quota counts template messages only (docs/scaling.md).
        gate = None
        if account is not None:
            gate = AccountGate(
                account,
                counts_quota=spec.kind == "template",
                campaign_rate=None if self.limiter is None else self.limiter.rate,
            )
        self.account = gate if gate is not None and gate.active else None
        #: The account's quiet hours: checked before each attempt (sending/quiet_hours.py).
        self.quiet = quiet
        #: WeChat's API failing: hold new sends, probe, resume (sending/breaker.py); on by
        #: default, `BreakerPolicy(share=1)` never opens.
        self.breaker = breaker if isinstance(breaker, Breaker) else Breaker(breaker)
        self._breaker_news = asyncio.Event()
        self._outage_error: WeChatError | None = None
        self._send = _sender(client, spec.kind)
        # One bound for the whole run: a batch finishing its last rows leaves its slots
        # to the next batch, and `concurrency` means what the form says.
        self._slots = asyncio.Semaphore(concurrency)
        self._rng = random.Random()
        self._buffer: list[DeliveryOutcome] = []
        self._writing = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None

    # -- the ledger buffer ------------------------------------------------------------------

    async def __aenter__(self) -> CampaignRun:
        if self.ledger is not None:
            self._ticker = asyncio.create_task(self._tick(), name="wxpush-ledger-flush")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        try:
            await self.flush()
        finally:
            if self.account is not None:
                # The quota this run reserved and did not send goes back to the account.
                await self.account.close()

    def note(self, outcomes: Iterable[DeliveryOutcome]) -> None:
        """Buffer outcomes for the ledger (written within FLUSH_SECONDS)."""
        self._buffer.extend(outcomes)

    async def flush(self) -> None:
        """Write everything buffered so far; on failure it stays buffered and this raises."""
        if self.ledger is None:
            self._buffer.clear()
            return
        async with self._writing:
            while self._buffer:
                chunk = self._buffer[:FLUSH_ROWS]
                del self._buffer[:FLUSH_ROWS]
                try:
                    await self.ledger.record(chunk)
                except BaseException:
                    self._buffer[:0] = chunk
                    raise

    async def _tick(self) -> None:
        """Flush every FLUSH_SECONDS, or sooner when FLUSH_ROWS answers are waiting."""
        while True:
            deadline = time.monotonic() + FLUSH_SECONDS
            while len(self._buffer) < FLUSH_ROWS and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            try:
                await self.flush()
            except Exception:  # the batch's own flush raises it; try again later
                await asyncio.sleep(FLUSH_SECONDS)

    # -- one batch ---------------------------------------------------------------------------

    async def send(
        self, rows: Iterable[Mapping[str, Any]], *, outcomes: list[DeliveryOutcome] | None = None
    ) -> BatchResult:
        """Send one batch of audience rows; return an outcome for every row rendered or
        attempted, and (with a ledger) leave every one of them recorded.

        `rows` are audience rows (`openid` + the columns the spec uses). Once the stop is
        set, here or in another batch, no new send starts; rows marked but not sent are
        recorded `pending` (not_attempted), so a resume sends them. Pass `outcomes` (a list)
        to see each outcome the moment it is known.
        """
        answered = outcomes if outcomes is not None else []
        todo = list(rows)
        refreshes_before = self.tokens.refresh_calls
        started = time.time()
        clock = time.perf_counter()
        feed = _Feed(self.stop)
        if self.stop._stop is None and todo:
            workers = min(self.concurrency, len(todo))
            senders = [self._sender_loop(feed, answered) for _ in range(workers)]
            try:
                await asyncio.gather(self._fill(feed, todo, answered), *senders)
            finally:
                self._unsent(feed)
        if self.ledger is not None:
            await self.flush()
        seconds = time.perf_counter() - clock
        counts = Counter(str(o.status) for o in answered)
        done = sum(1 for o in answered if o.attempts)
        return BatchResult(
            outcomes=answered,
            rows=len(todo),
            counts={status.value: counts.get(status.value, 0) for status in DeliveryStatus},
            errcodes=dict(Counter(o.errcode for o in answered if o.errcode is not None)),
            http_attempts=sum(o.attempts for o in answered),
            token_refreshes=self.tokens.refresh_calls - refreshes_before,
            started_at=_utc(started),
            finished_at=_utc(started + seconds),
            seconds=seconds,
            messages_per_second=done / seconds if seconds > 0 else 0.0,
            stop=self.stop.stop,
        )

    def _answer(self, outcome: DeliveryOutcome, answered: list[DeliveryOutcome]) -> None:
        answered.append(outcome)
        if self.ledger is not None:
            self._buffer.append(outcome)

    async def _fill(
        self, feed: _Feed, rows: list[Mapping[str, Any]], answered: list[DeliveryOutcome]
    ) -> None:
        """Render and mark the rows a chunk at a time, ahead of the senders."""
        try:
            for start in range(0, len(rows), MARK_CHUNK):
                if self.stop._stop is not None:
                    return
                ready = [
                    item
                    for row in rows[start : start + MARK_CHUNK]
                    if (item := self._render(row, answered)) is not None
                ]
                if ready and self.ledger is not None:
                    now = datetime.now(UTC)
                    allowed = await self.ledger.mark(
                        [Attempt(item.openid, item.cmid, now) for item in ready]
                    )
                    ready = [item for item in ready if item.openid in allowed]
                feed.put(ready)
                await feed.wait_for_room()
        finally:
            feed.close()

    def _render(self, row: Mapping[str, Any], answered: list[DeliveryOutcome]) -> _Ready | None:
        openid = row.get("openid")
        openid = openid if isinstance(openid, str) else str(openid or "")
        cmid = client_msg_id_for(self.campaign_id, openid) if self.dedupe else None
        try:
            message = render(self.spec, row, client_msg_id=cmid)
        except Exception as exc:  # a value whose str() fails, say: this row only
            reason = unrenderable_reason(exc)
            self._answer(DeliveryOutcome(openid, DeliveryStatus.INVALID, reason=reason), answered)
            return None
        if isinstance(message, list):
            reason = invalid_reason(message)
            self._answer(DeliveryOutcome(openid, DeliveryStatus.INVALID, reason=reason), answered)
            return None
        return _Ready(openid, cmid, message)

    def _unsent(self, feed: _Feed) -> None:
        """Rows marked in flight that no sender took (a stop came first): back to pending."""
        if self.ledger is None or not feed.ready:
            feed.ready.clear()
            return
        self._buffer.extend(
            DeliveryOutcome(
                item.openid,
                DeliveryStatus.PENDING,
                reason=str(PendingReason.NOT_ATTEMPTED),
                client_msg_id=item.cmid,
            )
            for item in feed.ready
        )
        feed.ready.clear()

    async def _sender_loop(self, feed: _Feed, answered: list[DeliveryOutcome]) -> None:
        """Take messages off the feed until it is empty or the campaign stops."""
        try:
            await self._take_and_send(feed, answered)
        finally:
            feed.wake()

    async def _take_and_send(self, feed: _Feed, answered: list[DeliveryOutcome]) -> None:
        while self.stop._stop is None:
            item = await feed.take()
            if item is None:
                return
            try:
                outcome = await self.attempt(item.openid, item.message, item.cmid)
            except Exception as exc:  # a bug, not an answer: keep the batch's other outcomes
                reason = f"unexpected error while sending: {type(exc).__name__}: {exc}"
                self.stop.set("stop", reason, openid=item.openid)
                outcome = DeliveryOutcome(item.openid, DeliveryStatus.PENDING, reason=reason)
            if outcome is None:  # stopped before its first attempt
                feed.ready.appendleft(item)
                return
            self._answer(outcome, answered)

    async def attempt(
        self, openid: str, message: RenderedMessage, cmid: str | None
    ) -> DeliveryOutcome | None:
        """Send one message until it has a final answer, by the answer's class."""
        attempts = retries = 0
        refreshed = False
        first = last = 0.0
        error: WeChatError | None = None
        limiter = self.limiter
        account = self.account
        breaker = self.breaker
        probe = False  # this attempt is the open breaker's probe

        def outcome(
            status: DeliveryStatus, reason: str | None = None, **kw: Any
        ) -> DeliveryOutcome:
            err = kw.pop("error", error)
            if err is not None:
                kw.setdefault("errcode", err.errcode)
                kw.setdefault("errmsg", err.errmsg or str(err))
                kw.setdefault("error_class", str(err.error_class))
            return DeliveryOutcome(
                openid,
                status,
                reason=reason,
                client_msg_id=cmid,
                attempts=attempts,
                first_attempt_at=_utc(first),
                last_attempt_at=_utc(last),
                **kw,
            )

        while True:
            if self.quiet is not None and self.quiet.begun():
                self.stop.pause(None, self.quiet.reason(), cause=StopCause.QUIET_HOURS)
            if limiter is not None and (wait := limiter.reserve()) > 0:
                # A stop wakes the wait: at a slow rate a slot can be minutes away.
                await self.stop.sleep(wait)
            if not breaker.closed and self.stop._stop is None:
                # WeChat is failing: wait while the breaker is open (or be its probe).
                probe = await self._breaker_turn(breaker)
            if account is not None and self.stop._stop is None:
                # Then the account's slot, reserved only now: a message goes at the later of
                # the two, and never holds an account slot while it waits for its own.
                await self._account_turn(account)
            if self.stop._stop is not None:
                if probe:
                    breaker.withdraw()
                    self._breaker_changed()
                if attempts == 0:
                    return None  # never attempted: no outcome, a resume sends it
                return outcome(DeliveryStatus.PENDING, "campaign stopped before a retry")
            token = self.tokens.current
            try:
                async with self._slots:
                    if not (breaker.closed or probe):
                        continue  # it opened while this message waited for a slot: wait
                    last = time.time()
                    if not attempts:
                        first = last
                    attempts += 1
                    result = await self._send(token, message)
            except WeChatError as exc:
                error = exc
            else:
                breaker.passed(probe)
                if probe:
                    self._breaker_changed()
                return outcome(
                    DeliveryStatus.SENT, msgid=result.msgid, sent_at=_utc(time.time()), error=None
                )
            cls = error.error_class
            # To the breaker, 45011 is an answer from a working API (sending/breaker.py).
            held = False  # the breaker is open: this failure does not use up a retry
            if cls is _RETRY and error.errcode != MINUTE_QUOTA_ERRCODE:
                if held := breaker.failed(probe):
                    self._outage_error = error
            else:
                breaker.passed(probe)
            if probe:
                probe = False
                self._breaker_changed()
            if cls is _RETRY:
                if not held:
                    retries += 1
                    # Every answer since failed too: the run's outage, not this message's.
                    if retries >= self.retry.max_attempts and not breaker.storm(retries):
                        return outcome(
                            DeliveryStatus.FAILED, f"gave up after {attempts} attempts: {error}"
                        )
                if not self.dedupe and not self.retry.retry_without_dedupe and _unknown(error):
                    return outcome(
                        DeliveryStatus.FAILED,
                        "outcome unknown (timeout or dropped connection) and WeChat does not "
                        f"dedupe {self.spec.kind} messages: not retried, to avoid a duplicate",
                    )
                if held:
                    continue  # the breaker's wait, at the loop's top, replaces the back-off
                delay = self.retry.delay(retries, error.errcode, self._rng)
                if await self.stop.sleep(delay):
                    return outcome(DeliveryStatus.PENDING, "campaign stopped before a retry")
            elif cls is _REFRESH:
                if refreshed:
                    reason = (
                        f"WeChat refused the refreshed access_token too (errcode {error.errcode}"
                        "): check the AppID/AppSecret and api_base_url of the wechat-app block, "
                        "and that nothing else force-refreshes this account's token"
                    )
                    self.stop.set(
                        "stop", reason, errcode=error.errcode, error_class="CONFIG", openid=openid
                    )
                    # An account problem, not this recipient's: a resume after the fix sends it.
                    return outcome(DeliveryStatus.PENDING, reason, error_class="CONFIG")
                if self.stop._stop is not None:
                    return outcome(DeliveryStatus.PENDING, "campaign stopped before a retry")
                refreshed = True
                try:
                    await self.tokens.refresh(token)
                except Exception as exc:
                    return self._refresh_failed(exc, outcome, openid)
            elif cls is _RECIPIENT:
                return outcome(DeliveryStatus.FAILED, error.meaning)
            else:
                return self._halt(error, outcome, openid)

    async def _breaker_turn(self, breaker: Breaker) -> bool:
        """Wait while the breaker is open; True when this attempt is its probe. Otherwise
        it closed again or the campaign stopped (the caller reads the stop): open past its
        limit, the campaign is paused here."""
        while not breaker.closed:
            if breaker.expired():
                self._breaker_pause(breaker)
                return False
            news = self._breaker_news  # set when a probe's answer (or its withdrawal) is in
            wait = breaker.turn()
            if wait is None:
                return True
            if await self.stop.sleep(wait, until=news):
                return False
        return False

    def _breaker_changed(self) -> None:
        """A probe is answered (or withdrawn): the senders waiting on the breaker look again."""
        self._breaker_news.set()
        self._breaker_news = asyncio.Event()

    def _breaker_pause(self, breaker: Breaker) -> None:
        """The breaker stayed open past its limit: pause, saying what failed and for how long."""
        outage = breaker.outage()
        error = self._outage_error
        what = "" if error is None else f" ({_said(error)})"
        since = datetime.fromtimestamp(time.time() - outage.seconds, UTC).strftime("%H:%M UTC")
        span = outage.seconds
        lasted = f"{span:.0f} s" if span < 120 else f"{span / 60:.0f} min"
        reason = (
            f"WeChat's API kept failing{what}: sending was held at {since} after "
            f"{outage.window_failed} of the last {outage.window_size} attempts failed, and "
            f"{outage.probes} probe(s) over {lasted} did not get through ({outage.failed} "
            "failed attempts in all). The messages not sent are kept for later. Resume when "
            f"WeChat answers again: `wxpush campaign resume {self.campaign_id}`"
        )
        self.stop.pause(None if error is None else error.errcode, reason, cause=StopCause.BREAKER)

    async def _account_turn(self, account: AccountGate) -> None:
        """Wait for the account's next send slot, then take one message of its daily quota
        for the attempt about to go. When it may not go, the campaign is stopped on return
        (the caller reads the stop): a stop came while waiting, the day's quota is spent (a
        QUOTA pause, before WeChat's 45009), or the account's limits could not be reached
        (a pause too)."""
        try:
            wait = await account.slot()
            if wait > 0 and await self.stop.sleep(wait):
                return
            if self.stop._stop is not None:
                return
            if await account.take_unit():
                if self.stop._stop is not None:
                    account.put_back()  # the stop came while the quota was being reserved
                return
        except Exception as exc:
            # The flows' AccountLimits says what failed without quoting the database.
            said = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
            self.stop.pause(
                None,
                f"could not reserve the account's send slots or quota ({said}); resume "
                f"(`wxpush campaign resume {self.campaign_id}`) once they can be reached",
            )
            return
        assert account.spent is not None
        self._quota_pause(quota_reason(account.spent, account.limits.app_id, self.campaign_id))

    def _quota_pause(
        self, reason: str, *, errcode: int | None = None, openid: str | None = None
    ) -> None:
        """The account's daily quota is spent (its count here said so, or WeChat's 45009):
        pause the campaign; the rows not sent stay pending and a resume sends them."""
        self.stop.set(
            "pause",
            reason,
            errcode=errcode,
            error_class=str(_QUOTA),
            openid=openid,
            cause=StopCause.QUOTA,
        )

    def _halt(
        self, error: WeChatError, outcome: Callable[..., DeliveryOutcome], openid: str
    ) -> DeliveryOutcome:
        """REQUEST, CONFIG, QUOTA: no further sends anywhere in the campaign."""
        cls = error.error_class
        code = "no errcode" if error.errcode is None else f"errcode {error.errcode}"
        reason = f"{code} ({error.meaning}): {error.fix}"
        if cls is _QUOTA:
            self._quota_pause(reason, errcode=error.errcode, openid=openid)
            return outcome(DeliveryStatus.PENDING, reason)
        self.stop.set("stop", reason, errcode=error.errcode, error_class=str(cls), openid=openid)
        # An account problem (CONFIG) or a code the table does not know is not this
        # recipient's fault: keep the row open, so a resume after the fix sends it.
        keep_open = cls is ErrorClass.CONFIG or _is_unknown(error)
        return outcome(DeliveryStatus.PENDING if keep_open else DeliveryStatus.FAILED, reason)

    def _refresh_failed(
        self, exc: Exception, outcome: Callable[..., DeliveryOutcome], openid: str
    ) -> DeliveryOutcome:
        """The token could not be refreshed: nothing more can be sent with it."""
        transient = isinstance(exc, WeChatError) and exc.error_class is _RETRY
        reason = f"could not refresh the access_token: {type(exc).__name__}: {exc}"
        cls = exc.error_class if isinstance(exc, WeChatError) else ErrorClass.CONFIG
        if transient:
            self.stop.set("pause", reason + " (transient: resume later)", error_class=str(cls))
            return outcome(DeliveryStatus.PENDING, reason)
        self.stop.set("stop", reason, error_class=str(cls), openid=openid)
        return outcome(DeliveryStatus.PENDING, reason, error_class=str(cls))


def _said(error: WeChatError) -> str:
    """An error in a few words for a pause reason: `errcode -1: system busy, retry later`."""
    if error.errcode is not None:
        return f"errcode {error.errcode}: {error.meaning}"
    return (str(error).splitlines() or [""])[0][:160] or type(error).__name__


def _unknown(error: WeChatError) -> bool:
    """A transport failure after which WeChat may or may not have the message."""
    return isinstance(error, TransportError) and error.status_code is None


def _sender(client: WeChatClient, kind: str) -> Sender:
    if kind == "template":
        return client.send_template
    if kind == "customer_service":
        return client.send_custom
    return client.send_subscribe


async def send_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    spec: MessageSpec,
    campaign_id: int | str,
    client: WeChatClient,
    token: TokenSource,
    limiter: RateLimiter | None = None,
    concurrency: int = 16,
    retry: RetryPolicy | None = None,
    stop: StopSignal | None = None,
    outcomes: list[DeliveryOutcome] | None = None,
    account: AccountLimits | None = None,
    breaker: BreakerPolicy | Breaker | None = None,
) -> BatchResult:
    """One batch through a `CampaignRun` of its own, without a ledger (tests, benches)."""
    async with CampaignRun(
        spec=spec,
        campaign_id=campaign_id,
        client=client,
        tokens=token,
        limiter=limiter,
        concurrency=concurrency,
        retry=retry,
        stop=stop,
        account=account,
        breaker=breaker,
    ) as run:
        return await run.send(rows, outcomes=outcomes)
