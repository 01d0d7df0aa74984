"""Tell operators when the token refresh keeps failing (the refresh flow's on_failure hook).

One failed refresh is routine (WeChat answered -1, the network blinked) and the next run,
minutes later, repairs it. Two in a row are not: the AppSecret changed, the server's IP left
WeChat's allowlist, the account was frozen. So the hook counts the app's refresh runs that
failed in a row, from Prefect's own run history, and emits `wxpush.token.refresh-failing` on
the second (then every REMIND_EVERY-th, so a long outage is not forgotten), and
`wxpush.token.expiring` whenever the stored token is inside its refresh margin.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

from tasks.events import token_expiring, token_refresh_failing
from tasks.token import REFRESH_MARGIN_SECONDS, load_app, read_token

__all__ = ["REMIND_EVERY", "failures_in_a_row", "tell_if_refresh_failing"]

log = logging.getLogger(__name__)

#: After the alert on the second failure, remind on every this-many-th one in a row
#: (an hour at the refresh deployment's 10-minute schedule).
REMIND_EVERY = 6
#: How far back the run history is read (more failures in a row than this read as this).
LOOK_BACK = 50
_FAILED = (StateType.FAILED, StateType.CRASHED)
_ENDED = (StateType.COMPLETED, *_FAILED)


def failures_in_a_row(states: list[StateType | None]) -> int:
    """Failed or crashed runs at the head of `states` (newest first)."""
    count = 0
    for state in states:
        if state not in _FAILED:
            break
        count += 1
    return count


def _worth_telling(failures: int) -> bool:
    return failures == 2 or (failures > 2 and failures % REMIND_EVERY == 0)


async def tell_if_refresh_failing(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure hook of refresh-access-token: emit the events above (never raises)."""
    try:
        await _tell(flow_run, state)
    except Exception as exc:  # a hook that fails must not hide the run's own failure
        log.warning("Could not check the token refresh's history (%s).", type(exc).__name__)


async def _tell(flow_run: Any, state: Any) -> None:
    app = str((flow_run.parameters or {}).get("app", "default"))
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[flow_run.name]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(_ENDED))),
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=LOOK_BACK,
        )
    # This run counts as failed whether or not the server shows its state yet.
    earlier = [run.state_type for run in runs if run.id != flow_run.id]
    failures = 1 + failures_in_a_row(earlier)
    try:
        app_id: str | None = (await load_app(app)).app_id
    except Exception:  # the failure may be that very block
        app_id = None
    if _worth_telling(failures):
        reason = " ".join(str(getattr(state, "message", "") or "no message").split())[:300]
        token_refresh_failing(app, app_id, failures, reason).emit()
    stored = await read_token(app)
    if stored is not None and not stored.usable(REFRESH_MARGIN_SECONDS):
        left = int((stored.expires_at - datetime.now(UTC)).total_seconds())
        token_expiring(app, app_id, stored.expires_at, left).emit()
