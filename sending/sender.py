"""The send engine: a batch of audience rows in, one `DeliveryOutcome` per attempted row out.

Prefect-free and database-free: the caller (the `send_batch` task) removes rows the ledger
already marks final, calls `send_rows`, and upserts the outcomes it gets back.

    rows ─► render (invalid ⇒ outcome `invalid`, never sent)
         ─► `concurrency` worker coroutines, each: limiter slot ─► client.send_* ─► answer
         ─► by the error's class (docs/architecture.md decision 4, docs/sending.md):
              RETRY      back off (full jitter) and try again, same client_msg_id
              REFRESH    compare-and-expire the token once (single flight), retry once
              RECIPIENT  `failed` for this row, carry on
              REQUEST    `failed`, stop the campaign: no new sends anywhere
              CONFIG     `failed`, stop the campaign
              QUOTA      `pending`, pause the campaign (a resume finishes it)

Rows never attempted get no outcome: they stay unsent in the ledger and a resume sends them.
The hot loop logs nothing and validates nothing twice; see docs/sending.md for the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from db.outcomes import DeliveryOutcome, DeliveryStatus
from sending.message import (
    MessageSpec,
    RenderedMessage,
    client_msg_id_for,
    invalid_reason,
    render,
    unrenderable_reason,
)
from sending.ratelimit import RateLimiter
from wechat.client import WeChatClient
from wechat.errors import ErrorClass, TransportError, WeChatError, lookup
from wechat.models import SendResult

__all__ = [
    "BatchResult",
    "RetryPolicy",
    "Stop",
    "StopKind",
    "StopSignal",
    "TokenSource",
    "send_rows",
    "stop_signal",
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


@dataclass(frozen=True, slots=True)
class Stop:
    """Why a campaign stopped sending: `pause` (quota; resumable), `stop` (request/config
    error: fix, then resume), `cancel` (an operator said so)."""

    kind: StopKind
    reason: str
    errcode: int | None = None
    error_class: str | None = None
    openid: str | None = None


class StopSignal:
    """Shared by every batch of one campaign in a process: a stop in one halts all.

    Thread-safe: batches run in their own threads and event loops. A more severe kind
    replaces a milder one (pause < stop < cancel); otherwise the first reason stays.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop: Stop | None = None
        self._sleepers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

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

    def pause(self, errcode: int | None, reason: str) -> Stop:
        """Stop sending, resumable (quota, error ratio)."""
        return self.set("pause", reason, errcode=errcode)

    def clear(self) -> None:
        """Forget the stop: a new run of the campaign starts sending again."""
        with self._lock:
            self._stop = None

    def set(
        self,
        kind: StopKind,
        reason: str,
        *,
        errcode: int | None = None,
        error_class: str | None = None,
        openid: str | None = None,
    ) -> Stop:
        """Raise the signal (idempotent); returns the stop now in force."""
        with self._lock:
            current = self._stop
            if current is None or _SEVERITY[kind] > _SEVERITY[current.kind]:
                self._stop = Stop(kind, reason, errcode, error_class, openid)
            sleepers = list(self._sleepers)
            result = self._stop
        for loop, event in sleepers:
            # A closed loop has nobody sleeping on it any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        return result

    async def sleep(self, seconds: float) -> bool:
        """Sleep `seconds` on the caller's loop, waking early on a stop; True if stopped."""
        if self._stop is not None:
            return True
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._stop is not None:
                return True
            self._sleepers.add(entry)
        try:
            async with asyncio.timeout(seconds):
                await entry[1].wait()
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._sleepers.discard(entry)
        return self._stop is not None


_signals: dict[Hashable, StopSignal] = {}
_signals_lock = threading.Lock()


def stop_signal(key: Hashable) -> StopSignal:
    """The campaign's one `StopSignal` in this process (created on first use).

    Kept for the life of the process: a stop must outlive the batch that raised it, so that
    batches queued behind it, and the flow's end hooks, see it. A new run of the same
    campaign in the same process must `clear()` it first (the flow does, at start).
    """
    with _signals_lock:
        signal = _signals.get(key)
        if signal is None:
            signal = _signals[key] = StopSignal()
        return signal


