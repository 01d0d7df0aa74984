"""`push_campaign`: SQL audience → window → batched sends with retries → ledger → report.

Reads top to bottom like the process it runs: start (or resume) the campaign row, preflight
(audience read-only with a timeout, template columns, field rules on sample rows, the
token), stream the audience in batches — skipped rows recorded at once, eligible rows sent
by `send_batch` tasks, two at a time — then decide the final status in one place and
publish the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType, TaskRun
from prefect.exceptions import TerminationSignal
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled, Completed, Failed, State
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

from db import campaigns as campaign_rows
from db.audience import (
    DEFAULT_AUDIENCE_SQL,
    AudienceQueryError,
    AudienceRow,
    FrequencyCap,
    Shard,
    count_audience,
    has_nothing_to_send,
    preview_audience,
    stream_audience,
)
from db.callbacks import match_pending_receipts
from db.campaigns import IllegalTransition
from db.ledger import (
    LedgerFigures,
    ledger_figures,
    record_attempts,
    record_outcomes,
    reopen_unknown,
    settle_unanswered,
    status_counts,
)
from db.outcomes import Attempt, CampaignStatus, DeliveryOutcome, DeliveryStatus
from db.run_lock import CampaignBusy, hold_campaign
from sending import quiet_hours
from sending.breaker import BreakerPolicy
from sending.message import MessageSpec, client_msg_id_for, invalid_reason, render
from sending.plan import DryRunPlan
from sending.quiet_hours import QuietGuard
from sending.ratelimit import RateLimiter
from sending.sender import (
    CampaignRun,
    RetryPolicy,
    Stop,
    StopCause,
    StopKind,
    StopSignal,
    TokenSource,
)
from tasks.account_limits import account_limits
from tasks.blocks import WeChatApp
from tasks.database import audience_engine, engine
from tasks.ending import CampaignFailed, expected, stop_for_error
from tasks.events import CampaignFacts, campaign_crashed, campaign_ended
from tasks.flow_runs import CANCELLED_REASON
from tasks.params import CampaignForm, CampaignParams
from tasks.quota import QuotaToday, quota_left, quota_today
from tasks.reference import sync_errcodes_table
from tasks.report import CampaignReport, Progress, publish_report, publish_stop
from tasks.resume import resume_at, resume_params, schedule_resume
from tasks.shards import run_shards, sharding_refusal
from tasks.token import (
    AppNotConfigured,
    get_access_token,
    load_app,
    refresh_if_current,
    verify_token,
)
from wechat.client import WeChatClient
from wechat.errors import RetryableError

#: Batches in flight at once: one sends while the next is being fetched or finishing.
PARALLEL_BATCHES = 2
#: How often a batch's ledger write is tried before the task fails (answers stay buffered).
LEDGER_ATTEMPTS = 4
#: Failure-ratio pauses need this many attempted messages before they can trigger.
ERROR_RATIO_MIN_ATTEMPTS = 200
PREFLIGHT_SAMPLE = 20
#: After a stop, how long in-flight batches get to record the answers they already have.
DRAIN_GRACE_SECONDS = 30.0

__all__ = ["CampaignFailed", "CampaignResult", "decide_status", "push_campaign"]


class CampaignResult(BaseModel):
    """The run's answer: where the campaign ended and what it did."""

    campaign_id: str
    name: str
    status: CampaignStatus
    reason: str | None = None
    counts: dict[str, int]
    sent_this_run: int
    http_attempts: int = 0
    # This run's wall time, setup included, and sent_this_run over it (the report's "Run time";
    # the send span is the `campaign_stats` view's, docs/analytics.md).
    seconds: float
    messages_per_second: float
    dry_run: bool = False
    #: A dry run's plan (skip and invalid reasons, example messages): it stores nothing else.
    plan: DryRunPlan | None = None


# -- stage 1: the campaign row --------------------------------------------------------------


def _flow_run_id() -> str | None:
    # prefect.runtime works inside tasks too (a task's run context has no flow run).
    return current_flow_run.id


@task(name="start-campaign", cache_policy=NO_CACHE)
def start_campaign(
    params: CampaignParams, campaign_id: str | None = None, app_id: str | None = None
) -> str | Stop:
    """Create the campaign row (`campaign_id`: the new row's id, known before so the run can
    hold it first), or resume the one named by `params.campaign_id`; its id. `app_id`, the
    account's AppID, is stored with it: the frequency cap counts per account.

    A resume the campaign's row forbids (`wxpush db prune` emptied its ledger; a run still
    sending it is refused before, by the run lock) comes back as the Stop saying why: an
    answer, logged in one line, not a failed task's traceback.
    """
    # The errcode meanings the analyst views join to follow this version's table.
    sync_errcodes_table(engine())
    try:
        return _create_or_resume(params, campaign_id or params.campaign_id, app_id)
    except IllegalTransition as exc:
        return Stop("stop", str(exc))


