"""Token reads and refreshes against the simulator over HTTP and a real Prefect server.

The acceptance tests of compare-and-expire live here: concurrent refusals of one token cause
exactly one token call and one block save, whether they come from many callers of
`refresh_if_current` (the cross-process lock and the re-read under it) or from one campaign's
`TokenSource` (which makes one `refresh_if_current` call for all of them).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.states import exception_to_failed_state
from pydantic import SecretStr

from cli.setup import asetup_app
from processes import free_port
from sending.sender import TokenSource
from tasks.blocks import WeChatAccessToken
from tasks.token import (
    LOCK_LEASE_SECONDS,
    LOCK_TIMEOUT_SECONDS,
    TokenLockMissing,
    TokenLockUnavailable,
    TokenRefusedAgain,
    ensure_token,
    get_access_token,
    lock_name,
    refresh_if_current,
    retry_transient,
    stats,
)
from wechat.client import WeChatClient
from wechat.errors import ConfigError, TokenError, TransportError

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.harness]


def calls(sim: Any, endpoint: str) -> int:
    return sim.admin.counters().calls[endpoint]


async def accepted(sim: Any, token: SecretStr) -> bool:
    """Does the simulator take this token for an authenticated call?"""
    async with WeChatClient(sim.base_url, timeout=5) as client:
        try:
            await client.check_token(token)
        except TokenError:
            return False
    return True


async def put_token(app: str, value: SecretStr | str, seconds_left: float) -> None:
    """Overwrite the token block, as if the token had been fetched a while ago."""
    now = datetime.now(UTC)
    await WeChatAccessToken(
        access_token=value if isinstance(value, SecretStr) else SecretStr(value),
        expires_at=now + timedelta(seconds=seconds_left),
        fetched_at=now - timedelta(seconds=7200 - seconds_left),
    ).asave(app, overwrite=True)


# -- compare-and-expire -------------------------------------------------------------------


async def test_concurrent_refusals_in_one_process_cause_exactly_one_fetch(
    make_wechat_app: Any, sim: Any
) -> None:
    app = await make_wechat_app()
    stale = await get_access_token(app.name)
    sim.admin.rotate_tokens()  # WeChat now answers 40001 to `stale`
    assert not await accepted(sim, stale)
    stable_before = calls(sim, "stable_token")
    before = stats.snapshot()

    def sender_thread(senders: int) -> list[SecretStr]:
        # Like a Prefect task on the thread-pool runner: its own thread, its own loop.
        async def refused_at_once() -> list[SecretStr]:
            return list(
                await asyncio.gather(*(refresh_if_current(app.name, stale) for _ in range(senders)))
            )

        return asyncio.run(refused_at_once())

    groups = await asyncio.gather(*(asyncio.to_thread(sender_thread, 2) for _ in range(3)))
    got = [token for group in groups for token in group]

    assert len(got) == 6
    assert len({token.get_secret_value() for token in got}) == 1, "all get the same new token"
    new = got[0]
    assert new.get_secret_value() != stale.get_secret_value()
    after = stats.snapshot()
    assert calls(sim, "stable_token") - stable_before == 1
    assert after.fetches - before.fetches == 1
    assert after.saves - before.saves == 1
    # Nothing is shared in memory: each caller takes the lock, and all but the first find
    # the new token when they re-read the block under it.
    assert after.lock_acquisitions - before.lock_acquisitions == 6
    assert calls(sim, "stable_token_force") == 0, "never force_refresh"
    block = await WeChatAccessToken.aload(app.name)
    assert block.same_token(new)
    assert await accepted(sim, new)


async def test_one_token_source_refreshes_once_for_fifty_concurrent_refusals(
    make_wechat_app: Any, sim: Any
) -> None:
    app = await make_wechat_app()
    stale = await get_access_token(app.name)
    sim.admin.rotate_tokens()
    stable_before = calls(sim, "stable_token")
    before = stats.snapshot()
    tokens = TokenSource(stale, refresh=lambda failed: refresh_if_current(app.name, failed))

    got = await asyncio.gather(*(tokens.refresh(stale) for _ in range(50)))

    assert len({token.get_secret_value() for token in got}) == 1
    new = got[0]
    assert new.get_secret_value() != stale.get_secret_value()
    assert tokens.refresh_calls == 1
    after = stats.snapshot()
    assert calls(sim, "stable_token") - stable_before == 1
    assert (after.fetches - before.fetches, after.saves - before.saves) == (1, 1)
    assert after.lock_acquisitions - before.lock_acquisitions == 1
    assert await accepted(sim, new)
    # A straggler refused with the old token: the source already has the new one.
    late = await tokens.refresh(stale)
    assert late.get_secret_value() == new.get_secret_value()
    assert (
        tokens.refresh_calls == 1 and stats.snapshot().lock_acquisitions == after.lock_acquisitions
    )


async def test_a_caller_cancelled_holding_the_lock_does_not_hold_up_the_next(
    make_wechat_app: Any, sim: Any
) -> None:
    app = await make_wechat_app()
    stale = await get_access_token(app.name)
    sim.admin.rotate_tokens()
    before = stats.snapshot()

    first = asyncio.create_task(refresh_if_current(app.name, stale))
    while stats.snapshot().lock_acquisitions == before.lock_acquisitions:
        await asyncio.sleep(0.005)  # until the first caller holds the lock
    second = asyncio.create_task(refresh_if_current(app.name, stale))
    await asyncio.sleep(0)
    first.cancel()

    loop = asyncio.get_running_loop()
    started = loop.time()
    new = await asyncio.wait_for(second, timeout=LOCK_TIMEOUT_SECONDS)
    assert first.cancelled()
    # Not the lease running out: the cancelled holder gave the slot back.
    assert loop.time() - started < LOCK_LEASE_SECONDS / 2
    assert new.get_secret_value() != stale.get_secret_value()
    assert await accepted(sim, new)
    assert stats.snapshot().lock_acquisitions - before.lock_acquisitions == 2


async def test_block_already_refreshed_elsewhere_is_not_refreshed_again(
    make_wechat_app: Any, sim: Any
) -> None:
    app = await make_wechat_app()
    stale = await get_access_token(app.name)
    sim.admin.rotate_tokens()
    new = await refresh_if_current(app.name, stale)  # as another process or campaign would
    stable_before = calls(sim, "stable_token")
    before = stats.snapshot()

    again = await refresh_if_current(app.name, stale)

    assert again.get_secret_value() == new.get_secret_value()
    assert calls(sim, "stable_token") == stable_before
    after = stats.snapshot()
    assert after.lock_acquisitions - before.lock_acquisitions == 1  # it did ask the block
    assert after.saves == before.saves and after.fetches == before.fetches


async def test_same_token_handed_back_is_a_config_error_not_a_loop(
    make_wechat_app: Any, sim: Any
) -> None:
    app = await make_wechat_app()
    token = await get_access_token(app.name)
    stable_before = calls(sim, "stable_token")

    # Claim WeChat refused a token it still considers current: stable_token returns it again.
    with pytest.raises(TokenRefusedAgain) as info:
        await refresh_if_current(app.name, token)

    assert isinstance(info.value, ConfigError)
    assert calls(sim, "stable_token") - stable_before == 1, "exactly one attempt"
    text = str(info.value)
    assert "same token" in text and f"wechat-app/{app.name}" in text
    assert token.get_secret_value() not in text
    block = await WeChatAccessToken.aload(app.name)
    assert block.same_token(token), "the block is left as it was"


# -- get_access_token ---------------------------------------------------------------------


async def test_missing_block_is_fetched_then_reused(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app()
    with pytest.raises(ValueError):
        await WeChatAccessToken.aload(app.name)

    first = await get_access_token(app.name)
    assert calls(sim, "stable_token") == 1
    block = await WeChatAccessToken.aload(app.name)
    assert block.same_token(first) and block.usable(7000)
    assert await accepted(sim, first)

    before = stats.snapshot()
    second = await get_access_token(app.name)
    assert second.get_secret_value() == first.get_secret_value()
    assert calls(sim, "stable_token") == 1, "a fresh token is not fetched again"
    after = stats.snapshot()
    assert after.lock_acquisitions == before.lock_acquisitions and after.saves == before.saves


async def test_concurrent_first_reads_fetch_once(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app()
    before = stats.snapshot()
    # Each batch of a campaign reads once; a handful may start together on an empty block.
    tokens = await asyncio.gather(*(get_access_token(app.name) for _ in range(4)))
    assert len({t.get_secret_value() for t in tokens}) == 1
    assert calls(sim, "stable_token") == 1
    after = stats.snapshot()
    assert (after.fetches - before.fetches, after.saves - before.saves) == (1, 1)
    assert after.lock_acquisitions - before.lock_acquisitions == 4  # the rest re-read the block


async def test_expired_token_is_refreshed(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app()
    await put_token(app.name, "expired-token-value", seconds_left=-5)

    token = await get_access_token(app.name)

    assert token.get_secret_value() != "expired-token-value"
    assert calls(sim, "stable_token") == 1
    assert await accepted(sim, token)
    assert (await WeChatAccessToken.aload(app.name)).same_token(token)


async def test_stable_token_inside_margin_rolls_to_a_new_one(
    make_wechat_app: Any, sim: Any
) -> None:
    app = await make_wechat_app()
    old = await get_access_token(app.name)
    sim.admin.advance(7000)  # WeChat's view: 200 s left, inside its 300 s roll window
    await put_token(app.name, old, seconds_left=200)  # our view agrees

    outcome = await ensure_token(app.name, margin_seconds=300)

    assert outcome.action == "refreshed"
    assert not outcome.token.same_token(old)
    assert calls(sim, "stable_token") == 2
    assert await accepted(sim, outcome.token.access_token)
    assert await accepted(sim, old), "the old stable token stays valid until it expires"


async def test_stable_margin_above_roll_window_is_capped(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app()
    token = await get_access_token(app.name)
    await put_token(app.name, token, seconds_left=1000)

    # stable_token would hand back the same token until the last 300 s: nothing to gain.
    outcome = await ensure_token(app.name, margin_seconds=3600)

    assert outcome.action == "kept" and outcome.token.same_token(token)
    assert calls(sim, "stable_token") == 1


async def test_sender_keeps_a_valid_token_when_the_refresh_fails(
    make_wechat_app: Any, sim: Any
) -> None:
    app = await make_wechat_app()
    token = await get_access_token(app.name)
    await put_token(app.name, token, seconds_left=30)  # inside the sender's 60 s margin
    await asetup_app(app.name, api_base_url=f"http://127.0.0.1:{free_port()}")  # WeChat gone

    # The sender carries on with the still-valid token...
    kept = await get_access_token(app.name, margin_seconds=60)
    assert kept.get_secret_value() == token.get_secret_value()
    # ...while the refresh flow's path says loudly that refreshing failed.
    with pytest.raises(TransportError):
        await ensure_token(app.name, margin_seconds=60)
    # Once it has expired there is nothing to fall back on.
    await put_token(app.name, token, seconds_left=-1)
    with pytest.raises(TransportError):
        await get_access_token(app.name)


# -- classic mode -------------------------------------------------------------------------


async def test_classic_mode_fetches_and_compare_and_expires(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app(token_mode="classic")
    first = await get_access_token(app.name)
    assert (calls(sim, "token"), calls(sim, "stable_token")) == (1, 0)
    assert await accepted(sim, first)

    sim.admin.rotate_tokens()
    new = await refresh_if_current(app.name, first)
    assert new.get_secret_value() != first.get_secret_value()
    assert (calls(sim, "token"), calls(sim, "stable_token")) == (2, 0)
    assert await accepted(sim, new)

    # classic honours a large margin: every fetch is a genuinely new token.
    await put_token(app.name, new, seconds_left=1000)
    outcome = await ensure_token(app.name, margin_seconds=3600)
    assert outcome.action == "refreshed" and calls(sim, "token") == 3


# -- the lock -----------------------------------------------------------------------------


async def test_missing_concurrency_limit_is_a_clear_error(make_wechat_app: Any, sim: Any) -> None:
    app = await make_wechat_app()
    async with get_client() as client:
        await client.delete_global_concurrency_limit_by_name(lock_name(app.name))

    with pytest.raises(TokenLockMissing) as info:
        await get_access_token(app.name)

    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    assert lock_name(app.name) in message and f"wxpush setup --app {app.name}" in message
    assert calls(sim, "stable_token") == 0, "nothing is fetched without the lock"


# -- task retries -------------------------------------------------------------------------


async def test_token_tasks_retry_only_retry_class_errors(prefect_harness: object) -> None:
    async def retried(exc: Exception) -> bool:
        return await retry_transient(None, None, await exception_to_failed_state(exc))  # type: ignore[arg-type]

    assert await retried(TransportError("/cgi-bin/stable_token: HTTP 502", status_code=502))
    assert await retried(TokenLockUnavailable("lock busy"))
    assert not await retried(ConfigError("40125 invalid appsecret"))
    assert not await retried(TokenLockMissing("no limit"))
    assert not await retried(ValueError("bug"))
