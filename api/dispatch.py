"""Sending the API's messages on the campaign engine: per account a lane, per message kind a
track with one long-lived `CampaignRun` used through `attempt(...)`.

A lane (one wechat-app block) owns what campaigns own per run: the WeChat client, the
token (read from the Block, offered again every TOKEN_EVERY_SECONDS, refreshed on 40001 by
compare-and-expire), the account's shared rate and daily quota (SqlAccountLimits: the same
rows campaigns reserve from) and, per track, the breaker and the retry policy.

`CampaignRun.attempt` raises the run's StopSignal for REQUEST, CONFIG and QUOTA answers, as
it must for a campaign. The API sorts those stops out per message:

- REQUEST (a bad template_id, an unknown errcode …) is that message's fault: the message
  fails, the stop is cleared, the track goes on. Messages the stop interrupted go again.
- QUOTA, the breaker giving up, the token or the account failing (CONFIG), quiet hours:
  the track is *held*. Its messages stay `queued` (callers get 202); a background loop
  reopens it (quota: after midnight Beijing time; quiet hours: when they end; others:
  after a back-off that doubles up to MAX_HOLD_SECONDS) with a fresh run, and sends the
  queued rows again from the database. Quota and breaker holds emit `wxpush.api.held`.
- RECIPIENT answers fail the message; RETRY answers are retried by the engine itself.

Restart: queued rows left by an earlier process are sent again (template messages with the
same client_msg_id, which WeChat dedupes); a customer_service or subscribe row that may have
been attempted (its first_attempt_at is set) is marked `unknown` instead, since WeChat does
not dedupe those kinds (docs/api.md, "Exactly once").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Connection, Engine, func, select

from api.store import Store
from db.account_limits import BEIJING
from db.api_messages import Result, StoredMessage
from db.audience import FrequencyCap, capped_openids
from db.models import api_messages
from db.outcomes import DeliveryOutcome, DeliveryStatus
from sending.breaker import BreakerPolicy
from sending.message import MessageSpec, RenderedMessage
from sending.quiet_hours import QuietGuard, wall_clock
from sending.sender import CampaignRun, RetryPolicy, StopCause, StopSignal, TokenSource
from tasks.account_limits import SqlAccountLimits
from tasks.blocks import WeChatApp
from tasks.events import Alert, api_held
from wechat.client import WeChatClient
from wechat.errors import ConfigError
from wechat.models import CustomMessage, MiniProgram, SubscribeMessage, TemplateMessage

__all__ = ["Dispatcher", "Lane", "Track", "answer_of"]

log = logging.getLogger("wxpush.api")

#: The token is read from the Block again this often (the refresh flow renews it).
TOKEN_EVERY_SECONDS = 30.0
#: The loop that reopens held tracks and re-sends queued rows runs this often.
LOOP_SECONDS = 1.0
#: Rows the loop takes from the database per round.
RESEND_ROWS = 500
#: The loop looks for queued rows nobody here sends this often, and whenever a track reopens
#: (the requests send their own messages; the scan is for holds, restarts and strays).
RESCAN_SECONDS = 10.0
#: The most rows one scan reads when every row it found is held or in flight.
MAX_SCAN_ROWS = 32_000
#: A held track (not quota, not quiet hours) tries again after this, doubling to the max.
FIRST_HOLD_SECONDS = 15.0
MAX_HOLD_SECONDS = 300.0
#: A message interrupted by another message's stop goes again at most this often.
MAX_RESTARTS = 20
#: Final results remembered for duplicates of a message (about 200 bytes each).
FINISHED_MEMORY = 100_000
STATUSES_FINAL = frozenset({"sent", "failed", "unknown"})
KINDS = ("template", "customer_service", "subscribe")

LoadApp = Callable[[str], Awaitable[WeChatApp]]
GetToken = Callable[[str], Awaitable[SecretStr]]
Refresh = Callable[[str, SecretStr], Awaitable[SecretStr]]


def answer_of(row: StoredMessage | Result) -> dict[str, Any]:
    """The JSON answer for a message: the same for every request that asks about it."""
    answer: dict[str, Any] = {"id": row.id, "status": row.status}
    for name in ("msgid", "errcode", "reason"):
        value = getattr(row, name, None)
        if value is not None:
            answer[name] = value
    return answer


# The spec a track's run is built with: only its kind matters (the API renders nothing; the
# message comes ready-made), but CampaignRun needs a valid one.
_SPECS = {
    "template": MessageSpec(kind="template", template_id="api", data={"api": "api"}),
    "subscribe": MessageSpec(kind="subscribe", template_id="api", data={"api": "api"}),
    "customer_service": MessageSpec(kind="customer_service", text="api"),
}


def build_message(row: StoredMessage) -> RenderedMessage:
    """The WeChat request body of a stored message. A template message is built without
    validating it again (its fields passed api.models.MessageIn's rules before the row was
    stored): validating its data per message cost ~4 % of the API's CPU under load."""
    payload = row.payload or {}
    mini = payload.get("miniprogram")
    miniprogram = MiniProgram(**mini) if mini else None
    if row.kind == "template":
        return TemplateMessage.model_construct(
            touser=row.openid,
            template_id=row.template_id or "",
            data=payload.get("data") or {},
            url=payload.get("url"),
            miniprogram=miniprogram,
            client_msg_id=row.client_msg_id,
        )
    if row.kind == "subscribe":
        return SubscribeMessage(
            touser=row.openid,
            template_id=row.template_id or "",
            data=payload.get("data") or {},
            page=payload.get("page"),
            miniprogram=miniprogram,
        )
    return CustomMessage(touser=row.openid, msgtype="text", content={"content": payload["text"]})