def _create_or_resume(
    params: CampaignParams, campaign_id: str | None, app_id: str | None = None
) -> str:
    with engine().begin() as conn:
        record = campaign_rows.create_or_resume(
            conn,
            campaign_id=campaign_id,
            name=params.name,
            app=params.app,
            kind=params.kind,
            template_id=params.template_id,
            parameters=params.model_dump(mode="json"),
            audience_sql=params.audience_sql or DEFAULT_AUDIENCE_SQL,
            app_id=app_id,
            flow_run_id=_flow_run_id(),
            deployment=current_deployment.name,
            deployment_id=current_deployment.id,
            started_by="deployment" if current_deployment.id else "push_campaign",
        )
        if record.resumed:
            # Rows a killed run sent without recording the answer: past WeChat's dedupe
            # window they are in doubt (unknown) and not sent again unless the operator
            # says so (db/ledger.py).
            settled = settle_unanswered(conn, record.id)
            reopened = reopen_unknown(conn, record.id) if params.resend_unknown else 0
            if settled or reopened:
                get_run_logger().warning(
                    "Campaign %s: %d recipients newly in doubt (unknown: sent, answer lost); "
                    "%d in doubt sent again on the operator's request.",
                    record.id,
                    settled,
                    reopened,
                )
    return record.id


# -- stage 2: preflight ---------------------------------------------------------------------


def message_spec(params: CampaignParams) -> MessageSpec:
    """The message every recipient gets, before their row fills the placeholders."""
    return MessageSpec(
        kind=params.kind,
        template_id=params.template_id,
        data=dict(params.data),
        text=params.text,
        url=params.url,
        miniprogram_appid=params.miniprogram_appid,
        miniprogram_pagepath=params.miniprogram_pagepath,
    )


#: What a preflight refusal adds to its reason: nothing was sent, so the fix is a new run.
RUN_AGAIN = "then run the campaign again; nothing was sent"


@task(name="preflight", cache_policy=NO_CACHE)
async def preflight(
    params: CampaignParams, campaign_id: str, sql: str, binds: dict[str, Any]
) -> Stop | None:
    """Stop before sending anything if the audience, template or token cannot work.

    Returns the stop, whose reason names the fix, or None when the campaign may go ahead.
    A refusal is returned, not raised: it is an answer, and the logs keep one line for it,
    not Prefect's traceback of a failed task. Anything unexpected still raises.
    """
    try:
        await _check(params, campaign_id, sql, binds)
    except Exception as exc:
        if not expected(exc):
            raise
        return Stop(*stop_for_error(exc, campaign_id))
    return None


async def _check(params: CampaignParams, campaign_id: str, sql: str, binds: dict[str, Any]) -> None:
    log = get_run_logger()
    try:
        preview = preview_audience(
            audience_engine(),
            sql,
            binds,
            sample_size=PREFLIGHT_SAMPLE,
            timeout_seconds=params.audience_timeout_seconds,
        )
    except AudienceQueryError as exc:
        raise CampaignFailed(f"{str(exc).rstrip('.')}. Fix the audience SQL, {RUN_AGAIN}.") from exc
    spec = message_spec(params)
    missing = spec.check_columns(preview.columns)
    if missing:
        raise CampaignFailed(
            "The message uses "
            + ", ".join(f"{{{m}}}" for m in missing)
            + f" but the audience has no such column (it has: {', '.join(preview.columns)}). "
            f"Add the column to the audience SQL or fix the placeholder, {RUN_AGAIN}."
        )
    problems: list[str] = []
    clean = 0
    # A row the campaign skips as nothing_to_send has no content to check, by design.
    rows = [row for row in preview.rows if not has_nothing_to_send(row)]
    for row in rows:
        rendered = render(spec, row, client_msg_id=client_msg_id_for(campaign_id, row["openid"]))
        if isinstance(rendered, list):
            problems.append(invalid_reason(rendered))
        else:
            clean += 1
    if rows and clean == 0:
        raise CampaignFailed(
            f"Every one of the {len(rows)} preview rows breaks WeChat's field rules, "
            f"e.g. {problems[0]}. Fix the template fields (docs/template-fields.md), {RUN_AGAIN}."
        )
    if not params.dry_run:
        await get_access_token(params.app)
        await verify_token(params.app)
        if params.kind == "template":  # the daily quota counts template messages only
            await _check_quota(params, campaign_id, sql, binds)
    log.info(
        "Preflight passed: audience columns %s; %d of %d preview rows render cleanly%s.",
        ", ".join(preview.columns),
        clean,
        len(rows),
        "" if params.dry_run else "; the token works",
    )


async def _check_quota(
    params: CampaignParams, campaign_id: str, sql: str, binds: dict[str, Any]
) -> None:
    """Refuse a campaign whose recipients do not fit in the account's template messages
    left today, unless the operator chose to send what fits (it then pauses on the quota
    and a scheduled run resumes it after midnight Beijing time: tasks/resume.py)."""
    log = get_run_logger()
    app = await load_app(params.app)
    now = datetime.fromtimestamp(quiet_hours.wall_clock(), UTC)
    left = await quota_left(app, await get_access_token(params.app), now)
    if left.wechat_error is not None:
        log.warning(
            "Could not ask WeChat how much of the daily quota is left (%s); going by this "
            "account's own count.",
            left.wechat_error,
        )
    to_send = await asyncio.to_thread(_to_send, params, app, campaign_id, sql, binds, left.left)
    if to_send <= left.left:
        log.info("Daily quota: %d to send, %d left today (%s).", to_send, left.left, left.figures())
        return
    resets = left.resets_at.strftime("%Y-%m-%d %H:%M")
    if params.when_quota_short == "send_what_fits":
        log.warning(
            "Daily quota short: %d to send, %d left today (%s); sending what fits, the rest "
            "after the reset at %s Asia/Shanghai.",
            to_send,
            left.left,
            left.figures(),
            resets,
        )
        return
    raise CampaignFailed(
        f"Daily template quota short: {to_send:,} to send, {left.left:,} left today "
        f"({left.figures()}); it resets at {resets} Asia/Shanghai. Wait for the reset, narrow "
        'the audience, or set "When the daily quota is short" to send_what_fits '
        f"({left.left:,} now, the rest by itself after the reset), {RUN_AGAIN}."
    )


