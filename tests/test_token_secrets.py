"""The AppSecret and the access_token never show up where people look.

Decision 8 of docs/architecture.md, checked where they could leak: Python logs (caplog),
the Prefect run logs stored on the server, exception text (str, repr, the whole chained
traceback), a failed run's state message, and the blocks' repr/str. Classic mode is used
where it matters, because there both secrets travel in URL query strings, which httpx logs.
"""

from __future__ import annotations

import asyncio
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from pydantic import SecretStr

from flows.token import refresh_access_token
from processes import free_port
from tasks.blocks import WeChatAccessToken, WeChatApp
from tasks.token import get_access_token, get_access_token_task, refresh_if_current_task
from tests.fixtures.prefect import api_logging, stored_runs
from wechat.errors import ConfigError, TransportError

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.harness]


def exception_text(exc: BaseException) -> str:
    """Everything a person or a log could see of an exception, causes included."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


async def run_logs(*flow_run_ids: Any) -> str:
    return (await stored_runs(*flow_run_ids)).log_text


async def test_no_secret_in_any_log(make_wechat_app: Any, sim: Any, all_logs: Any) -> None:
    app = await make_wechat_app(token_mode="classic")
    with api_logging():
        first = await refresh_access_token(app=app.name, return_state=True)
        old = (await WeChatAccessToken.aload(app.name)).access_token.get_secret_value()
        sim.admin.rotate_tokens()
        second = await refresh_access_token(app=app.name, return_state=True)
    new = (await WeChatAccessToken.aload(app.name)).access_token.get_secret_value()
    assert first.is_completed() and second.is_completed() and old != new

    stored = await run_logs(first.state_details.flow_run_id, second.state_details.flow_run_id)
    local = all_logs.text
    # The logs are there and say what happened (so the checks below look at something)...
    assert "token fetched" in stored and "token refreshed" in stored
    assert "refused the token" in stored
    assert "/cgi-bin/token" in local, "httpx request lines are captured too"
    # ...and none of them carries a secret.
    for secret in (app.app_secret, old, new):
        assert secret not in stored
        assert secret not in local


@pytest.mark.parametrize("token_mode", ["stable", "classic"])
async def test_wrong_secret_error_text_has_no_secret(
    make_wechat_app: Any, all_logs: Any, token_mode: str
) -> None:
    wrong = f"wrong-secret-{token_mode}-0c1d2e3f4a5b"
    app = await make_wechat_app(token_mode=token_mode, app_secret=wrong)

    with pytest.raises(ConfigError) as info:
        await get_access_token(app.name)

    assert info.value.errcode in {40001, 40125}
    text = exception_text(info.value)
    assert "cgi-bin" in text
    assert wrong not in text and wrong not in all_logs.text


async def test_failed_run_state_has_no_secret(make_wechat_app: Any) -> None:
    wrong = "wrong-secret-in-a-flow-run-9f8e7d"
    app = await make_wechat_app(token_mode="classic", app_secret=wrong)
    with api_logging():
        state = await refresh_access_token(app=app.name, return_state=True)
    assert state.is_failed()
    assert "errcode" in (state.message or "")
    assert wrong not in (state.message or "")
    stored = await run_logs(state.state_details.flow_run_id)
    assert "Traceback" in stored or "errcode" in stored
    assert wrong not in stored


async def test_transport_error_text_has_no_secret(make_wechat_app: Any, all_logs: Any) -> None:
    secret = "unreachable-secret-1a2b3c4d5e"
    app = await make_wechat_app(
        token_mode="classic",
        app_secret=secret,
        api_base_url=f"http://127.0.0.1:{free_port()}",  # nobody listens there
    )

    with pytest.raises(TransportError) as info:
        await get_access_token(app.name)

    text = exception_text(info.value)
    assert "/cgi-bin/token" in text
    assert secret not in text and secret not in all_logs.text


async def test_loaded_blocks_never_show_secrets(make_wechat_app: Any) -> None:
    app = await make_wechat_app()
    token = (await get_access_token(app.name)).get_secret_value()
    app_block = await WeChatApp.aload(app.name)
    token_block = await WeChatAccessToken.aload(app.name)
    for text in (repr(app_block), str(app_block), repr(token_block), str(token_block)):
        assert app.app_secret not in text and token not in text
    assert token_block.access_token.get_secret_value() == token


@flow
async def sender_refused(app: str, failed: SecretStr) -> bool:
    """A stand-in sender: asks for a better token through the task wrappers."""
    current = await get_access_token_task(app)
    better = await refresh_if_current_task(app, failed)
    return current.get_secret_value() == better.get_secret_value()


async def test_task_runs_store_no_token(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app()
    stale = await get_access_token(app.name)
    sim.admin.rotate_tokens()
    await WeChatAccessToken(
        access_token=stale,
        expires_at=datetime.now(UTC) + timedelta(seconds=30),  # inside the sender margin
        fetched_at=datetime.now(UTC),
    ).asave(app.name, overwrite=True)

    state = await sender_refused(app.name, stale, return_state=True)
    assert await state.aresult() is True, "both tasks returned the same, new token"
    new = (await WeChatAccessToken.aload(app.name)).access_token.get_secret_value()
    assert new != stale.get_secret_value()

    async with get_client() as client:
        flow_run = await client.read_flow_run(state.state_details.flow_run_id)
        for _ in range(50):  # task runs are recorded from events: eventually consistent
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
            if len(task_runs) == 2:
                break
            await asyncio.sleep(0.2)
    assert sorted(run.name.rsplit("-", 1)[0] for run in task_runs) == [
        "get-access-token",
        "refresh-if-current",
    ]
    records = flow_run.model_dump_json() + "".join(run.model_dump_json() for run in task_runs)
    for secret in (stale.get_secret_value(), new, app.app_secret):
        assert secret not in records
