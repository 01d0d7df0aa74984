"""The child runner, child side: run `push_campaign` (or the map flow) once and write the
JSON answer the parent reads; only the flow call is timed, not imports and setup."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import psutil

from bench.campaign.map import build_map_flow


def child_main(mode: str, spec_path: str, out_path: str) -> None:
    """Entry point of a child process: run one thing, write its JSON answer."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        answer = {"campaign": child_campaign, "map": child_map}[mode](spec)
    except Exception as exc:  # reported by the parent, with the log tail
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    Path(out_path).write_text(json.dumps(answer))


def wait_for_profiler(spec: dict[str, Any], timeout: float = 30.0) -> None:
    """When profiled, say "ready" and wait until py-spy is attached (see `Profiler`)."""
    if "ready_file" not in spec:
        return
    Path(spec["ready_file"]).touch()
    go = Path(spec["go_file"])
    deadline = time.monotonic() + timeout
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def rss_now() -> int:
    return psutil.Process().memory_info().rss


async def prepare_app(app: dict[str, str], need_token: bool) -> None:
    """The wechat-app block (idempotent) and, for real sends, a token the simulator accepts:
    the parent resets the simulator before each campaign, which forgets every token."""
    from cli.setup import asetup_app
    from tasks.token import ensure_token, verify_token

    await asetup_app(
        app["name"],
        app_id=app["app_id"],
        app_secret=app["app_secret"],
        api_base_url=app["api_base_url"],
        # The bench sends millions a day for one account: its quota must never pause it
        # (the simulator's is as large).
        daily_quota=1_000_000_000,
    )
    if need_token:
        await ensure_token(app["name"], 0)
        await verify_token(app["name"])


def child_campaign(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `push_campaign` once; time only the flow call (not imports, setup or token)."""
    from flows.campaign import push_campaign
    from tasks.params import CampaignParams

    params = CampaignParams.model_validate(spec["params"])
    asyncio.run(prepare_app(spec["app"], need_token=not params.dry_run))
    wait_for_profiler(spec)
    answer: dict[str, Any] = {"rss_ready": rss_now()}
    cpu = time.process_time()
    started = time.perf_counter()
    state = asyncio.run(push_campaign(params, return_state=True))
    answer["wall"] = time.perf_counter() - started
    answer["cpu"] = time.process_time() - cpu
    if state.is_completed():
        answer["result"] = state.result().model_dump(mode="json")
    else:
        answer["error"] = f"flow run ended {state.name}: {state.message}"
    return answer


def child_map(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the one-task-per-message flow once; time only the flow call."""
    asyncio.run(prepare_app(spec["app"], need_token=True))
    flow_fn = build_map_flow(spec["workers"])
    started = time.perf_counter()
    state = flow_fn(
        spec["app"]["name"], spec["sql"], spec["n"], spec["campaign"], return_state=True
    )
    answer: dict[str, Any] = {"wall": time.perf_counter() - started}
    if state.is_completed():
        answer["outcomes"] = state.result()
    else:
        answer["error"] = f"flow run ended {state.name}: {state.message}"
    return answer
