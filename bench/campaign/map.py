"""Part 5, `map`: one Prefect task per message, the design docs/performance.md rejects, for
contrast."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from bench.campaign.common import APP, TEMPLATE_DATA, URL_TEMPLATE, audience_sql, say
from bench.campaign.results import MapRun
from bench.campaign.runner import run_child
from bench.campaign.services import Bench
from sending.message import client_msg_id_for
from wechat.simulator.defaults import DEMO_TEMPLATE_ID


def part_map(bench: Bench, deadline: float) -> None:
    args = bench.args
    say(f"\n[map] one Prefect task per message, {args.map_size:,} messages")
    bench.sim.admin.reset()
    spec = {
        "app": bench.app_values(APP, bench.sim.app_id),
        "sql": audience_sql(args.map_size),
        "n": args.map_size,
        "workers": args.map_workers,
        "campaign": f"bench-map-{uuid.uuid4().hex[:8]}",
    }
    child = run_child(bench, "map", spec, deadline)
    payload = child.payload or {}
    sent = int((payload.get("outcomes") or {}).get("sent", 0))
    run = MapRun(
        messages=args.map_size,
        workers=args.map_workers,
        sent=sent,
        flow_seconds=float(payload.get("wall", 0.0)),
        accepted=bench.sim.admin.counters().accepted,
        peak_rss=child.max_rss,
        error=child.error,
    )
    bench.report.map.append(run)
    if run.error:
        say(f"  FAILED: {run.error}")
    else:
        check = "accepted = sent" if run.accepted == sent else f"MISMATCH accepted={run.accepted}"
        say(f"  {sent:,} sent in {run.flow_seconds:.1f} s: {run.rate:,.0f}/s; {check}")


def build_map_flow(max_workers: int) -> Any:
    """A flow that sends one message per Prefect task: the design docs/performance.md rejects.

    Same audience query, renderer, client and send as the campaign; no ledger (so it is an
    upper bound for that design). An async task runs in its own event loop on a pool
    thread, so each task opens its own `WeChatClient` (one connection).
    """
    from prefect import flow, task, unmapped
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.utilities.asyncutils import run_coro_as_sync
    from pydantic import SecretStr

    from db.audience import preview_audience
    from sending.message import MessageSpec, render
    from tasks.database import audience_engine
    from tasks.token import get_access_token, load_app
    from wechat.client import WeChatClient

    @task(name="send-one-message", cache_policy=NO_CACHE, persist_result=False)
    async def send_one(
        row: dict[str, Any], spec: MessageSpec, campaign: str, base_url: str, token: SecretStr
    ) -> str:
        message = render(spec, row, client_msg_id=client_msg_id_for(campaign, row["openid"]))
        if isinstance(message, list):
            return "invalid"
        async with WeChatClient(base_url, max_connections=1) as client:
            await client.send_template(token, message)  # type: ignore[arg-type]
        return "sent"

    @flow(
        name="bench-one-task-per-message",
        task_runner=ThreadPoolTaskRunner(max_workers=max_workers),
    )
    def one_task_per_message(app: str, sql: str, n: int, campaign: str) -> dict[str, int]:
        block = run_coro_as_sync(load_app(app))
        rows = preview_audience(
            audience_engine(), sql, {"app_id": block.app_id}, sample_size=n
        ).rows
        spec = MessageSpec(template_id=DEMO_TEMPLATE_ID, data=TEMPLATE_DATA, url=URL_TEMPLATE)
        token = run_coro_as_sync(get_access_token(app))
        futures = send_one.map(
            rows, unmapped(spec), unmapped(campaign), unmapped(block.api_base_url), unmapped(token)
        )
        outcomes: Counter[str] = Counter()
        for future in futures:
            result = future.result(raise_on_failure=False)
            outcomes[result if isinstance(result, str) else type(result).__name__] += 1
        return dict(outcomes)

    return one_task_per_message