@dataclass
class Hold:
    """Why a track is held and until when (wall clock, unix seconds)."""

    cause: str
    reason: str
    until: float
    since: float
    alerted: bool = False


@dataclass
class Track:
    """One (account, kind): its run and whether it is held."""

    lane: Lane
    kind: str
    run: CampaignRun | None = None
    hold: Hold | None = None
    backoff: float | None = None  # the next hold's length (None: the first hold's)
    in_flight: int = 0

    @property
    def state(self) -> str:
        return "open" if self.hold is None else f"held:{self.hold.cause}"


@dataclass
class Lane:
    """One account (a wechat-app block) and what its tracks share."""

    app: str
    block: WeChatApp
    client: WeChatClient
    tokens: TokenSource | None = None
    limits: SqlAccountLimits | None = None
    tracks: dict[str, Track] = field(default_factory=dict)
    token_read_at: float = 0.0
    #: One token read or run start at a time: a burst of first messages reads it once.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def track(self, kind: str) -> Track:
        found = self.tracks.get(kind)
        if found is None:
            found = self.tracks[kind] = Track(self, kind)
        return found


@dataclass
class DispatchCounts:
    """What the dispatcher has done since start (for /health)."""

    sent: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # errcode (or "none") → messages
    unknown: int = 0
    holds: Counter[str] = field(default_factory=Counter)  # cause → holds begun


