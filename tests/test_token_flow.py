"""The `refresh_access_token` flow under a real Prefect server, against the simulator."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ParameterTypeError
from prefect.states import State

from flows.token import refresh_access_token
from tasks.blocks import WeChatAccessToken
from tasks.token import RefreshResult
from wechat.client import WeChatClient

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.harness]


def calls(sim: Any, endpoint: str) -> int:
    return sim.admin.counters().calls[endpoint]


async def run(app: str, **params: Any) -> tuple[RefreshResult, State]:
    state = await refresh_access_token(app=app, return_state=True, **params)
    assert state.is_completed(), state
    result = await state.aresult()
    assert isinstance(result, RefreshResult)
    return result, state


async def test_fetch_then_keep_then_refresh_after_rotation(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app()

    # 1. No token yet: fetched, saved, checked once.
    first, state = await run(app.name)
    assert (first.action, first.verified, first.app) == ("fetched", True, app.name)
    assert calls(sim, "stable_token") == 1
    block = await WeChatAccessToken.aload(app.name)
    assert block.expires_at == first.expires_at and block.usable(7000)
    async with get_client() as client:
        flow_run = await client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.name == f"refresh-access-token-{app.name}"

    # 2. Inside its life, outside the margin: nothing fetched, one cheap check call.
    check_calls = calls(sim, "getcallbackip")
    second, _ = await run(app.name)
    assert second.action == "kept" and second.verified
    assert calls(sim, "stable_token") == 1
    assert calls(sim, "getcallbackip") == check_calls + 1
    assert (await WeChatAccessToken.aload(app.name)).same_token(block.access_token)

    # 3. WeChat invalidates every token: the check sees 40001, compare-and-expire refreshes.
    sim.admin.rotate_tokens()
    third, _ = await run(app.name)
    assert third.action == "refreshed" and third.verified
    assert calls(sim, "stable_token") == 2
    assert calls(sim, "stable_token_force") == 0
    new_block = await WeChatAccessToken.aload(app.name)
    assert not new_block.same_token(block.access_token)
    async with WeChatClient(sim.base_url, timeout=5) as client:
        await client.check_token(new_block.access_token)  # the simulator accepts it


async def test_without_verify_a_valid_token_costs_no_call(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app()
    await run(app.name, verify=False)
    before = sim.admin.counters().calls
    result, _ = await run(app.name, verify=False)
    assert (result.action, result.verified) == ("kept", False)
    assert sim.admin.counters().calls == before


async def test_classic_app_is_fetched_and_refreshed(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app(token_mode="classic")
    first, _ = await run(app.name)
    assert first.action == "fetched" and first.verified
    sim.admin.rotate_tokens()
    second, _ = await run(app.name)
    assert second.action == "refreshed" and second.verified
    assert (calls(sim, "token"), calls(sim, "stable_token")) == (2, 0)


async def test_invalid_parameters_are_rejected_before_running(make_wechat_app: Any) -> None:
    app = await make_wechat_app()
    with pytest.raises(ParameterTypeError, match="margin_seconds"):
        await refresh_access_token(app=app.name, margin_seconds=-1)