# -- the token ---------------------------------------------------------------------------------

Refresh = Callable[[SecretStr], Awaitable[SecretStr]]


class TokenSource:
    """The batch's current access token, and a single-flight refresh of it.

    `refresh(failed)` calls the caller's coroutine (in production
    `lambda t: tasks.token.refresh_if_current(app, t)`, compare-and-expire across processes)
    at most once per refused token: concurrent refusals of the same token share one call,
    and a refusal of a token already replaced returns the replacement without any call.
    One event loop (one batch) per instance; the process-wide sharing is tasks.token's job.
    """

    def __init__(self, token: SecretStr | str, refresh: Refresh) -> None:
        self._current = token if isinstance(token, SecretStr) else SecretStr(token)
        self._refresh = refresh
        self._inflight: asyncio.Future[SecretStr] | None = None
        self.refresh_calls = 0

    @property
    def current(self) -> SecretStr:
        return self._current

    async def refresh(self, failed: SecretStr) -> SecretStr:
        """A token to retry with after WeChat refused `failed`."""
        if failed.get_secret_value() != self._current.get_secret_value():
            return self._current  # someone in this batch already replaced it
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
    """Everything one `send_rows` call did; `outcomes` go to the ledger as they are."""

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


# -- the engine ------------------------------------------------------------------------------