class Dispatcher:
    """Sends accepted messages; `submit(row)` returns a future of its final Result."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        *,
        load_app: LoadApp,
        get_token: GetToken,
        refresh: Refresh,
        concurrency: int = 64,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        request_timeout: float = 10.0,
        emit: Callable[[Alert], object] = lambda alert: alert.emit(),
        clock: Callable[[], float] = time.time,
        first_hold_seconds: float = FIRST_HOLD_SECONDS,
    ) -> None:
        self.store = store
        self.engine = engine
        self._load_app = load_app
        self._get_token = get_token
        self._refresh = refresh
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or BreakerPolicy(give_up_seconds=300)
        self.request_timeout = request_timeout
        self._emit = emit
        self._clock = clock
        self.first_hold_seconds = first_hold_seconds
        self.lanes: dict[str, Lane] = {}
        self._lane_locks: dict[str, asyncio.Lock] = {}
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._outcomes: dict[str, asyncio.Future[Result]] = {}
        # Results committed lately: a duplicate whose row was read just before the commit
        # gets this answer, never a second send.
        self._finished: OrderedDict[str, Result] = OrderedDict()
        self._loop_task: asyncio.Task[None] | None = None
        self._scanned_at = 0.0
        self._alerting: set[asyncio.Task[None]] = set()
        # Messages whose first-attempt mark this process wrote (not an earlier process's).
        self._marked: set[str] = set()
        self._wake = asyncio.Event()
        self.counts = DispatchCounts()
        self.started_at = datetime.now(UTC)

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Settle what an earlier process left (the restart rule), then start the loop."""
        await self._round()
        self._loop_task = asyncio.create_task(self._loop(), name="api-dispatch-loop")

    async def close(self) -> None:
        if self._alerting:  # an alert being counted: let it go out (briefly)
            await asyncio.wait(list(self._alerting), timeout=2)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._sending.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for lane in self.lanes.values():
            for track in lane.tracks.values():
                await self._close_run(track)
            with contextlib.suppress(Exception):
                await lane.client.aclose()

    # -- lanes -------------------------------------------------------------------------------

    async def lane(self, app: str) -> Lane:
        """The account's lane, made at first use (reads the block: AppNotConfigured if none)."""
        found = self.lanes.get(app)
        if found is not None:
            return found
        lock = self._lane_locks.setdefault(app, asyncio.Lock())
        async with lock:
            found = self.lanes.get(app)
            if found is not None:
                return found
            block = await self._load_app(app)
            client = WeChatClient(
                block.api_base_url,
                kind=block.kind,
                max_connections=self.concurrency * 2,
                timeout=self.request_timeout,
            )
            limits = SqlAccountLimits(
                block.app_id,
                rate_per_second=block.rate_per_second,
                daily_quota=block.daily_quota,
                database=lambda: self.engine,
                app=app,
            )
            found = self.lanes[app] = Lane(app, block, client, limits=limits)
            return found

    async def _tokens(self, lane: Lane) -> TokenSource:
        """The lane's token source, made with the Block's token at first use, and offered
        the Block's token again every TOKEN_EVERY_SECONDS."""
        now = time.monotonic()
        if lane.tokens is None:
            token = await self._get_token(lane.app)
            lane.tokens = TokenSource(token, refresh=lambda failed: self._refresh(lane.app, failed))
            lane.token_read_at = now
        elif now - lane.token_read_at >= TOKEN_EVERY_SECONDS:
            lane.token_read_at = now
            lane.tokens.offer(await self._get_token(lane.app))
        return lane.tokens

    async def _run_of(self, track: Track) -> CampaignRun:
        if track.run is not None:
            if time.monotonic() - track.lane.token_read_at >= TOKEN_EVERY_SECONDS:
                await self._offer_token(track.lane)
            return track.run
        async with track.lane.lock:
            if track.run is not None:
                return track.run
            return await self._start_run(track)

    async def _offer_token(self, lane: Lane) -> None:
        """The Block's token again, read by one message while the others go on."""
        if lane.lock.locked():
            return
        async with lane.lock:
            if time.monotonic() - lane.token_read_at >= TOKEN_EVERY_SECONDS:
                try:
                    await self._tokens(lane)
                except Exception as exc:  # keep the token in hand; try again later
                    lane.token_read_at = time.monotonic()
                    log.warning("Could not read the token of %s again (%s).", lane.app, _said(exc))

    async def _start_run(self, track: Track) -> CampaignRun:
        lane = track.lane
        tokens = await self._tokens(lane)
        quiet = None
        if lane.block.api_follows_guardrails:
            window = lane.block.quiet_window()
            quiet = None if window is None else QuietGuard(window, wall_clock)
        run = CampaignRun(
            spec=_SPECS[track.kind],
            campaign_id=f"api:{lane.app}",
            client=lane.client,
            tokens=tokens,
            concurrency=self.concurrency,
            retry=self.retry,
            account=lane.limits,
            quiet=quiet,
            breaker=self.breaker,
        )
        await run.__aenter__()
        track.run = run
        return run

    async def _close_run(self, track: Track) -> None:
        run, track.run = track.run, None
        if run is not None:
            with contextlib.suppress(Exception):
                await run.__aexit__(None, None, None)  # gives back unused quota

    # -- messages ----------------------------------------------------------------------------

    def outcome(self, message_id: str) -> asyncio.Future[Result]:
        """A future settled with the message's final Result once this process records one."""
        future = self._outcomes.get(message_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            done = self._finished.get(message_id)
            if done is not None:
                future.set_result(done)
                return future
            self._outcomes[message_id] = future
        return future

    def submit(self, row: StoredMessage) -> asyncio.Future[Result]:
        """Send `row` unless this process sends it already; its outcome future."""
        future = self.outcome(row.id)
        if row.id not in self._sending and not future.done():
            task = asyncio.create_task(self._deliver(row), name=f"api-send-{row.id}")
            self._sending[row.id] = task
            task.add_done_callback(lambda _t, key=row.id: self._done(key))
        return future

    def _done(self, message_id: str) -> None:
        self._sending.pop(message_id, None)
        future = self._outcomes.get(message_id)
        if future is not None and not future.done():
            # Not final here (held, or the task ended): drop it, a later send makes another.
            # Waiters keep theirs and time out into a 202.
            self._outcomes.pop(message_id, None)

    def held(self, app: str, kind: str) -> Hold | None:
        lane = self.lanes.get(app)
        track = None if lane is None else lane.tracks.get(kind)
        return None if track is None else track.hold

    @property
    def in_flight(self) -> int:
        return len(self._sending)

    async def _finish(self, result: Result) -> None:
        """Commit a final result, then tell whoever waits for it."""
        await self.store.record([result])
        if result.status == "sent":
            self.counts.sent += 1
        elif result.status == "failed":
            self.counts.failed[str(result.errcode) if result.errcode is not None else "none"] += 1
        elif result.status == "unknown":
            self.counts.unknown += 1
        self._finished[result.id] = result
        self._marked.discard(result.id)
        if len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)
        future = self._outcomes.pop(result.id, None)
        if future is not None and not future.done():
            future.set_result(result)

    async def _deliver(self, row: StoredMessage) -> None:
        try:
            await self._deliver_once(row)
        except asyncio.CancelledError:
            raise
        except ConfigError as exc:  # the app's block is gone (AppNotConfigured): say so
            await self._finish(_result(row, "failed", reason=_said(exc)))
        except Exception as exc:  # a bug or the database: the row stays queued
            log.error(
                "Sending API message %s failed unexpectedly (%s); it stays queued.",
                row.id,
                type(exc).__name__,
            )

    async def _deliver_once(self, row: StoredMessage) -> None:
        lane = await self.lane(row.app)
        track = lane.track(row.kind)
        if track.hold is not None:
            return  # stays queued: the loop sends it when the track reopens
        if lane.block.api_follows_guardrails and await self._capped(lane, row):
            cap = lane.block.frequency_cap
            hours = lane.block.frequency_cap_hours
            reason = (
                f"frequency_cap: the follower already had {cap} message(s) of this account's "
                f"campaigns within {hours} h (api_follows_guardrails is on)"
            )
            await self._finish(_result(row, "failed", reason=reason))
            return
        message = build_message(row)
        cmid = row.client_msg_id if row.kind == "template" else None
        if row.kind != "template" and row.first_attempt_at is None:
            # WeChat does not dedupe this kind: say "may have been attempted" before trying,
            # so a crash mid-send leaves `unknown`, never a second send (the restart rule).
            now = datetime.now(UTC)
            self._marked.add(row.id)
            await self.store.record([_result(row, "queued", first_attempt_at=now)])
        for _ in range(MAX_RESTARTS):
            if track.hold is not None:
                return
            try:
                run = await self._run_of(track)
            except Exception as exc:  # the token could not be read: hold the track
                self._hold(track, "token", f"could not read the access token ({_said(exc)})")
                return
            track.in_flight += 1
            try:
                outcome = await run.attempt(row.openid, message, cmid)
            finally:
                track.in_flight -= 1
            verdict = self._judge(track, run, row, outcome)
            if verdict is None:
                continue  # interrupted by another message's stop: go again
            if verdict.status in STATUSES_FINAL:
                await self._finish(verdict)
            else:
                await self.store.record([verdict])
            return
        log.error("API message %s was interrupted %d times; it stays queued.", row.id, MAX_RESTARTS)

    def _judge(
        self, track: Track, run: CampaignRun, row: StoredMessage, outcome: DeliveryOutcome | None
    ) -> Result | None:
        """The message's result from the engine's outcome, and the track's state from the
        run's stop; None to send the message again."""
        stop = run.stop.stop
        if outcome is not None and outcome.status == DeliveryStatus.SENT:
            return _from_outcome(row, "sent", outcome)
        own = (
            outcome is not None
            and stop is not None
            and outcome.attempts > 0
            and outcome.reason == stop.reason
            and outcome.errcode == stop.errcode
        )
        if stop is not None and stop.error_class == "REQUEST":
            # This message's fault (or another's): never the track's.
            self._clear(run, stop)
            if own:
                return _from_outcome(row, "failed", outcome)
        if outcome is not None and outcome.status == DeliveryStatus.FAILED and not own:
            if run.dedupe is False and outcome.error_class == "RETRY" and outcome.errcode is None:
                return _from_outcome(row, "unknown", outcome)
            return _from_outcome(row, "failed", outcome)
        if outcome is not None and outcome.status == DeliveryStatus.FAILED and own:
            # A REQUEST stop was handled above; a failed row under another kind of stop
            # (an unknown errcode is REQUEST too) is still this message's failure.
            self._hold_for(track, run)
            return _from_outcome(row, "failed", outcome)
        # Not attempted, or pending: the stop holds the track (or was cleared above).
        if run.stop.stop is None:
            return None
        self._hold_for(track, run)
        if outcome is None:
            return _result(row, "queued", reason=track.hold.reason if track.hold else None)
        return _from_outcome(row, "queued", outcome, reason=outcome.reason)

    @staticmethod
    def _clear(run: CampaignRun, stop: Any) -> None:
        """Clear a per-message stop, once, if it is still the one in force."""
        if run.stop.stop is stop:
            run.stop = StopSignal()

    def _hold_for(self, track: Track, run: CampaignRun) -> None:
        stop = run.stop.stop
        if stop is None or track.hold is not None:
            return
        now = self._clock()
        if stop.cause == StopCause.QUOTA or stop.error_class == "QUOTA":
            until = _next_beijing_midnight(now) + 5
            reason = (
                f"the daily template quota of account {track.lane.block.app_id} is used up "
                "(the account's own count or WeChat's 45009): held messages go after "
                "midnight, Beijing time"
            )
            self._hold(track, "quota", reason, until=until)
        elif stop.cause == StopCause.BREAKER:
            # The campaign's words up to what to do, which for the API is: nothing.
            said = stop.reason.split(" The messages not sent", 1)[0]
            self._hold(track, "breaker", f"{said} The API tries again by itself.")
        elif stop.cause == StopCause.QUIET_HOURS and run.quiet is not None:
            self._hold(track, "quiet_hours", stop.reason, until=run.quiet.ends_at.timestamp())
        else:
            cause = "config" if stop.error_class in ("CONFIG", None) else stop.error_class.lower()
            self._hold(track, cause, stop.reason)

    def _hold(self, track: Track, cause: str, reason: str, *, until: float | None = None) -> None:
        if track.hold is not None:
            return
        now = self._clock()
        if until is None:
            wait = track.backoff or self.first_hold_seconds
            until = now + wait
            track.backoff = min(MAX_HOLD_SECONDS, wait * 2)
        track.hold = Hold(cause, reason, until, now)
        self.counts.holds[cause] += 1
        log.warning(
            "Holding the %s messages of %s until %s: %s",
            track.kind,
            track.lane.app,
            datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            reason,
        )
        if cause in ("quota", "breaker"):
            track.hold.alerted = True
            task = asyncio.create_task(self._alert(track, cause, reason, until))
            self._alerting.add(task)
            task.add_done_callback(self._alerting.discard)

    async def _alert(self, track: Track, cause: str, reason: str, until: float) -> None:
        """Emit `wxpush.api.held` with how many of the track's messages wait (an emit that
        fails is logged by the event itself; it never stops the sending)."""
        app, kind = track.lane.app, track.kind
        try:
            queued = await self.store.read(lambda conn: _queued_of(conn, app, kind))
        except Exception:
            queued = max(1, track.in_flight)
        alert = api_held(
            app,
            track.lane.block.app_id,
            kind,
            cause,
            reason,
            queued=queued,
            resumes_at=datetime.fromtimestamp(until, UTC),
        )
        with contextlib.suppress(Exception):
            self._emit(alert)

    async def _capped(self, lane: Lane, row: StoredMessage) -> bool:
        cap = lane.block.frequency_cap
        if cap is None:
            return False
        rule = FrequencyCap(cap, lane.block.frequency_cap_hours, lane.block.app_id, lane.app)
        now = datetime.now(UTC)
        found = await self.store.read(
            lambda conn: capped_openids(conn, rule, "", [row.openid], now=now)
        )
        return row.openid in found

    # -- the loop ----------------------------------------------------------------------------

    def _left_unsure(self, row: StoredMessage) -> bool:
        """A customer_service or subscribe row an earlier process may have sent (it marked
        the first attempt, and this process did not): the restart rule makes it unknown."""
        return (
            row.kind != "template"
            and row.first_attempt_at is not None
            and row.id not in self._marked
            and _aware(row.created_at) < self.started_at
        )

    async def _loop(self) -> None:
        while True:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("The API's re-send loop failed (%s); trying again.", _said(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOOP_SECONDS):
                    await self._wake.wait()
            self._wake.clear()

    async def _round(self) -> None:
        """Reopen tracks whose hold has ended; send the queued rows nobody here sends."""
        now = self._clock()
        reopened = False
        for lane in list(self.lanes.values()):
            for track in lane.tracks.values():
                if track.hold is not None and now >= track.hold.until:
                    await self._close_run(track)
                    track.hold = None
                    reopened = True
                    log.info("Reopened the %s messages of %s.", track.kind, lane.app)
                elif track.hold is None and track.run is not None and track.in_flight == 0:
                    track.backoff = None  # open and idle again: the next hold starts short
        if not reopened and time.monotonic() - self._scanned_at < RESCAN_SECONDS:
            return
        self._scanned_at = time.monotonic()
        # Rows accepted in the last seconds are their requests' to send; an earlier
        # process's rows are all the loop's.
        cutoff = max(self.started_at, datetime.now(UTC) - timedelta(seconds=2))
        limit = RESEND_ROWS
        while True:
            rows = await self.store.unfinished(limit, cutoff)
            sendable = [row for row in rows if not self._skipped(row)]
            # A page of rows all held (a spent quota) or in flight: look further.
            if sendable or len(rows) < limit or limit >= MAX_SCAN_ROWS:
                break
            limit *= 4
        for row in sendable:
            if self._left_unsure(row):
                await self._finish(
                    _result(
                        row,
                        "unknown",
                        reason=(
                            "the API stopped while this message may have been in flight, "
                            f"and WeChat does not dedupe {row.kind} messages: not sent "
                            "again, to avoid a duplicate"
                        ),
                    )
                )
                continue
            self.submit(row)

    def _skipped(self, row: StoredMessage) -> bool:
        """Not the scan's to send: sent here already, or its track is held."""
        return row.id in self._sending or (
            self.held(row.app, row.kind) is not None and not self._left_unsure(row)
        )

    def snapshot(self) -> dict[str, Any]:
        """Lane states for /health: no secrets, no tokens."""
        lanes: dict[str, Any] = {}
        for app, lane in self.lanes.items():
            lanes[app] = {
                kind: {
                    "state": track.state,
                    **(
                        {
                            "reason": track.hold.reason,
                            "until": datetime.fromtimestamp(track.hold.until, UTC).isoformat(),
                        }
                        if track.hold
                        else {}
                    ),
                    "in_flight": track.in_flight,
                }
                for kind, track in lane.tracks.items()
            }
        return lanes


def _queued_of(connection: Connection, app: str, kind: str) -> int:
    """Messages of one account and kind waiting to be sent (index (app, created_at))."""
    query = (
        select(func.count())
        .select_from(api_messages)
        .where(
            api_messages.c.app == app,
            api_messages.c.kind == kind,
            api_messages.c.status == "queued",
        )
    )
    return int(connection.execute(query).scalar_one())


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _next_beijing_midnight(now: float) -> float:
    local = datetime.fromtimestamp(now, BEIJING)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), BEIJING)
    return midnight.timestamp()


def _said(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__


def _result(row: StoredMessage, status: str, **fields: Any) -> Result:
    values: dict[str, Any] = {
        "id": row.id,
        "status": status,
        "errcode": None,
        "errmsg": None,
        "reason": None,
        "attempts": 0,  # attempts since the last record: db.api_messages adds them up
        "msgid": None,
        "first_attempt_at": None,
        "last_attempt_at": None,
        "sent_at": None,
    }
    values.update(fields)
    return Result(**values)


def _from_outcome(
    row: StoredMessage, status: str, outcome: DeliveryOutcome | None, **fields: Any
) -> Result:
    if outcome is None:
        return _result(row, status, **fields)
    values: dict[str, Any] = {
        "errcode": outcome.errcode,
        "errmsg": outcome.errmsg,
        "reason": outcome.reason if status != "sent" else None,
        "attempts": outcome.attempts,
        "msgid": outcome.msgid,
        "first_attempt_at": outcome.first_attempt_at if outcome.attempts else None,
        "last_attempt_at": outcome.last_attempt_at if outcome.attempts else None,
        "sent_at": outcome.sent_at,
    }
    values.update(fields)
    return _result(row, status, **values)
