"""`push_campaign_shard`: one part of a campaign split across workers (`shards` > 1).

Its `push-campaign` run starts one per shard (tasks/shards.py) and any worker of the pool
runs it. Its parameters are the campaign's ID and which shard, no message and no secret:
the campaign's stored parameters say what to send, so every shard sends the same thing.
It sends the audience rows whose md5(openid) falls in its shard (db/audience.py) through
the same batches, engine and ledger as an unsharded run, and writes a heartbeat and its
ending to its `campaign_shards` row (db/shards.py). Only the run its parent assigned may
send a shard; a run the parent declared crashed finds its heartbeat refused and stops.
The campaign row and its report stay the parent's.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel

from db import campaigns as campaign_rows
from db import shards as shard_rows
from db.audience import DEFAULT_AUDIENCE_SQL, Shard, count_audience
from db.outcomes import CampaignStatus
from flows.campaign import (
    _cancel_requested,
    _interruption,
    _pause_on_signals,
    _send_all,
    _Tally,
)
from sending.sender import StopSignal
from tasks.database import audience_engine, engine
from tasks.ending import expected, stop_for_error
from tasks.flow_runs import CANCELLED_REASON
from tasks.params import CampaignParams
from tasks.report import Progress
from tasks.shards import HEARTBEAT_SECONDS
from tasks.token import AppNotConfigured, load_app

#: How a shard's run ended, by its stop's kind (no stop: it went through its rows).
_ENDING = {None: "completed", "pause": "paused", "stop": "failed", "cancel": "cancelled"}


class ShardResult(BaseModel):
    """What one shard's run did (the campaign's counts are its parent's report)."""

    campaign_id: str
    shard: int
    shards: int
    status: str
    reason: str | None = None
    counts: dict[str, int]
    http_attempts: int
    worker: str


def share(params: CampaignParams, shards: int) -> CampaignParams:
    """The campaign's knobs for one of `shards` runs: its rate and concurrency are the
    whole campaign's, so each shard takes its part of them."""
    rate = params.rate_per_second
    return params.model_copy(
        update={
            "rate_per_second": None if rate is None else rate / shards,
            "concurrency": max(1, math.ceil(params.concurrency / shards)),
        }
    )


def _end_hook(status: str, reason: str) -> Any:
    """On a crash or failure the body could not record: the row says so, so the parent
    runs the shard again (crashed) or fails the campaign (failed) at once."""

    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        campaign_id = flow_run.parameters.get("campaign_id")
        shard = flow_run.parameters.get("shard")
        if campaign_id is None or shard is None:
            return
        with engine().begin() as conn:
            if status == "crashed":
                shard_rows.mark_crashed(conn, campaign_id, shard, str(flow_run.id), reason)
            else:
                shard_rows.finish(conn, campaign_id, shard, str(flow_run.id), status, reason)

    return hook


async def _heartbeat(campaign_id: str, shard: int, run_id: str, stop: StopSignal) -> None:
    """Beat every HEARTBEAT_SECONDS; stop sending once the shard is no longer this run's."""
    log = get_run_logger()

    def beat() -> bool:
        with engine().begin() as conn:
            return shard_rows.beat(conn, campaign_id, shard, run_id)

    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        try:
            owned = await asyncio.to_thread(beat)
        except Exception as exc:  # the database restarting: the next beat may pass
            log.warning("Shard heartbeat not written (%s).", type(exc).__name__)
            continue
        if not owned:
            stop.pause(
                None,
                "this shard was declared crashed and given to another run; it stopped sending",
            )
            return


def _finish(campaign_id: str, shard: int, run_id: str, stop: StopSignal, tally: _Tally) -> str:
    status = _ENDING[stop.kind]
    with engine().begin() as conn:
        shard_rows.finish(
            conn,
            campaign_id,
            shard,
            run_id,
            status,
            stop.reason,
            sent=tally.counts.get("sent", 0),
            http_attempts=tally.http_attempts,
            errcodes=dict(tally.errcodes),
        )
    return status


