"""Cancel a campaign's flow run the way the UI's Cancel button does, and wait for it.

Cancelling asks Prefect to stop the run (state `Cancelling`); the worker stops the process
and the flow's on_cancellation hook marks the campaign `cancelled`. If the process died
before its hook ran, the campaign row is closed here, so no campaign stays `running`
without a run behind it. The ledger needs nothing: rows change only after WeChat answered.
"""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.states import Cancelling
from prefect.utilities.asyncutils import run_coro_as_sync

from db import campaigns as campaign_rows
from db.outcomes import CampaignStatus
from tasks.database import engine

CANCELLED_REASON = "the run was cancelled; run it again with its ID to finish"


async def acancel_flow_run(flow_run_id: str, *, wait_seconds: float = 120.0) -> str:
    """Ask Prefect to cancel the run; returns the state it ended in (or is in, if
    `wait_seconds` passed first) in words."""
    run_id = UUID(flow_run_id)
    async with get_client() as client:
        run = await client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return f"already {run.state.name}"
        await client.set_flow_run_state(
            run_id, Cancelling(message="Cancelled by `wxpush campaign cancel`"), force=True
        )
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            run = await client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                break
            await asyncio.sleep(0.5)
    state = run.state.name if run.state else "unknown"
    if run.state is not None and run.state.is_final():
        with engine().begin() as conn:
            campaign_rows.end_if_running(
                conn, flow_run_id, CampaignStatus.CANCELLED, CANCELLED_REASON
            )
        return state
    return f"still {state} after {wait_seconds:.0f} s (the worker stops it when it sees it)"


def cancel_flow_run(flow_run_id: str, *, wait_seconds: float = 120.0) -> str:
    """Synchronous `acancel_flow_run`."""
    return run_coro_as_sync(acancel_flow_run(flow_run_id, wait_seconds=wait_seconds)) or ""
