"""`send_batch`: one Prefect task per batch of recipients (docs/architecture.md, decision 1).

Its rows come from the audience stream, which already left out the rows final when it
opened (db.audience.final_snapshot) and yields each openid once, so a first attempt reads
nothing from the ledger; a Prefect retry of the task re-reads it, by (campaign_id, openid),
and drops the rows its earlier attempt recorded, so it never sends them twice. It sends
through the send engine, then writes every outcome in one upsert, after the answers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import task_run as current_task_run
from pydantic import BaseModel, Field

from db.callbacks import match_pending_receipts
from db.ledger import final_openids, record_outcomes
from db.outcomes import DeliveryOutcome
from sending.message import MessageSpec
from sending.ratelimit import shared_limiter
from sending.sender import RetryPolicy, TokenSource, send_rows, stop_signal
from tasks.database import engine
from tasks.token import get_access_token, refresh_if_current
from wechat.client import WeChatClient
from wechat.errors import AccountKind, RetryableError

#: How often the ledger write is tried before the task fails (outcomes stay in memory).
LEDGER_ATTEMPTS = 4


class SendSettings(BaseModel):
    """The knobs of one campaign's send path, passed to every batch."""

    api_base_url: str = Field(description="The app's WeChat API base (no secret).")
    kind: AccountKind = "official_account"
    concurrency: int = Field(ge=1)
    rate_per_second: float | None = None
    timeout_seconds: float = Field(10.0, gt=0)
    retry_failed: bool = False
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


class BatchSummary(BaseModel):
    """What a batch did; small, secret-free, shown in the task's result."""

    index: int
    rows: int
    already_final: int
    counts: dict[str, int]
    errcodes: dict[str, int]
    attempts: int
    seconds: float
    stop_kind: str | None = None
    stop_reason: str | None = None


async def _infrastructure_failure(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry the batch only for failures around the sends (DB, Prefect, network)."""
    exc = await state.aresult(raise_on_failure=False)
    return isinstance(exc, RetryableError | OSError | ConnectionError) or (
        type(exc).__module__.startswith("sqlalchemy")
    )


def _write_ledger(campaign_id: str, outcomes: Sequence[DeliveryOutcome]) -> None:
    """One upsert for the batch; a short retry covers a locked or restarting database."""
    delay = 0.5
    for attempt in range(1, LEDGER_ATTEMPTS + 1):
        try:
            with engine().begin() as conn:
                record_outcomes(conn, campaign_id, outcomes)
                # WeChat's receipt can beat this write (the batch is recorded after its
                # last answer); the receiver kept those, unmatched, for this moment.
                match_pending_receipts(conn, [o.msgid for o in outcomes if o.msgid])
            return
        except Exception:
            if attempt == LEDGER_ATTEMPTS:
                raise
            time.sleep(delay)
            delay *= 2


@task(
    name="send-batch",
    task_run_name="send-batch-{index}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_infrastructure_failure,
)
async def send_batch(
    campaign_id: str,
    index: int,
    app: str,
    spec: MessageSpec,
    rows: list[dict[str, Any]],
    settings: SendSettings,
) -> BatchSummary:
    """Send one batch of eligible audience rows and record every answer in the ledger."""
    started = time.monotonic()
    stop = stop_signal(campaign_id)
    done: set[str] = set()
    if current_task_run.run_count > 1:  # a retry: the first attempt may have recorded some
        with engine().connect() as conn:
            done = final_openids(
                conn,
                campaign_id,
                [row["openid"] for row in rows],
                retry_failed=settings.retry_failed,
            )
    todo = [row for row in rows if row["openid"] not in done]
    counts: dict[str, int] = {}
    errcodes: dict[str, int] = {}
    attempts = 0
    if todo and not stop.is_set():
        token = TokenSource(
            await get_access_token(app), refresh=lambda failed: refresh_if_current(app, failed)
        )
        answered: list[DeliveryOutcome] = []
        try:
            async with WeChatClient(
                settings.api_base_url,
                kind=settings.kind,
                max_connections=settings.concurrency,
                timeout=settings.timeout_seconds,
            ) as client:
                result = await send_rows(
                    todo,
                    spec=spec,
                    campaign_id=campaign_id,
                    client=client,
                    token=token,
                    limiter=shared_limiter(campaign_id, settings.rate_per_second),
                    concurrency=settings.concurrency,
                    retry=settings.retry,
                    stop=stop,
                    outcomes=answered,
                )
        except BaseException:
            # Cancelled or crashed mid-batch: keep every answer already received.
            if answered:
                _write_ledger(campaign_id, answered)
            raise
        _write_ledger(campaign_id, result.outcomes)
        counts = {str(k): v for k, v in result.counts.items()}
        errcodes = {str(k): v for k, v in result.errcodes.items()}
        attempts = sum(o.attempts for o in result.outcomes)
    summary = BatchSummary(
        index=index,
        rows=len(rows),
        already_final=len(done),
        counts=counts,
        errcodes=errcodes,
        attempts=attempts,
        seconds=round(time.monotonic() - started, 3),
        stop_kind=stop.kind if stop.is_set() else None,
        stop_reason=stop.reason if stop.is_set() else None,
    )
    get_run_logger().info(
        "Batch %d: %d rows, %d already final, %s in %.2f s.",
        index,
        len(rows),
        len(done),
        ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing sent",
        summary.seconds,
    )
    return summary
