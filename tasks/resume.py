"""Scheduled resumes: a campaign paused by the account's daily quota or its quiet hours
continues by itself, as a Scheduled run of the push-campaign deployment with the campaign's
id (visible in the UI's runs, cancellable there), at the time sending may start again.

- quota: the next midnight Beijing time, when WeChat resets its daily quotas, plus
  RESET_MARGIN;
- quiet hours: the end of the window (sending/quiet_hours.py).

The run's parameters are those of `wxpush campaign resume ID` (`resume_parameters`: one
piece of code for both). One pause schedules one run: the run is created with an
idempotency key of the campaign and the time, so a second pause before the same reset (a
manual resume that met the spent quota again) finds the run already scheduled. A campaign
not run from a deployment (a plain local flow call) has no deployment to schedule: its pause
reason says how to resume instead (docs/operations.md, "Quota check and auto-resume").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment as current_deployment
from prefect.states import Scheduled

from db.account_limits import BEIJING
from sending.quiet_hours import QuietHours
from sending.sender import Stop, StopCause
from tasks.params import CampaignParams
from tasks.quota import next_reset

__all__ = [
    "PUSH_CAMPAIGN",
    "RESET_MARGIN",
    "ScheduledResume",
    "resume_at",
    "resume_parameters",
    "resume_params",
    "schedule_resume",
]

#: The push-campaign deployment as `wxpush serve` and `wxpush deploy` name it.
PUSH_CAMPAIGN = "push-campaign/push-campaign"
#: A quota resume starts this long after Beijing midnight: clocks differ a little, and a
#: resume that started just before WeChat's reset would meet 45009 and pause again.
RESET_MARGIN = timedelta(minutes=5)
#: Tag of the scheduled resume runs, to find them in the UI's run list.
RESUME_TAG = "wxpush-resume"


def resume_parameters(
    record: Any, *, retry_failed: bool, resend_unknown: bool = False
) -> dict[str, Any]:
    """The campaign's stored parameters, pointed at its id: what the UI form needs to
    continue it (recipients already reached are never sent again; those in doubt only with
    `resend_unknown`)."""
    params = dict(record.parameters)
    params.update(
        campaign_id=record.id,
        retry_failed=retry_failed,
        resend_unknown=resend_unknown,
        dry_run=False,
    )
    return params


def resume_params(
    record: Any, *, retry_failed: bool, resend_unknown: bool = False
) -> CampaignParams:
    """`resume_parameters`, validated: the parameters a resume of `record` runs with."""
    return CampaignParams.model_validate(
        resume_parameters(record, retry_failed=retry_failed, resend_unknown=resend_unknown)
    )


def resume_at(stop: Stop, now: datetime, quiet: QuietHours | None) -> datetime | None:
    """When a campaign that `stop` paused may send again; None when no resume is due by
    the clock (any other pause waits for the operator)."""
    if stop.kind != "pause":
        return None
    if stop.cause == StopCause.QUOTA:
        return next_reset(now) + RESET_MARGIN
    if stop.cause == StopCause.QUIET_HOURS and quiet is not None:
        return quiet.ends_after(now) if quiet.contains(now) else now
    return None


@dataclass(frozen=True, slots=True)
class ScheduledResume:
    """The run that will resume the campaign; `flow_run_id` None: none could be scheduled
    (`why` says so, and how to resume by hand)."""

    campaign_id: str
    at: datetime
    flow_run_id: UUID | None = None
    flow_run_name: str | None = None
    why: str | None = None

    def sentence(self) -> str:
        """What the pause reason adds: when the campaign resumes, and how."""
        when = (
            f"{self.at.astimezone(BEIJING):%Y-%m-%d %H:%M} Asia/Shanghai "
            f"({self.at.astimezone(UTC):%H:%M} UTC)"
        )
        if self.flow_run_id is not None:
            return (
                f"It resumes by itself at {when}: scheduled flow run {self.flow_run_name} "
                "(cancel that run in the UI to keep it paused)"
            )
        return (
            f"No resume was scheduled ({self.why}): run `wxpush campaign resume "
            f"{self.campaign_id}` after {when}"
        )


async def _deployment_id() -> UUID | str | None:
    """The push-campaign deployment to schedule on: this run's own, or, for a campaign run
    inside another deployment's run (a digest), the one `wxpush serve`/`deploy` creates."""
    context = FlowRunContext.get()
    own = context.flow_run.deployment_id if context and context.flow_run else None
    if own is not None:
        return own
    if current_deployment.id is None:
        return None
    return PUSH_CAMPAIGN


async def schedule_resume(params: CampaignParams, at: datetime) -> ScheduledResume:
    """Schedule the run that resumes campaign `params.campaign_id` at `at` (idempotent per
    campaign and time); never raises: a failure is said in the answer."""
    campaign_id = str(params.campaign_id)
    deployment = await _deployment_id()
    if deployment is None:
        return ScheduledResume(campaign_id, at, why="this run is not from a deployment")
    key = f"{RESUME_TAG}:{campaign_id}:{at.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    try:
        async with get_client() as client:
            if isinstance(deployment, str):
                deployment = (await client.read_deployment_by_name(deployment)).id
            run = await client.create_flow_run_from_deployment(
                deployment,
                parameters={"params": params.model_dump(mode="json", exclude_defaults=True)},
                state=Scheduled(scheduled_time=at),
                idempotency_key=key,
                tags=[RESUME_TAG],
            )
    except ObjectNotFound:
        return ScheduledResume(campaign_id, at, why=f"no {PUSH_CAMPAIGN} deployment")
    except Exception as exc:  # the Prefect API: the pause stands, the operator resumes
        return ScheduledResume(
            campaign_id, at, why=f"the Prefect API refused it: {type(exc).__name__}"
        )
    if run.state is not None and not run.state.is_scheduled():
        # The key found the run an earlier pause scheduled for this very time, and it has
        # run or was cancelled since: nothing will resume the campaign by itself.
        return ScheduledResume(
            campaign_id, at, why=f"the resume scheduled for then, {run.name}, is {run.state.name}"
        )
    return ScheduledResume(campaign_id, at, run.id, run.name)