Sender = Callable[[SecretStr, Any], Awaitable[SendResult]]
_RETRY, _REFRESH = ErrorClass.RETRY, ErrorClass.REFRESH
_RECIPIENT, _QUOTA = ErrorClass.RECIPIENT, ErrorClass.QUOTA


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass
class _Batch:
    """One `send_rows` call: shared state of its worker coroutines (one event loop)."""

    spec: MessageSpec
    campaign_id: int | str
    send: Sender
    tokens: TokenSource
    limiter: RateLimiter | None
    retry: RetryPolicy
    stop: StopSignal
    dedupe: bool  # WeChat dedupes this kind on client_msg_id
    rng: random.Random = field(default_factory=random.Random)
    outcomes: list[DeliveryOutcome] = field(default_factory=list)

    async def worker(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Take rows off the shared iterator until it is empty or the campaign stops."""
        for row in rows:
            outcome = await self.deliver(row)
            if outcome is not None:
                self.outcomes.append(outcome)
            if self.stop._stop is not None:
                return

    async def deliver(self, row: Mapping[str, Any]) -> DeliveryOutcome | None:
        openid = row.get("openid")
        openid = openid if isinstance(openid, str) else str(openid or "")
        cmid = client_msg_id_for(self.campaign_id, openid) if self.dedupe else None
        try:
            message = render(self.spec, row, client_msg_id=cmid)
        except Exception as exc:  # a value whose str() fails, say: this row only
            reason = unrenderable_reason(exc)
            return DeliveryOutcome(openid, DeliveryStatus.INVALID, reason=reason)
        if isinstance(message, list):
            reason = invalid_reason(message)
            return DeliveryOutcome(openid, DeliveryStatus.INVALID, reason=reason)
        try:
            return await self.attempt(openid, message, cmid)
        except Exception as exc:  # a bug, not an answer: keep the batch's other outcomes
            reason = f"unexpected error while sending: {type(exc).__name__}: {exc}"
            self.stop.set("stop", reason, openid=openid)
            return DeliveryOutcome(openid, DeliveryStatus.PENDING, reason=reason)

    async def attempt(
        self, openid: str, message: RenderedMessage, cmid: str | None
    ) -> DeliveryOutcome | None:
        """Send one message until it has a final answer, by the answer's class."""
        attempts = retries = 0
        refreshed = False
        first = last = 0.0
        error: WeChatError | None = None
        limiter = self.limiter

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
            if limiter is not None and (wait := limiter.reserve()) > 0:
                # A stop wakes the wait: at a slow rate a slot can be minutes away.
                await self.stop.sleep(wait)
            if self.stop._stop is not None:
                if attempts == 0:
                    return None  # never attempted: no outcome, a resume sends it
                return outcome(DeliveryStatus.PENDING, "campaign stopped before a retry")
            token = self.tokens.current
            last = time.time()
            if not attempts:
                first = last
            attempts += 1
            try:
                result = await self.send(token, message)
            except WeChatError as exc:
                error = exc
            else:
                return outcome(
                    DeliveryStatus.SENT, msgid=result.msgid, sent_at=_utc(time.time()), error=None
                )
            cls = error.error_class
            if cls is _RETRY:
                retries += 1
                if retries >= self.retry.max_attempts:
                    return outcome(
                        DeliveryStatus.FAILED, f"gave up after {attempts} attempts: {error}"
                    )
                if not self.dedupe and not self.retry.retry_without_dedupe and _unknown(error):
                    return outcome(
                        DeliveryStatus.FAILED,
                        "outcome unknown (timeout or dropped connection) and WeChat does not "
                        f"dedupe {self.spec.kind} messages: not retried, to avoid a duplicate",
                    )
                delay = self.retry.delay(retries, error.errcode, self.rng)
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

    def _halt(
        self, error: WeChatError, outcome: Callable[..., DeliveryOutcome], openid: str
    ) -> DeliveryOutcome:
        """REQUEST, CONFIG, QUOTA: no further sends anywhere in the campaign."""
        cls = error.error_class
        code = "no errcode" if error.errcode is None else f"errcode {error.errcode}"
        reason = f"{code} ({error.meaning}): {error.fix}"
        if cls is _QUOTA:
            self.stop.set(
                "pause", reason, errcode=error.errcode, error_class=str(cls), openid=openid
            )
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
) -> BatchResult:
    """Send one batch; return an outcome for every row that was rendered or attempted.

    `rows` are audience rows (`openid` + the columns the spec uses) that the ledger does not
    mark final. At most `concurrency` sends are in flight (create the client with
    `max_connections >= concurrency`); each attempt waits for a `limiter` slot. `stop` is
    the campaign's shared signal: once set, here or in another batch, no new send starts.

    Pass `outcomes` (a list) to have each outcome appended the moment it is known: if the
    batch is cancelled (a task timeout), the caller still holds every answer received so
    far and can record it before re-raising.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    batch = _Batch(
        spec=spec,
        campaign_id=campaign_id,
        send=_sender(client, spec.kind),
        tokens=token,
        limiter=None if limiter is None or limiter.unlimited else limiter,
        retry=retry or RetryPolicy(),
        stop=stop or StopSignal(),
        dedupe=spec.kind == "template",
        outcomes=outcomes if outcomes is not None else [],
    )
    todo = list(rows)
    refreshes_before = token.refresh_calls
    started = time.time()
    clock = time.perf_counter()
    if batch.stop.stop is None and todo:
        shared = iter(todo)  # one iterator, many workers: each row is taken exactly once
        workers = min(concurrency, len(todo))
        await asyncio.gather(*(batch.worker(shared) for _ in range(workers)))
    seconds = time.perf_counter() - clock
    outcomes = batch.outcomes
    counts = Counter(str(o.status) for o in outcomes)
    answered = sum(1 for o in outcomes if o.attempts)
    return BatchResult(
        outcomes=outcomes,
        rows=len(todo),
        counts={status.value: counts.get(status.value, 0) for status in DeliveryStatus},
        errcodes=dict(Counter(o.errcode for o in outcomes if o.errcode is not None)),
        http_attempts=sum(o.attempts for o in outcomes),
        token_refreshes=token.refresh_calls - refreshes_before,
        started_at=_utc(started),
        finished_at=_utc(started + seconds),
        seconds=seconds,
        messages_per_second=answered / seconds if seconds > 0 else 0.0,
        stop=batch.stop.stop,
    )