def _to_send(
    params: CampaignParams,
    app: WeChatApp,
    campaign_id: str,
    sql: str,
    binds: dict[str, Any],
    left: int,
) -> int:
    """The recipients the campaign would still message. The audience's size less the rows
    already done settles it when that fits in `left`; otherwise the exact count (the
    skip rules applied, a read of the whole audience) is worth its cost."""
    total = count_audience(
        audience_engine(), sql, binds, timeout_seconds=params.audience_timeout_seconds
    )
    # Rows with a final answer are not sent again; with retry_failed, failures may be.
    again = {"pending", "failed"} if params.retry_failed else {"pending"}
    with engine().connect() as conn:
        counts = status_counts(conn, campaign_id)
    done = sum(n for status, n in counts.items() if status not in again)
    if total - done <= left:
        return max(total - done, 0)
    stream = _audience_stream(params, app, campaign_id, sql, binds, batch_size=5000)
    try:
        return sum(1 for batch in stream for row in batch if not row.skip_reason)
    finally:
        getattr(stream, "close", lambda: None)()  # its connections, if not exhausted


# -- stage 3: stream, send, record ------------------------------------------------------------


class BatchSummary(BaseModel):
    """What a batch did; small, secret-free, shown as the task's result."""

    index: int
    rows: int
    not_sent: int = Field(description="Rows not sent: final already, in doubt, or stopped.")
    counts: dict[str, int]
    errcodes: dict[str, int]
    attempts: int
    seconds: float
    stop_kind: str | None = None
    stop_reason: str | None = None