@flow(
    name="push-campaign-shard",
    flow_run_name="campaign-{campaign_id}-shard-{shard}",
    log_prints=False,
    on_crashed=[_end_hook("crashed", "the shard's run crashed")],
    on_failure=[_end_hook("failed", "the shard's run failed; its logs say why")],
)
async def push_campaign_shard(campaign_id: str, shard: int, shards: int) -> State[Any]:
    """Send shard `shard` (0-based) of `shards` of a running campaign, every recipient of
    it at most once; started by the campaign's push-campaign run, not by hand."""
    log = get_run_logger()
    part = Shard(shard, shards)
    run_id = str(current_flow_run.id)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with engine().connect() as conn:
        record = campaign_rows.get_campaign(conn, campaign_id)
    if record is None or record.status != CampaignStatus.RUNNING:
        said = "does not exist" if record is None else f"is {record.status}"
        return Failed(message=f"campaign {campaign_id} {said}; its push-campaign run starts shards")
    try:
        with engine().begin() as conn:
            shard_rows.claim(conn, campaign_id, shard, run_id, worker)
    except shard_rows.ShardTaken as exc:
        log.error("%s", exc)
        return Failed(message=str(exc))
    log.info("Shard %d of %d of campaign %s, on %s.", shard + 1, shards, campaign_id, worker)
    params = share(CampaignParams.model_validate(record.parameters), shards)
    stop = StopSignal()
    tally = _Tally()
    heart = asyncio.create_task(_heartbeat(campaign_id, shard, run_id, stop))
    with _pause_on_signals(stop, campaign_id) as received:
        try:
            app = await load_app(params.app)
            sql = params.audience_sql or DEFAULT_AUDIENCE_SQL
            binds = {**params.audience_params, "app_id": app.app_id}
            total = await asyncio.to_thread(
                count_audience,
                audience_engine(),
                sql,
                binds,
                timeout_seconds=params.audience_timeout_seconds,
                shard=part,
            )
            progress = await Progress.start(
                f"{campaign_id}-shard-{shard + 1}", f"{params.name}, shard {shard + 1}", total
            )
            tally = await _send_all(
                params, app, campaign_id, sql, binds, stop, progress, shard=part
            )
            await progress.finish()
            if received == [signal.SIGTERM] and await _cancel_requested():
                stop.set("cancel", CANCELLED_REASON)
        except BaseException as caught:
            exc = _interruption(received[0]) if received else caught
            stop.set(*stop_for_error(exc, campaign_id))
            status = _finish(campaign_id, shard, run_id, stop, tally)
            log.error("Shard %d %s: %s", shard + 1, status, stop.reason)
            if isinstance(exc, AppNotConfigured) or expected(exc):
                return Failed(message=stop.reason)
            if received:
                raise exc from None  # the signal's ending, once the row says where it stopped
            raise
        finally:
            heart.cancel()
    status = _finish(campaign_id, shard, run_id, stop, tally)
    result = ShardResult(
        campaign_id=campaign_id,
        shard=shard,
        shards=shards,
        status=status,
        reason=stop.reason,
        counts=dict(tally.counts),
        http_attempts=tally.http_attempts,
        worker=worker,
    )
    log.info(
        "Shard %d of %d %s: %s.",
        shard + 1,
        shards,
        status,
        ", ".join(f"{v} {k}" for k, v in sorted(tally.counts.items())) or "nothing to send",
    )
    if stop.kind == "cancel":
        return Cancelled(message=CANCELLED_REASON, data=result)
    if received:
        raise _interruption(received[0])
    if stop.kind == "stop":
        return Failed(message=stop.reason or "the shard failed", data=result)
    return Completed(message=f"{status}: {stop.reason}" if stop.reason else None, data=result)
