"""`daily_digest`: one day's per-recipient content, sent through the campaign machinery.

A digest is a campaign whose audience is the digest SQL bound to one day, and whose campaign
ID is derived from the digest's name and that day (`digest-<name>-<YYYY-MM-DD>`). So the same
ledger, retries, window rule and report apply, and a second run of the same day — a re-run, a
retry from the Prefect UI, a schedule that fired twice — resumes that day's campaign and sends
nothing twice. Recipients with nothing to report are recorded as skipped (`nothing_to_send`).
docs/digests.md says how to write a digest SQL and how to run one for a given day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, Failed, State

from db.digest import previous_day
from flows.campaign import CampaignResult, push_campaign
from tasks.params import DigestForm, DigestParams

#: The example digest of yesterday for the `default` app (what a bare run or schedule sends).
DEFAULT_DIGEST = DigestParams()


def digest_day(params: DigestParams) -> date:
    """The day this run reports: the one asked for, else the day before the run's scheduled
    start (not "now", so a retry of the same flow run, even after midnight, keeps its day)."""
    if params.day is not None:
        return params.day
    context = FlowRunContext.get()
    scheduled = context.flow_run.expected_start_time if context and context.flow_run else None
    return previous_day(params.timezone, scheduled or datetime.now(UTC))


def _run_name() -> str:
    context = FlowRunContext.get()
    params = context.parameters.get("params") if context else None
    if not isinstance(params, DigestParams):
        return "digest"
    return f"digest-{params.name}-{digest_day(params).isoformat()}"


@flow(name="daily-digest", flow_run_name=_run_name, log_prints=False)
async def daily_digest(params: DigestForm = DEFAULT_DIGEST) -> CampaignResult | State[Any]:
    """Send one day's digest: each recipient's own content from the digest SQL, at most once.

    Args:
        params: The digest: its name (which, with the day, makes the campaign ID), the day
            and time zone (empty day = yesterday), the template and its fields with
            `{column}` placeholders, the digest SQL (binds `:app_id`, `:day_start`,
            `:day_end`; a true `nothing_to_send` column skips a recipient) and the sending
            knobs of a campaign.
    """
    day = digest_day(params)
    campaign = params.campaign(day)
    get_run_logger().info(
        "Digest %r for %s (%s): campaign %s, events in [%s, %s) UTC.",
        params.name,
        day.isoformat(),
        params.timezone,
        campaign.campaign_id,
        campaign.audience_params["day_start"],
        campaign.audience_params["day_end"],
    )
    state = await push_campaign(campaign, return_state=True)
    if state.is_failed():
        # An expected stop: its message says what to fix; raising it would log a traceback.
        return Failed(message=state.message)
    if state.is_cancelled():  # cancelled from the UI while the campaign sent
        return Cancelled(message=state.message)
    return Completed(message=state.message, data=await state.aresult())  # "paused: why" when paused