class SqlLedger:
    """The run's `Ledger` on the SQL ledger: every call runs in a thread, so the sends on
    the event loop go on while the database works."""

    def __init__(self, campaign_id: str, *, retry_failed: bool) -> None:
        self.campaign_id = campaign_id
        self.retry_failed = retry_failed

    async def mark(self, attempts: Sequence[Attempt]) -> Collection[str]:
        return await asyncio.to_thread(self._mark, attempts)

    async def record(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        await asyncio.to_thread(self._record, outcomes)

    def _mark(self, attempts: Sequence[Attempt]) -> Collection[str]:
        with engine().begin() as conn:
            return record_attempts(
                conn, self.campaign_id, attempts, retry_failed=self.retry_failed
            ).marked

    def _record(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """One upsert; a short retry covers a locked or restarting database."""
        delay = 0.5
        for attempt in range(1, LEDGER_ATTEMPTS + 1):
            try:
                with engine().begin() as conn:
                    record_outcomes(conn, self.campaign_id, outcomes)
                    # WeChat's receipt can beat this write; the receiver kept those,
                    # unmatched, for this moment.
                    match_pending_receipts(conn, [o.msgid for o in outcomes if o.msgid])
                return
            except Exception:
                if attempt == LEDGER_ATTEMPTS:
                    raise
                time.sleep(delay)
                delay *= 2


async def _infrastructure_failure(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a batch only for failures around the sends (the database, Prefect, network)."""
    exc = await state.aresult(raise_on_failure=False)
    return isinstance(exc, RetryableError | OSError | ConnectionError) or (
        type(exc).__module__.startswith("sqlalchemy")
    )


@task(
    name="send-batch",
    task_run_name="send-batch-{index}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_infrastructure_failure,
)
async def send_batch(
    run: CampaignRun, index: int, app: str, rows: list[dict[str, Any]]
) -> BatchSummary:
    """Send one batch of eligible audience rows through the run; every answer recorded.

    A retry of the task sends the same rows again: the ledger's in-flight marks let through
    only the rows without a final answer (db.ledger.record_attempts), so none goes twice.
    """
    started = time.monotonic()
    result = None
    if not run.stop.is_set():
        # The token store's current token: a run longer than a token's life follows the
        # refresh flow's renewals.
        run.tokens.offer(await get_access_token(app))
        result = await run.send(rows)
    stop = run.stop
    summary = BatchSummary(
        index=index,
        rows=len(rows),
        not_sent=len(rows) if result is None else result.not_attempted,
        counts={} if result is None else {k: v for k, v in result.counts.items() if v},
        errcodes={} if result is None else {str(k): v for k, v in result.errcodes.items()},
        attempts=0 if result is None else result.http_attempts,
        seconds=round(time.monotonic() - started, 3),
        stop_kind=stop.kind,
        stop_reason=stop.reason,
    )
    get_run_logger().info(
        "Batch %d: %d rows, %d not sent, %s in %.2f s.",
        index,
        len(rows),
        summary.not_sent,
        ", ".join(f"{v} {k}" for k, v in sorted(summary.counts.items())) or "nothing sent",
        summary.seconds,
    )
    return summary


def _skipped(rows: list[Any], now: datetime) -> list[DeliveryOutcome]:
    return [
        DeliveryOutcome(
            openid=row.openid,
            status=DeliveryStatus.SKIPPED,
            reason=str(row.skip_reason),
            last_attempt_at=now,
        )
        for row in rows
    ]


class _Tally:
    """Running totals across batches, for progress and the error-ratio pause."""

    def __init__(self, plan: DryRunPlan | None = None) -> None:
        self.plan = plan  # a dry run's, filled instead of sending
        self.counts: Counter[str] = Counter()
        self.errcodes: Counter[str] = Counter()
        self.rows = 0
        self.batches = 0
        self.http_attempts = 0

    def add(self, summary: BatchSummary) -> None:
        self.counts.update(summary.counts)
        self.errcodes.update(summary.errcodes)
        self.http_attempts += summary.attempts
        self.batches += 1

    @property
    def attempted(self) -> int:
        return sum(self.counts[s] for s in ("sent", "failed", "pending"))

    def failure_ratio(self) -> float:
        return self.counts["failed"] / self.attempted if self.attempted else 0.0


async def _collect(
    batch: asyncio.Task[BatchSummary],
    tally: _Tally,
    stop: StopSignal,
    params: CampaignParams,
    progress: Progress,
) -> None:
    tally.add(await batch)
    await progress.update(tally.rows, tally.counts)
    if (
        params.max_error_ratio < 1
        and tally.attempted >= ERROR_RATIO_MIN_ATTEMPTS
        and tally.failure_ratio() > params.max_error_ratio
    ):
        stop.pause(
            None,
            f"{tally.failure_ratio():.0%} of {tally.attempted} attempted messages failed, "
            f"above the limit of {params.max_error_ratio:.0%}; look at the top errcodes, "
            "then resume",
            cause=StopCause.ERROR_RATIO,
        )


class _Batches:
    """The audience stream, read in a thread of its own (its connection stays in one thread),
    so the event loop keeps sending while the next batch is fetched."""

    def __init__(self, stream: Iterator[list[Any]]) -> None:
        self._stream = stream
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="wxpush-audience")

    async def next(self) -> list[Any] | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, next, self._stream, None)

    def close(self) -> None:
        """Close the stream (its connections) in its thread, after any fetch under way."""
        self._thread.submit(getattr(self._stream, "close", lambda: None))
        self._thread.shutdown(wait=False)


async def _send_all(
    params: CampaignParams,
    app: WeChatApp,
    campaign_id: str,
    sql: str,
    binds: dict[str, Any],
    stop: StopSignal,
    progress: Progress,
    shard: Shard | None = None,
) -> _Tally:
    spec = message_spec(params)
    tally = _Tally(
        DryRunPlan(name=params.name, campaign_id=params.campaign_id) if params.dry_run else None
    )
    batches = _Batches(_audience_stream(params, app, campaign_id, sql, binds, shard=shard))
    try:
        if tally.plan is not None:
            while (batch := await batches.next()) is not None and not stop.is_set():
                tally.rows += len(batch)
                for row in batch:
                    tally.counts[
                        tally.plan.add(spec, campaign_id, row.values, row.skip_reason)
                    ] += 1
                await progress.update(tally.rows, tally.counts)
            return tally
        quiet = _quiet_guard(app)
        if quiet is not None and quiet.begun():  # started inside the window: nothing goes
            stop.pause(None, quiet.reason(), cause=StopCause.QUIET_HOURS)
            return tally
        tokens = TokenSource(
            await get_access_token(params.app),
            refresh=lambda failed: refresh_if_current(params.app, failed),
        )
        async with (
            WeChatClient(
                app.api_base_url,
                kind=app.kind,
                max_connections=params.concurrency,
                timeout=params.request_timeout_seconds,
            ) as client,
            CampaignRun(
                spec=spec,
                campaign_id=campaign_id,
                client=client,
                tokens=tokens,
                limiter=RateLimiter(params.rate_per_second),
                concurrency=params.concurrency,
                retry=RetryPolicy(max_attempts=params.max_attempts),
                breaker=BreakerPolicy(
                    window=params.breaker_window,
                    share=params.breaker_share,
                    give_up_seconds=params.breaker_give_up_minutes * 60,
                ),
                stop=stop,
                ledger=SqlLedger(campaign_id, retry_failed=params.retry_failed),
                # The account's rate and daily quota, shared with its other campaigns.
                account=account_limits(app),
                quiet=quiet,
            ) as run,
        ):
            await _send_batches(run, params, batches, tally, progress)
    finally:
        batches.close()
    return tally


def _audience_stream(
    params: CampaignParams,
    app: WeChatApp,
    campaign_id: str,
    sql: str,
    binds: dict[str, Any],
    *,
    shard: Shard | None = None,
    batch_size: int | None = None,
) -> Iterator[list[AudienceRow]]:
    """The campaign's remaining audience, each row with its skip reason: what the send
    reads, and what the quota preflight counts."""
    return stream_audience(
        audience_engine(),
        sql,
        binds,
        ledger=engine(),
        campaign_id=campaign_id,
        window_hours=params.window_hours,
        now=datetime.now(UTC),
        batch_size=batch_size or params.batch_size,
        retry_failed=params.retry_failed,
        timeout_seconds=params.audience_timeout_seconds,
        shard=shard,
        frequency_cap=frequency_cap(params, app),
    )


def _quiet_guard(app: WeChatApp) -> QuietGuard | None:
    """The account's quiet hours as the send path checks them, on the flows' clock."""
    window = app.quiet_window()
    return None if window is None else QuietGuard(window, quiet_hours.wall_clock)


def frequency_cap(params: CampaignParams, app: WeChatApp) -> FrequencyCap | None:
    """The cap this campaign's audience is held to: its own override, else the account's."""
    cap = params.frequency_cap_with(app.frequency_cap, app.frequency_cap_hours)
    if cap is None:
        return None
    return FrequencyCap(messages=cap[0], hours=cap[1], app_id=app.app_id, app=params.app)


async def _send_batches(
    run: CampaignRun, params: CampaignParams, batches: _Batches, tally: _Tally, progress: Progress
) -> None:
    """Hand the batches to `send_batch` tasks, PARALLEL_BATCHES at a time, on this loop."""
    stop = run.stop
    in_flight: deque[asyncio.Task[BatchSummary]] = deque()
    index = 0
    try:
        while not stop.is_set() and (batch := await batches.next()) is not None:
            tally.rows += len(batch)
            skipped = [row for row in batch if row.skip_reason]
            if skipped:
                run.note(_skipped(skipped, datetime.now(UTC)))
                tally.counts["skipped"] += len(skipped)
            eligible = [dict(row.values, openid=row.openid) for row in batch if not row.skip_reason]
            if eligible:
                # quote(): Prefect would otherwise walk every row looking for futures.
                sending = send_batch(run, index, params.app, quote(eligible))
                in_flight.append(asyncio.ensure_future(sending))
            index += 1
            while len(in_flight) >= PARALLEL_BATCHES:
                await _collect(in_flight[0], tally, stop, params, progress)
                in_flight.popleft()  # only once collected: a batch being waited for is drained
        while in_flight:
            await _collect(in_flight[0], tally, stop, params, progress)
            in_flight.popleft()
    except BaseException as exc:
        # Whatever ended the loop (an error, a cancel): stop the other batches and let them
        # record the answers they already have before the campaign's status is written.
        stop.set(*stop_for_error(exc, run.campaign_id))
        await _drain(in_flight, DRAIN_GRACE_SECONDS + params.request_timeout_seconds)
        raise


async def _drain(in_flight: deque[asyncio.Task[BatchSummary]], seconds: float) -> None:
    """Give stopped batches up to `seconds` to finish their sends in flight; then cancel
    them. Their answers are in the run's buffer, written when the run closes."""
    if not in_flight:
        return
    _, late = await asyncio.wait(in_flight, timeout=seconds)
    for batch in late:
        batch.cancel()
    await asyncio.gather(*in_flight, return_exceptions=True)


# -- stage 4: the outcome -------------------------------------------------------------------


def decide_status(counts: dict[str, int], stop: StopSignal) -> tuple[CampaignStatus, str | None]:
    """The one place that turns what happened into the campaign's final status."""
    if stop.is_set():
        kind = stop.kind
        if kind == "cancel":
            return CampaignStatus.CANCELLED, stop.reason
        if kind == "pause":
            return CampaignStatus.PAUSED, stop.reason
        return CampaignStatus.FAILED, stop.reason
    if counts.get(DeliveryStatus.PENDING, 0):
        return CampaignStatus.PAUSED, "some recipients are still pending; resume to finish"
    if unknown := counts.get(DeliveryStatus.UNKNOWN, 0):
        return CampaignStatus.COMPLETED_WITH_FAILURES, (
            f"{unknown} recipients are in doubt (unknown: a message went out, its answer was "
            "lost) and were not sent again; `wxpush report` lists them, and `wxpush campaign "
            "resume --resend-unknown` sends them again"
        )
    if counts.get(DeliveryStatus.FAILED, 0):
        return CampaignStatus.COMPLETED_WITH_FAILURES, None
    return CampaignStatus.COMPLETED, None


def _close(
    campaign_id: str,
    stop: StopSignal,
    movable: Collection[CampaignStatus] = (CampaignStatus.RUNNING,),
    owner: str | None = None,
) -> tuple[CampaignStatus, str | None, LedgerFigures]:
    """Write the campaign's final status, decided from the ledger's counts and the stop,
    if the row is still in one of the `movable` statuses (and, given an `owner`, still that
    flow run's); returns (status, reason, the ledger's figures for the report)."""
    with engine().connect() as conn:
        # Read together, so the receipts add up to the sent count shown.
        figures = ledger_figures(conn, campaign_id)
    counts = figures.counts
    status, reason = decide_status(counts, stop)
    audience = sum(counts.values())
    stored = {
        **{k: v for k, v in counts.items() if k in campaign_rows.COUNT_KEYS},
        "audience": audience,
        "eligible": audience - counts.get("skipped", 0),
    }
    with engine().begin() as conn:
        record = campaign_rows.get_campaign(conn, campaign_id)
        if record is not None and (
            record.status not in movable or (owner is not None and record.flow_run_id != owner)
        ):
            # Closed already: a cancel from the UI, recorded by the worker's hook, wins. Or a
            # resume took it over once this run let go of it: a late hook leaves it alone.
            return record.status, record.status_reason, figures
        campaign_rows.set_status(conn, campaign_id, status, reason, counts=stored)
    return status, reason, figures


def _tell(
    params: CampaignParams,
    app_id: str | None,
    campaign_id: str,
    ended: tuple[CampaignStatus, str | None, dict[str, int]],
    stop: StopSignal,
    *,
    crashed: bool = False,
    resumes_at: datetime | None = None,
) -> None:
    """Emit the event for where the campaign ended (tasks/events.py): the alert automations
    tell the operators when it paused, failed, crashed or failed too often. Never for a dry
    run, and never raises."""
    if params.dry_run:
        return
    status, reason, counts = ended
    facts = CampaignFacts(
        campaign_id=campaign_id,
        name=params.name,
        app=params.app,
        app_id=app_id,
        status=str(status),
        reason=reason,
        counts=counts,
        cause=None if stop.stop is None or stop.stop.cause is None else str(stop.stop.cause),
        resumes_at=resumes_at,
    )
    alert = (
        campaign_crashed(facts)
        if crashed
        else campaign_ended(facts, failure_alert_share=params.alert_failure_share)
    )
    alert.emit()


def _stopped(
    params: CampaignParams,
    campaign_id: str | None,
    stop: StopSignal,
    app: WeChatApp | None = None,
) -> State[Any]:
    """End a run an expected stop cut short (preflight refused it, the audience SQL or
    WeChat failed, …): close the campaign row (None: the run stopped before it had one), log
    the reason in one line, publish the "why it stopped" artifact, and return a Failed state
    whose message is the reason, so the run page says what to fix and no traceback is
    logged."""
    log = get_run_logger()
    counts: dict[str, int] = {}
    if params.dry_run or campaign_id is None:
        status, reason = decide_status({}, stop)
    else:
        try:
            status, reason, figures = _close(campaign_id, stop)
            counts = figures.counts
        except Exception as unrecorded:  # the on_failure hook tries again
            log.error(
                "Could not record how campaign %r ended (%s).",
                params.name,
                type(unrecorded).__name__,
            )
            status, reason = decide_status({}, stop)
    reason = " ".join((reason or "the run stopped").split())  # the state message: one line
    log.error("Campaign %r %s: %s", params.name, status, reason)
    if campaign_id is not None:
        _tell(params, app and app.app_id, campaign_id, (status, reason, counts), stop)
    publish_stop(
        campaign_id or params.campaign_id or params.name,
        name=params.name,
        campaign_id=params.campaign_id if params.dry_run or not campaign_id else campaign_id,
        status=status,
        reason=reason,
        counts=counts,
    )
    return Failed(message=reason if status == CampaignStatus.FAILED else f"{status}: {reason}")


#: What a cancel may still close: a running row, or the pause the body wrote on its SIGTERM.
_CANCELLABLE = (CampaignStatus.RUNNING, CampaignStatus.PAUSED)


def _end_abnormally(kind: StopKind, reason: str) -> Callable[..., None]:
    """A flow hook that closes the campaign row when the flow body could not: a cancel from
    the UI (which wins over the pause the body wrote when its process got SIGTERM), a crash,
    a failure the body could not record. The ledger already holds every answer."""

    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        with engine().connect() as conn:
            record = campaign_rows.find_by_flow_run(conn, str(flow_run.id))
        if record is None:
            return
        stop = StopSignal()
        stop.set(kind, reason.format(campaign_id=record.id))
        movable = _CANCELLABLE if kind == "cancel" else (CampaignStatus.RUNNING,)
        status, said, figures = _close(record.id, stop, movable, owner=str(flow_run.id))
        if kind != "cancel" and record.status in movable:
            # The body could not record the end (its process died, a bug ended it): tell.
            facts = CampaignFacts(
                record.id,
                record.name,
                record.app,
                record.app_id,
                str(status),
                said,
                figures.counts,
            )
            (campaign_crashed(facts) if kind == "pause" else campaign_ended(facts)).emit()

    return hook


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interruption(signum: int) -> BaseException:
    """What a signal would have raised, raised once the run has recorded where it stopped."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return TerminationSignal(signal=signum)


@contextlib.contextmanager
def _pause_on_signals(stop: StopSignal, campaign_id: str) -> Iterator[list[int]]:
    """While the campaign sends, SIGINT and SIGTERM pause it: no new send starts, the sends
    in flight finish and are recorded. Yields the signals received; the body re-raises the
    first once the campaign row says where it stopped. A second signal cancels the run's
    batches at once. Only in the main thread (elsewhere Python delivers no signal)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    loop = asyncio.get_running_loop()
    body = asyncio.current_task()
    log = get_run_logger()

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) > 1:
            if body is not None:
                body.cancel()
            return
        stop.set(*stop_for_error(_interruption(signum), campaign_id), cause=StopCause.SIGNAL)
        log.warning("Stopping: no new message starts; the ones in flight finish and are recorded.")

    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)


@flow(
    name="push-campaign",
    flow_run_name="campaign-{params.name}",
    log_prints=False,
    on_cancellation=[_end_abnormally("cancel", CANCELLED_REASON)],
    on_crashed=[
        _end_abnormally(
            "pause", "the run crashed; `wxpush campaign resume {campaign_id}` sends the rest"
        )
    ],
    on_failure=[
        _end_abnormally(
            "stop",
            "the run failed; its logs say why. Fix the cause, then "
            "`wxpush campaign resume {campaign_id}`",
        )
    ],
)
async def push_campaign(params: CampaignForm) -> CampaignResult | State[Any]:
    """Send one campaign: every eligible recipient at most once, every row in the ledger.

    Returns a state holding the CampaignResult: Completed (its message says why when the
    campaign paused) or Failed when the campaign failed; a Failed state whose message says
    what to fix when an expected stop (preflight, the audience SQL, the database) cut the
    run short. Ctrl-C or SIGTERM pause the campaign, then end the run as the signal would.
    """
    started = time.monotonic()
    try:
        app = await load_app(params.app)
    except AppNotConfigured as exc:  # a name typed in the form: said before any campaign row
        refused = StopSignal()
        refused.set("stop", f"{str(exc).rstrip('.')}, {RUN_AGAIN}.")
        return _stopped(params, None, refused)
    sql = params.audience_sql or DEFAULT_AUDIENCE_SQL
    binds = {**params.audience_params, "app_id": app.app_id}
    if params.dry_run:
        campaign_id = params.campaign_id or f"dry-run-{uuid.uuid4().hex[:12]}"
        return await _run_campaign(params, app, campaign_id, sql, binds, started)
    if (refusal := sharding_refusal(params.shards)) is not None:
        refused = StopSignal()
        refused.set("stop", refusal)
        return _stopped(params, None, refused)
    # One run per campaign (db/run_lock.py): held before the row is touched, until the run
    # ends however it ends; the database or the kernel drops it if this process dies.
    campaign_id = params.campaign_id or campaign_rows.new_campaign_id()
    with contextlib.ExitStack() as holding:
        try:
            holding.enter_context(hold_campaign(engine(), campaign_id))
        except CampaignBusy as busy:  # a second run of it: refused before it sends anything
            refused = StopSignal()
            refused.set("stop", str(busy))
            return _stopped(params, None, refused)
        opened = start_campaign(params, campaign_id, app.app_id)
        if isinstance(opened, Stop):  # its ledger pruned, …
            refused = StopSignal()
            refused.set(opened.kind, opened.reason)
            return _stopped(params, None, refused)
        return await _run_campaign(params, app, opened, sql, binds, started)


async def _run_campaign(
    params: CampaignForm,
    app: WeChatApp,
    campaign_id: str,
    sql: str,
    binds: dict[str, Any],
    started: float,
) -> CampaignResult | State[Any]:
    """The campaign's run once its row is open: preflight, send, close, report."""
    log = get_run_logger()
    stop = StopSignal()
    with _pause_on_signals(stop, campaign_id) as received:
        try:
            refused = await preflight(params, campaign_id, sql, binds)
            if refused is not None:
                stop.set(refused.kind, refused.reason)
                return _stopped(params, campaign_id, stop, app)
            progress = await Progress.start(
                campaign_id,
                params.name,
                total=count_audience(
                    audience_engine(), sql, binds, timeout_seconds=params.audience_timeout_seconds
                ),
            )
            if not params.dry_run:
                with engine().connect() as conn:
                    progress.done_before = sum(
                        n
                        for status, n in status_counts(conn, campaign_id).items()
                        if status != "pending"
                    )
            if params.shards > 1 and not params.dry_run:
                tally = await _sharded(params, campaign_id, stop, progress)
            else:
                tally = await _send_all(params, app, campaign_id, sql, binds, stop, progress)
            if received == [signal.SIGTERM] and await _cancel_requested():
                stop.set("cancel", CANCELLED_REASON)
        except BaseException as caught:
            # A second signal cancelled the batches: still the signal's ending.
            exc = _interruption(received[0]) if received else caught
            if expected(exc):
                stop.set(*stop_for_error(exc, campaign_id))
                log.debug("The stop's traceback:", exc_info=exc)  # the reason says what to do
                return _stopped(params, campaign_id, stop, app)
            if params.dry_run:
                raise
            stop.set(*stop_for_error(exc, campaign_id))
            try:
                status, reason, _ = _close(campaign_id, stop)
            except Exception as unrecorded:  # the on_failure / on_crashed hook tries again
                log.error(
                    "Could not record how campaign %r ended (%s).",
                    params.name,
                    type(unrecorded).__name__,
                )
            else:
                log.error("Campaign %r %s: %s", params.name, status, reason)
                ended = (status, reason, {})
                # A bug is a failed campaign; a BaseException (not a signal) a crashed run.
                crashed = not received and not isinstance(exc, Exception)
                _tell(params, app.app_id, campaign_id, ended, stop, crashed=crashed)
            # A bug keeps its traceback (Prefect logs it); a signal ends the run as it
            # would have, and a cancel from the UI turns the pause into `cancelled` (hook).
            if received:
                raise exc from None
            raise
    resumes_at = None
    if stop.kind == "pause" and not params.dry_run:
        stop, resumes_at = await _resume_later(app, campaign_id, stop)
    result = await _finish(params, app, campaign_id, stop, tally, progress, started, resumes_at)
    if stop.kind == "cancel":
        return Cancelled(message=CANCELLED_REASON, data=result)
    if received:
        raise _interruption(received[0])
    return _run_state(result)


async def _resume_later(
    app: WeChatApp, campaign_id: str, stop: StopSignal
) -> tuple[StopSignal, datetime | None]:
    """A pause the clock ends (the daily quota, the quiet hours): schedule the run that
    resumes the campaign then (tasks/resume.py); the stop returned says when in its reason,
    and the time is returned when a run was scheduled (None: the operator resumes)."""
    paused = stop.stop
    now = datetime.fromtimestamp(quiet_hours.wall_clock(), UTC)
    at = None if paused is None else resume_at(paused, now, app.quiet_window())
    if paused is None or at is None:
        return stop, None
    with engine().connect() as conn:
        record = campaign_rows.get_campaign(conn, campaign_id)
    if record is None:
        return stop, None
    try:
        resume = resume_params(record, retry_failed=False)
    except ValueError as exc:  # parameters stored by an older version: the operator resumes
        get_run_logger().warning("No resume scheduled for %s: %s", campaign_id, exc)
        return stop, None
    scheduled = await schedule_resume(resume, at)
    get_run_logger().info("Campaign %s paused. %s.", campaign_id, scheduled.sentence())
    told = StopSignal()
    told.set(
        paused.kind,
        f"{paused.reason.rstrip('. ')}. {scheduled.sentence()}",
        errcode=paused.errcode,
        error_class=paused.error_class,
        openid=paused.openid,
        cause=paused.cause,
    )
    return told, (scheduled.at if scheduled.flow_run_id is not None else None)


async def _sharded(
    params: CampaignParams, campaign_id: str, stop: StopSignal, progress: Progress
) -> _Tally:
    """Send as `params.shards` push-campaign-shard runs on any workers (tasks/shards.py)."""
    done = await run_shards(campaign_id, params.shards, stop, progress)
    tally = _Tally()
    tally.counts["sent"] = done.sent
    tally.errcodes.update(done.errcodes)
    tally.http_attempts = done.http_attempts
    return tally


async def _cancel_requested() -> bool:
    """Whether the SIGTERM that stopped the run was Prefect cancelling it (the UI's Cancel,
    `wxpush campaign cancel`): the run's state is then Cancelling. The run then ends
    Cancelled itself: its SIGTERM handler is this flow's, so Prefect's own cannot say so."""
    run_id = current_flow_run.id
    if not run_id:
        return False
    try:
        async with get_client() as client:
            run = await client.read_flow_run(UUID(run_id))
    except Exception:  # the server is unreachable: a signal like any other
        return False
    return run.state is not None and run.state.type in (StateType.CANCELLING, StateType.CANCELLED)


async def _finish(
    params: CampaignParams,
    app: WeChatApp,
    campaign_id: str,
    stop: StopSignal,
    tally: _Tally,
    progress: Progress,
    started: float,
    resumes_at: datetime | None = None,
) -> CampaignResult:
    """Close the campaign row from the ledger, publish the report, log the one-line end."""
    log = get_run_logger()
    seconds = time.monotonic() - started
    figures: LedgerFigures | None = None  # a dry run records nothing, so has none
    if params.dry_run:
        counts = dict(tally.counts)
        status, reason = CampaignStatus.COMPLETED, "dry run: nothing was sent"
    else:
        status, reason, figures = _close(campaign_id, stop)
        counts = figures.counts
        ended = (status, reason, counts)
        _tell(params, app.app_id, campaign_id, ended, stop, resumes_at=resumes_at)
    sent_now = tally.counts.get("sent", 0)
    result = CampaignResult(
        campaign_id=campaign_id,
        name=params.name,
        status=status,
        reason=reason,
        counts=counts,
        sent_this_run=sent_now,
        http_attempts=tally.http_attempts,
        seconds=round(seconds, 2),
        messages_per_second=round(sent_now / seconds, 1) if seconds else 0.0,
        dry_run=params.dry_run,
        plan=tally.plan,
    )
    await progress.finish()
    publish_report(
        CampaignReport.build(
            campaign_id=campaign_id,
            name=params.name,
            status=status,
            reason=reason,
            counts=counts,
            errcodes=tally.errcodes,
            seconds=seconds,
            sent_this_run=sent_now,
            http_attempts=tally.http_attempts,
            dry_run=params.dry_run,
            figures=figures,
            plan=tally.plan,
            quota=None if params.dry_run else await _quota_for_report(params),
        )
    )
    log.info(
        "Campaign %r %s: %s (%d sent this run, %.1f msg/s).",
        params.name,
        status,
        ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
        sent_now,
        result.messages_per_second,
    )
    return result


async def _quota_for_report(params: CampaignParams) -> QuotaToday | None:
    """The account's quota used and left today, for the report (template messages only);
    None when it cannot be read: the report goes out without it."""
    if params.kind != "template":
        return None
    try:
        return quota_today(await load_app(params.app))
    except Exception as exc:
        get_run_logger().warning("The report leaves out the daily quota: %s", type(exc).__name__)
        return None


def _run_state(result: CampaignResult) -> State[Any]:
    """The run's final state says where the campaign ended: Failed when WeChat stopped it
    (an unknown template, a revoked token…), Completed with the reason when it paused,
    so the run list and any automation see it without opening the report."""
    reason = " ".join((result.reason or "").split())  # the state message: one line
    if result.status == CampaignStatus.FAILED:
        return Failed(message=reason or "the campaign failed; its report says why", data=result)
    if result.status == CampaignStatus.PAUSED:
        return Completed(message=f"paused: {reason}", data=result)
    return Completed(data=result)
