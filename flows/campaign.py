"""`push_campaign`: SQL audience → window → batched sends with retries → ledger → report.

Reads top to bottom like the process it runs: start (or resume) the campaign row, preflight
(audience read-only with a timeout, template columns, field rules on sample rows, the
token), stream the audience in batches — skipped rows recorded at once, eligible rows sent
by `send_batch` tasks, two at a time — then decide the final status in one place and
publish the report.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel

from db import campaigns as campaign_rows
from db.audience import (
    DEFAULT_AUDIENCE_SQL,
    AudienceQueryError,
    count_audience,
    has_nothing_to_send,
    preview_audience,
    stream_audience,
)
from db.ledger import (
    LedgerFigures,
    ledger_figures,
    record_outcomes,
    reopen_unknown,
    settle_unanswered,
    status_counts,
)
from db.outcomes import CampaignStatus, DeliveryOutcome, DeliveryStatus
from sending.message import MessageSpec, client_msg_id_for, invalid_reason, render
from sending.plan import DryRunPlan
from sending.sender import RetryPolicy, Stop, StopKind, StopSignal, stop_signal
from tasks.batch import BatchSummary, SendSettings, send_batch
from tasks.blocks import WeChatApp
from tasks.database import audience_engine, engine
from tasks.ending import CampaignFailed, expected, stop_for_error
from tasks.flow_runs import CANCELLED_REASON
from tasks.params import CampaignForm, CampaignParams
from tasks.reference import sync_errcodes_table
from tasks.report import CampaignReport, Progress, publish_report, publish_stop
from tasks.token import AppNotConfigured, get_access_token, load_app, verify_token

#: Batches in flight at once: one sends while the next is being prepared or recorded.
PARALLEL_BATCHES = 2
#: Failure-ratio pauses need this many attempted messages before they can trigger.
ERROR_RATIO_MIN_ATTEMPTS = 200
PREFLIGHT_SAMPLE = 20
#: How often the flow's thread wakes while it waits for a batch: a signal delivered to another
#: thread is only handled when the main thread runs, and a batch at a slow rate takes minutes.
WAIT_SLICE_SECONDS = 0.25
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
def start_campaign(params: CampaignParams) -> str:
    """Create the campaign row, or resume the one named by `campaign_id`."""
    # The errcode meanings the analyst views join to follow this version's table.
    sync_errcodes_table(engine())
    with engine().begin() as conn:
        record = campaign_rows.create_or_resume(
            conn,
            campaign_id=params.campaign_id,
            name=params.name,
            app=params.app,
            kind=params.kind,
            template_id=params.template_id,
            parameters=params.model_dump(mode="json"),
            audience_sql=params.audience_sql or DEFAULT_AUDIENCE_SQL,
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
    log.info(
        "Preflight passed: audience columns %s; %d of %d preview rows render cleanly%s.",
        ", ".join(preview.columns),
        clean,
        len(rows),
        "" if params.dry_run else "; the token works",
    )


# -- stage 3: stream, send, record ------------------------------------------------------------


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


def _collect(
    future: PrefectFuture[BatchSummary],
    tally: _Tally,
    stop: StopSignal,
    params: CampaignParams,
    progress: Progress,
) -> None:
    _finished(future, None)
    summary = future.result()
    tally.add(summary)
    progress.update(tally.rows, tally.counts)
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
        )


def _dry_run(
    spec: MessageSpec, campaign_id: str, batch: list[Any], tally: _Tally, plan: DryRunPlan
) -> None:
    for row in batch:
        tally.counts[plan.add(spec, campaign_id, row.values, row.skip_reason)] += 1


def _send_all(
    params: CampaignParams,
    app: WeChatApp,
    campaign_id: str,
    sql: str,
    binds: dict[str, Any],
    stop: StopSignal,
    progress: Progress,
) -> _Tally:
    spec = message_spec(params)
    settings = SendSettings(
        api_base_url=app.api_base_url,
        kind=app.kind,
        concurrency=params.concurrency,
        rate_per_second=params.rate_per_second,
        timeout_seconds=params.request_timeout_seconds,
        retry_failed=params.retry_failed,
        retry=RetryPolicy(max_attempts=params.max_attempts),
    )
    tally = _Tally(
        DryRunPlan(name=params.name, campaign_id=params.campaign_id) if params.dry_run else None
    )
    in_flight: deque[PrefectFuture[BatchSummary]] = deque()
    batches = stream_audience(
        audience_engine(),
        sql,
        binds,
        ledger=engine(),
        campaign_id=campaign_id,
        window_hours=params.window_hours,
        now=datetime.now(UTC),
        batch_size=params.batch_size,
        retry_failed=params.retry_failed,
        timeout_seconds=params.audience_timeout_seconds,
    )
    try:
        for index, batch in enumerate(batches):
            if stop.is_set():
                break
            tally.rows += len(batch)
            if tally.plan is not None:
                _dry_run(spec, campaign_id, batch, tally, tally.plan)
                progress.update(tally.rows, tally.counts)
                continue
            skipped = [row for row in batch if row.skip_reason]
            if skipped:
                with engine().begin() as conn:
                    record_outcomes(conn, campaign_id, _skipped(skipped, datetime.now(UTC)))
                tally.counts["skipped"] += len(skipped)
            eligible = [dict(row.values, openid=row.openid) for row in batch if not row.skip_reason]
            if eligible:
                in_flight.append(
                    # quote(): Prefect would otherwise walk every row looking for futures.
                    send_batch.submit(
                        campaign_id, index, params.app, spec, quote(eligible), settings
                    )
                )
            while len(in_flight) >= PARALLEL_BATCHES:
                _collect(in_flight[0], tally, stop, params, progress)
                in_flight.popleft()  # only once collected: a batch being waited for is drained
        while in_flight:
            _collect(in_flight[0], tally, stop, params, progress)
            in_flight.popleft()
    except BaseException as exc:
        # Whatever ended the loop (an error, Ctrl-C, SIGTERM): stop the other batches and let
        # them record the answers they already have before the campaign's status is written.
        stop.set(*stop_for_error(exc, campaign_id))
        _drain(in_flight, DRAIN_GRACE_SECONDS + params.request_timeout_seconds)
        raise
    return tally


def _finished(future: PrefectFuture[Any], seconds: float | None) -> bool:
    """Wait up to `seconds` (None = for ever) in short slices, so the flow's thread stays
    responsive to signals; True once the future is done."""
    deadline = None if seconds is None else time.monotonic() + seconds
    wrapped = getattr(future, "wrapped_future", None)
    while wrapped is not None and not wrapped.done():
        left = WAIT_SLICE_SECONDS if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return False
        future.wait(min(WAIT_SLICE_SECONDS, left))
    return True


def _drain(in_flight: deque[PrefectFuture[BatchSummary]], seconds: float) -> None:
    """Give stopped batches up to `seconds` to finish and write their answers to the ledger;
    their results are not needed (the ledger is read afterwards)."""
    deadline = time.monotonic() + seconds
    for future in in_flight:
        _finished(future, max(0.0, deadline - time.monotonic()))


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


def _close(campaign_id: str, stop: StopSignal) -> tuple[CampaignStatus, str | None, LedgerFigures]:
    """Write the campaign's final status, decided from the ledger's counts and the stop;
    returns (status, reason, the ledger's figures for the report)."""
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
        campaign_rows.set_status(conn, campaign_id, status, reason, counts=stored)
    return status, reason, figures


def _stopped(params: CampaignParams, campaign_id: str | None, stop: StopSignal) -> State[Any]:
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
    publish_stop(
        campaign_id or params.campaign_id or params.name,
        name=params.name,
        campaign_id=params.campaign_id if params.dry_run or not campaign_id else campaign_id,
        status=status,
        reason=reason,
        counts=counts,
    )
    return Failed(message=reason if status == CampaignStatus.FAILED else f"{status}: {reason}")


def _end_abnormally(kind: StopKind, reason: str) -> Callable[..., None]:
    """A flow hook that closes the campaign row when the flow body could not: a cancel from
    the UI (which wins over any other stop), a crash or a signal (the body set the stop
    before it re-raised), a failure the body could not record. `kind`/`reason` apply when
    no stop says more. The ledger already holds every answer."""

    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        with engine().connect() as conn:
            record = campaign_rows.find_by_flow_run(conn, str(flow_run.id))
        if record is None or record.status != CampaignStatus.RUNNING:
            return
        stop = stop_signal(record.id)
        if kind == "cancel" or not stop.is_set():
            stop.set(kind, reason.format(campaign_id=record.id))
        _close(record.id, stop)

    return hook


@flow(
    name="push-campaign",
    flow_run_name="campaign-{params.name}",
    task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_BATCHES),
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
def push_campaign(params: CampaignForm) -> CampaignResult | State[Any]:
    """Send one campaign: every eligible recipient at most once, every row in the ledger.

    Returns a state holding the CampaignResult: Completed (its message says why when the
    campaign paused) or Failed when the campaign failed; a Failed state whose message says
    what to fix when an expected stop (preflight, the audience SQL, the database) cut the
    run short.
    """
    log = get_run_logger()
    started = time.monotonic()
    try:
        app = run_coro_as_sync(load_app(params.app))
    except AppNotConfigured as exc:  # a name typed in the form: said before any campaign row
        refused = StopSignal()
        refused.set("stop", f"{str(exc).rstrip('.')}, {RUN_AGAIN}.")
        return _stopped(params, None, refused)
    sql = params.audience_sql or DEFAULT_AUDIENCE_SQL
    binds = {**params.audience_params, "app_id": app.app_id}
    if params.dry_run:
        campaign_id = params.campaign_id or f"dry-run-{uuid.uuid4().hex[:12]}"
    else:
        campaign_id = start_campaign(params)
    stop = stop_signal(campaign_id)
    stop.clear()
    try:
        checked = preflight.submit(params, campaign_id, sql, binds)
        _finished(checked, None)
        refused = checked.result()
        if refused is not None:
            stop.set(refused.kind, refused.reason)
            return _stopped(params, campaign_id, stop)
        progress = Progress.start(
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
        tally = _send_all(params, app, campaign_id, sql, binds, stop, progress)
    except BaseException as exc:
        if expected(exc):
            stop.set(*stop_for_error(exc, campaign_id))
            log.debug("The stop's traceback:", exc_info=exc)  # the reason says what to do
            return _stopped(params, campaign_id, stop)
        if params.dry_run:
            raise
        stop.set(*stop_for_error(exc, campaign_id))
        if isinstance(exc, Exception):
            try:
                status, reason, _ = _close(campaign_id, stop)
            except Exception as unrecorded:  # the on_failure hook tries again
                log.error(
                    "Could not record how campaign %r ended (%s).",
                    params.name,
                    type(unrecorded).__name__,
                )
            else:
                log.error("Campaign %r %s: %s", params.name, status, reason)
        # A bug keeps its traceback (Prefect logs it). A signal or cancellation: the
        # on_crashed / on_cancellation hook closes the row, since only Prefect knows
        # whether the SIGTERM was a cancel from the UI.
        raise
    seconds = time.monotonic() - started
    figures: LedgerFigures | None = None  # a dry run records nothing, so has none
    if params.dry_run:
        counts = dict(tally.counts)
        status, reason = CampaignStatus.COMPLETED, "dry run: nothing was sent"
    else:
        status, reason, figures = _close(campaign_id, stop)
        counts = figures.counts
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
    progress.finish()
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
    return _run_state(result)


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
