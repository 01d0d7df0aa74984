"""The send engine against the simulator over real HTTP: exactly once, by errcode class.

Each test seeds followers, sends a small batch through `send_rows` and checks both sides:
the outcomes the engine returns and what the simulator accepted (`/_sim/messages`,
`/_sim/counters`). Retry delays are tiny through `RetryPolicy`, so faults cost milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from db.outcomes import DeliveryOutcome, DeliveryStatus
from sending.breaker import BreakerPolicy
from sending.message import MessageSpec, client_msg_id_for
from sending.ratelimit import RateLimiter
from sending.sender import (
    BatchResult,
    CampaignRun,
    RetryPolicy,
    StopSignal,
    TokenSource,
    send_rows,
)
from tests.waiting import await_until
from wechat.client import WeChatClient
from wechat.simulator.defaults import DEMO_TEMPLATE_ID
from wechat.simulator.process import SimulatorProcess

CAMPAIGN = "cmp-test-1"
FAST = RetryPolicy(max_attempts=12, base_delay=0.002, max_delay=0.02, minute_quota_delay=0.05)
SPEC = MessageSpec(
    template_id=DEMO_TEMPLATE_ID,
    data={
        "thing1": "{goods}",
        "character_string2": "{waybill}",
        "time3": "{shipped_at}",
        "amount4": "¥{amount}",
    },
    url="https://shop.example/orders/{waybill}",
)


def openids(n: int, prefix: str = "o") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def row(openid: str, goods: str = "无线降噪耳机") -> dict[str, Any]:
    return {
        "openid": openid,
        "goods": goods,
        "waybill": "SF" + "".join(c for c in openid if c.isdigit()).rjust(10, "0"),
        "shipped_at": datetime(2024, 5, 1, 2, 30, tzinfo=UTC),
        "amount": "299.00",
    }


def follow(sim: SimulatorProcess, ids: list[str], **fields: Any) -> None:
    sim.admin.add_followers([{"openid": openid, **fields} for openid in ids])


async def stable_token(sim: SimulatorProcess) -> SecretStr:
    async with WeChatClient(sim.base_url) as client:
        return (await client.stable_token(sim.app_id, sim.app_secret)).access_token


class Refresher:
    """A fake `refresh_if_current`: fetches the simulator's stable token, counts calls."""

    def __init__(self, sim: SimulatorProcess) -> None:
        self.sim = sim
        self.calls = 0

    async def __call__(self, failed: SecretStr) -> SecretStr:
        self.calls += 1
        return await stable_token(self.sim)


class Watching(httpx.AsyncBaseTransport):
    """Wraps the aiohttp transport: counts requests in flight and runs a hook per answer."""

    def __init__(self, on_answer: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.inner = AiohttpTransport(limits=httpx.Limits(max_connections=100))
        self.in_flight = self.peak = self.answers = 0
        self.on_answer = on_answer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.in_flight -= 1
            self.answers += 1
            if self.on_answer is not None:
                await self.on_answer(self.answers)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def run(
    sim: SimulatorProcess,
    rows: list[dict[str, Any]],
    *,
    spec: MessageSpec = SPEC,
    concurrency: int = 8,
    retry: RetryPolicy = FAST,
    stop: StopSignal | None = None,
    limiter: RateLimiter | None = None,
    refresher: Refresher | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: float = 5.0,
    token: SecretStr | None = None,
    breaker: BreakerPolicy | None = None,
) -> BatchResult:
    tokens = TokenSource(token or await stable_token(sim), refresher or Refresher(sim))
    async with WeChatClient(
        sim.base_url, timeout=timeout, transport=transport or "aiohttp"
    ) as client:
        return await send_rows(
            rows,
            spec=spec,
            campaign_id=CAMPAIGN,
            client=client,
            token=tokens,
            limiter=limiter,
            concurrency=concurrency,
            retry=retry,
            stop=stop,
            breaker=breaker,
        )


def accepted_per_openid(sim: SimulatorProcess) -> Counter[str]:
    return Counter(message.openid for message in sim.admin.iter_messages())


def by_openid(result: BatchResult) -> dict[str, DeliveryOutcome]:
    outcomes = {o.openid: o for o in result.outcomes}
    assert len(outcomes) == len(result.outcomes), "one outcome per row"
    return outcomes


# -- the happy path ----------------------------------------------------------------------------


async def test_every_row_is_sent_exactly_once_with_its_client_msg_id(
    sim: SimulatorProcess,
) -> None:
    ids = openids(120)
    follow(sim, ids)
    result = await run(sim, [row(i) for i in ids])

    assert result.counts["sent"] == 120 and result.not_attempted == 0 and result.stop is None
    messages = {m.openid: m for m in sim.admin.iter_messages()}
    assert sorted(messages) == ids
    for openid, outcome in by_openid(result).items():
        message = messages[openid]
        assert outcome.status is DeliveryStatus.SENT and outcome.attempts == 1
        assert outcome.client_msg_id == message.client_msg_id == client_msg_id_for(CAMPAIGN, openid)
        assert outcome.msgid == message.msgid and outcome.msgid > 2**53
        assert outcome.first_attempt_at <= outcome.sent_at
        assert outcome.errcode is None and outcome.error_class is None
    assert messages[ids[0]].data["time3"] == "2024-05-01 10:30"  # UTC 02:30 in China time
    assert messages[ids[0]].url.startswith("https://shop.example/orders/SF")
    assert result.http_attempts == 120 and result.messages_per_second > 0


async def test_concurrency_bound_is_respected(sim: SimulatorProcess) -> None:
    ids = openids(60)
    follow(sim, ids)
    sim.admin.set_faults(slow_rate=1.0, slow_seconds=0.05)  # every answer overlaps the others
    watching = Watching()
    result = await run(sim, [row(i) for i in ids], concurrency=6, transport=watching)

    assert result.counts["sent"] == 60
    assert watching.peak == 6, "the bound is reached and never exceeded"


# -- RETRY ---------------------------------------------------------------------------------------


async def test_faults_end_with_every_row_sent_exactly_once(sim: SimulatorProcess) -> None:
    ids = openids(200)
    follow(sim, ids)
    sim.admin.set_faults(
        seed=11,
        minus_one_rate=0.20,
        http_5xx_rate=0.05,
        slow_rate=0.03,
        slow_seconds=1.0,
        drop_rate=0.03,
    )
    result = await run(sim, [row(i) for i in ids], concurrency=16, timeout=0.4)

    assert result.counts["sent"] == 200, result.counts
    assert accepted_per_openid(sim) == Counter({openid: 1 for openid in ids})
    counters = sim.admin.counters()
    faulted = sum(counters.faults[k] for k in ("minus_one", "http_5xx", "drop", "slow"))
    assert faulted > 0 and counters.faults["slow"] > 0
    retried = [o for o in result.outcomes if o.attempts > 1]
    assert len(retried) >= counters.faults["minus_one"] // 2  # some rows hit several faults
    assert all(o.client_msg_id == client_msg_id_for(CAMPAIGN, o.openid) for o in retried)
    # Every attempt reached the simulator; the late copies of timed-out sends were deduped.
    assert counters.calls["template_send"] == result.http_attempts
    assert counters.accepted == 200


async def test_retries_give_up_after_max_attempts(sim: SimulatorProcess) -> None:
    ids = openids(3)
    follow(sim, ids)
    sim.admin.set_faults(minus_one_rate=1.0)
    policy = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002)
    # The breaker off: an outage would hold the messages instead (tests/test_breaker.py).
    never = BreakerPolicy(share=1)
    result = await run(sim, [row(i) for i in ids], retry=policy, breaker=never)

    assert result.counts["failed"] == 3 and result.stop is None
    for outcome in result.outcomes:
        assert (outcome.errcode, outcome.error_class, outcome.attempts) == (-1, "RETRY", 3)
        assert outcome.reason.startswith("gave up after 3 attempts")
    assert sim.admin.counters().calls["template_send"] == 9


async def test_minute_quota_45011_waits_and_then_sends(sim: SimulatorProcess) -> None:
    ids = openids(40)
    follow(sim, ids)
    sim.admin.set_faults(rate_limit_per_second=15)
    policy = RetryPolicy(max_attempts=20, minute_quota_delay=0.4, base_delay=0.001)
    result = await run(sim, [row(i) for i in ids], retry=policy)

    assert result.counts["sent"] == 40
    assert sim.admin.counters().errcodes.get(45011, 0) > 0
    assert any(o.attempts > 1 for o in result.outcomes)


async def test_the_limiter_keeps_under_the_accounts_rate(sim: SimulatorProcess) -> None:
    ids = openids(45)
    follow(sim, ids)
    sim.admin.set_faults(rate_limit_per_second=30)  # fixed one-second windows
    started = time.monotonic()
    result = await run(sim, [row(i) for i in ids], limiter=RateLimiter(25), concurrency=8)

    assert result.counts["sent"] == 45
    assert sim.admin.counters().errcodes.get(45011, 0) == 0
    assert time.monotonic() - started >= 44 / 25 * 0.95


async def test_unknown_outcome_is_not_retried_for_kinds_without_dedupe(
    sim: SimulatorProcess,
) -> None:
    ids = openids(4)
    follow(sim, ids)
    spec = MessageSpec(kind="customer_service", text="{goods} 已发货")
    sim.admin.set_faults(drop_rate=1.0)
    result = await run(sim, [row(i) for i in ids], spec=spec)

    assert result.counts["failed"] == 4
    for outcome in result.outcomes:
        assert outcome.attempts == 1 and outcome.error_class == "RETRY"
        assert "does not dedupe customer_service" in outcome.reason
        assert outcome.client_msg_id is None

    sim.admin.set_faults(minus_one_rate=0.5, seed=3)  # an answer: safe to retry
    result = await run(sim, [row(i) for i in ids], spec=spec)
    assert result.counts["sent"] == 4
    assert Counter(m.kind for m in sim.admin.iter_messages()) == Counter({"custom": 4})


# -- REFRESH ---------------------------------------------------------------------------------------


async def test_token_rotated_mid_batch_is_refreshed_once(sim: SimulatorProcess) -> None:
    ids = openids(240)
    follow(sim, ids)

    async def rotate_after_40(answers: int) -> None:
        if answers == 40:
            await asyncio.to_thread(sim.admin.rotate_tokens)

    refresher = Refresher(sim)
    result = await run(
        sim,
        [row(i) for i in ids],
        concurrency=16,
        refresher=refresher,
        transport=Watching(rotate_after_40),
    )

    assert refresher.calls == 1 and result.token_refreshes == 1
    assert result.counts["sent"] == 240
    assert accepted_per_openid(sim) == Counter({openid: 1 for openid in ids})
    refused = sim.admin.counters().errcodes.get(40001, 0)
    assert refused >= 1
    assert sum(1 for o in result.outcomes if o.attempts == 2) == refused


async def test_a_refreshed_token_refused_again_stops_without_looping(
    sim: SimulatorProcess,
) -> None:
    ids = openids(20)
    follow(sim, ids)
    old = await stable_token(sim)
    sim.admin.rotate_tokens()
    calls = 0

    async def same_token_again(failed: SecretStr) -> SecretStr:
        nonlocal calls
        calls += 1
        return old

    tokens = TokenSource(old, same_token_again)
    async with WeChatClient(sim.base_url) as client:
        result = await send_rows(
            [row(i) for i in ids],
            spec=SPEC,
            campaign_id=CAMPAIGN,
            client=client,
            token=tokens,
            concurrency=1,
            retry=FAST,
        )

    assert calls == 1
    (outcome,) = result.outcomes
    assert outcome.status is DeliveryStatus.PENDING and outcome.error_class == "CONFIG"
    assert outcome.errcode == 40001 and outcome.attempts == 2
    assert "refused the refreshed access_token" in outcome.reason
    assert result.stop is not None and result.stop.kind == "stop"
    assert result.not_attempted == 19
    assert sim.admin.counters().calls["template_send"] == 2


async def test_token_source_refreshes_once_for_many_concurrent_refusals() -> None:
    calls = 0

    async def refresh(failed: SecretStr) -> SecretStr:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return SecretStr(f"new-{calls}")

    tokens = TokenSource("old", refresh)
    old = tokens.current
    got = await asyncio.gather(*(tokens.refresh(old) for _ in range(100)))
    assert calls == 1 and {t.get_secret_value() for t in got} == {"new-1"}
    assert (await tokens.refresh(old)).get_secret_value() == "new-1"  # already replaced
    assert calls == 1
    await tokens.refresh(tokens.current)  # the new one refused: one more call
    assert calls == 2 and tokens.refresh_calls == 2


async def test_token_source_shares_a_failed_refresh_with_its_waiters() -> None:
    async def broken(failed: SecretStr) -> SecretStr:
        await asyncio.sleep(0.01)
        raise RuntimeError("lock unavailable")

    tokens = TokenSource("old", broken)
    results = await asyncio.gather(
        *(tokens.refresh(tokens.current) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert tokens.refresh_calls == 1 and tokens.current.get_secret_value() == "old"


# -- RECIPIENT, invalid rows ---------------------------------------------------------------------


async def test_recipient_errors_fail_that_row_and_the_rest_is_sent(sim: SimulatorProcess) -> None:
    good = openids(30)
    follow(sim, good)
    follow(sim, ["o-gone"], subscribed=False)
    follow(sim, ["o-black"], blocked="blacklist")
    follow(sim, ["o-refuse"], blocked="refuse")
    bad = {"o-unknown": 40003, "o-gone": 43004, "o-black": 43019, "o-refuse": 48002}
    rows = [row(i) for i in good[:15]] + [row(i) for i in bad] + [row(i) for i in good[15:]]
    result = await run(sim, rows, concurrency=4)

    outcomes = by_openid(result)
    assert result.stop is None and result.counts["sent"] == 30 and result.counts["failed"] == 4
    for openid, errcode in bad.items():
        outcome = outcomes[openid]
        assert outcome.status is DeliveryStatus.FAILED
        assert (outcome.errcode, outcome.error_class, outcome.attempts) == (errcode, "RECIPIENT", 1)
        assert outcome.errmsg and outcome.reason
    assert set(accepted_per_openid(sim)) == set(good)
    assert result.errcodes == dict.fromkeys(bad.values(), 1)


async def test_invalid_rows_are_recorded_and_never_sent(sim: SimulatorProcess) -> None:
    ids = openids(10)
    follow(sim, ids)
    rows = [row(i) for i in ids]
    rows[3] = row(ids[3], goods="一二三四五六七八九十一二三四五六七八九十一")  # 21 characters
    rows[6] = dict(row(ids[6]), amount=None)  # "¥" alone is no amount
    result = await run(sim, rows)

    outcomes = by_openid(result)
    assert result.counts == {**dict.fromkeys(result.counts, 0), "sent": 8, "invalid": 2}
    too_long = outcomes[ids[3]]
    assert too_long.status is DeliveryStatus.INVALID and too_long.attempts == 0
    assert "data.thing1.value invalid" in too_long.reason and "at most 20" in too_long.reason
    assert "data.amount4.value invalid" in outcomes[ids[6]].reason
    assert set(accepted_per_openid(sim)) == set(ids) - {ids[3], ids[6]}


# -- REQUEST / CONFIG / QUOTA stop the campaign ------------------------------------------------


async def test_unknown_template_stops_after_the_first_answers(sim: SimulatorProcess) -> None:
    ids = openids(200)
    follow(sim, ids)
    spec = SPEC.model_copy(update={"template_id": "no-such-template-in-this-account"})
    stop = StopSignal()
    result = await run(sim, [row(i) for i in ids], spec=spec, concurrency=4, stop=stop)

    calls = sim.admin.counters().calls["template_send"]
    assert 1 <= calls <= 4 and len(result.outcomes) == calls
    assert result.not_attempted == 200 - calls
    for outcome in result.outcomes:
        assert outcome.status is DeliveryStatus.FAILED
        assert (outcome.errcode, outcome.error_class) == (40037, "REQUEST")
    assert result.stop is stop.stop and stop.kind == "stop" and stop.errcode == 40037
    assert "template_id not found in this account: check the template ID" in stop.reason
    assert sim.admin.messages().total == 0


async def test_a_stop_in_one_batch_halts_the_other_batch_of_the_run(
    sim: SimulatorProcess,
) -> None:
    """Two batches of one run, on its one loop, as the flow runs them: a stop raised by
    one (40037) ends the other's sends within one send."""
    ids = openids(300)
    follow(sim, ids)
    token = await stable_token(sim)
    async with WeChatClient(sim.base_url) as client:
        campaign = CampaignRun(
            spec=SPEC,
            campaign_id=CAMPAIGN,
            client=client,
            tokens=TokenSource(token, Refresher(sim)),
            limiter=RateLimiter(150),
            concurrency=8,
            retry=FAST,
        )
        # The same run, another template: the second batch's sends are refused.
        bad = CampaignRun(
            spec=SPEC.model_copy(update={"template_id": "deleted-template"}),
            campaign_id=CAMPAIGN,
            client=client,
            tokens=campaign.tokens,
            stop=campaign.stop,
            retry=FAST,
        )

        async def other_batch() -> BatchResult:
            await await_until(
                lambda: sim.admin.counters().calls["template_send"] >= 25,
                "the first batch is under way (25 sends)",
            )
            return await bad.send([row(i) for i in ids[:5]])

        theirs, ours = await asyncio.gather(other_batch(), campaign.send([row(i) for i in ids[5:]]))

    assert theirs.stop is not None and theirs.stop.errcode == 40037
    assert ours.stop == theirs.stop
    assert 20 <= ours.counts["sent"] < 150, "stopped early, not at the end of its rows"
    assert ours.not_attempted > 100


async def test_quota_pauses_and_leaves_the_rest_unsent(sim: SimulatorProcess) -> None:
    ids = openids(30)
    follow(sim, ids)
    sim.admin.set_config(daily_quota=10)
    result = await run(sim, [row(i) for i in ids], concurrency=1)

    outcomes = by_openid(result)
    assert [outcomes[i].status for i in ids[:10]] == [DeliveryStatus.SENT] * 10
    paused = outcomes[ids[10]]
    assert paused.status is DeliveryStatus.PENDING
    assert (paused.errcode, paused.error_class) == (45009, "QUOTA")
    assert not set(outcomes) & set(ids[11:]), "rows after the quota hit have no outcome"
    assert result.stop is not None and result.stop.kind == "pause"
    assert "Beijing midnight" in result.stop.reason


async def test_an_errcode_nobody_knows_stops_but_keeps_the_row_open(
    sim: SimulatorProcess, respx_mock: Any
) -> None:
    respx_mock.route(host="wechat.test").mock(
        return_value=httpx.Response(200, json={"errcode": 99999, "errmsg": "brand new"})
    )
    tokens = TokenSource("t", Refresher(sim))
    async with WeChatClient("http://wechat.test", transport="httpx") as client:
        result = await send_rows(
            [row("o1"), row("o2")],
            spec=SPEC,
            campaign_id=CAMPAIGN,
            client=client,
            token=tokens,
            concurrency=1,
        )
    (outcome,) = result.outcomes
    assert outcome.status is DeliveryStatus.PENDING and outcome.error_class == "REQUEST"
    assert result.stop is not None and result.stop.kind == "stop" and "99999" in result.stop.reason


async def test_an_account_problem_stops_and_keeps_the_row_open(
    sim: SimulatorProcess, respx_mock: Any
) -> None:
    respx_mock.route(host="wechat.test").mock(
        return_value=httpx.Response(200, json={"errcode": 40164, "errmsg": "invalid ip"})
    )
    async with WeChatClient("http://wechat.test", transport="httpx") as client:
        result = await send_rows(
            [row("o1"), row("o2")],
            spec=SPEC,
            campaign_id=CAMPAIGN,
            client=client,
            token=TokenSource("t", Refresher(sim)),
            concurrency=1,
        )
    (outcome,) = result.outcomes
    # Not the recipient's fault: pending, so a resume after whitelisting the IP sends it.
    assert outcome.status is DeliveryStatus.PENDING and outcome.error_class == "CONFIG"
    assert result.stop is not None and result.stop.kind == "stop" and "40164" in result.stop.reason


async def test_a_batch_started_after_a_stop_sends_nothing(sim: SimulatorProcess) -> None:
    ids = openids(5)
    follow(sim, ids)
    stop = StopSignal()
    stop.pause(45009, "quota")
    result = await run(sim, [row(i) for i in ids], stop=stop)
    assert result.outcomes == [] and result.not_attempted == 5
    assert sim.admin.counters().calls["template_send"] == 0


# -- StopSignal ------------------------------------------------------------------------------------


async def test_a_stop_from_another_thread_wakes_a_sleeper_on_the_run_loop() -> None:
    """A signal handler or a database thread may raise the stop: the sleeper wakes at once."""
    stop = StopSignal()
    sleeping = asyncio.create_task(stop.sleep(30))
    await asyncio.sleep(0.01)
    started = time.monotonic()

    def from_elsewhere() -> None:
        stop.pause(45009, "quota")
        stop.set("stop", "bad template", errcode=40037)  # more severe: replaces the pause
        stop.pause(45009, "quota again")  # milder: ignored

    await asyncio.to_thread(from_elsewhere)
    assert await asyncio.wait_for(sleeping, 5) is True
    assert time.monotonic() - started < 5
    assert (stop.kind, stop.errcode, stop.reason) == ("stop", 40037, "bad template")
    assert await stop.sleep(10) is True  # already stopped: returns at once


def test_retry_delays_use_full_jitter_and_wait_longer_for_45011() -> None:
    import random

    policy = RetryPolicy(base_delay=0.5, max_delay=8.0, minute_quota_delay=60)
    rng = random.Random(1)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (9, 8.0)]:
        delays = [policy.delay(retry, -1, rng) for _ in range(300)]
        assert 0 <= min(delays) < ceiling * 0.1 and ceiling * 0.9 < max(delays) <= ceiling
    quota = [policy.delay(1, 45011, rng) for _ in range(100)]
    assert min(quota) >= 60 and max(quota) <= 75


def test_the_batch_rejects_a_zero_concurrency() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(
            send_rows(
                [],
                spec=SPEC,
                campaign_id=CAMPAIGN,
                client=None,  # type: ignore[arg-type]
                token=TokenSource("t", Refresher(None)),  # type: ignore[arg-type]
                concurrency=0,
            )
        )


async def test_a_cancelled_batch_leaves_its_answers_with_the_caller(sim: SimulatorProcess) -> None:
    ids = openids(100)
    follow(sim, ids)
    sink: list[DeliveryOutcome] = []
    tokens = TokenSource(await stable_token(sim), Refresher(sim))
    async with WeChatClient(sim.base_url) as client:
        batch = asyncio.create_task(
            send_rows(
                [row(i) for i in ids],
                spec=SPEC,
                campaign_id=CAMPAIGN,
                client=client,
                token=tokens,
                limiter=RateLimiter(50),
                concurrency=4,
                outcomes=sink,
            )
        )
        await await_until(lambda: len(sink) >= 10, "ten answers are in")
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
    accepted = set(accepted_per_openid(sim))
    assert 5 <= len(sink) < 100
    assert all(o.status is DeliveryStatus.SENT for o in sink)
    assert {o.openid for o in sink} <= accepted
    assert len(accepted) - len(sink) <= 4, "only sends in flight at the cancel lack an outcome"


async def test_a_value_that_cannot_be_rendered_fails_only_its_row(sim: SimulatorProcess) -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

    ids = openids(3)
    follow(sim, ids)
    rows = [row(i) for i in ids]
    rows[1]["goods"] = Broken()
    result = await run(sim, rows)

    outcomes = by_openid(result)
    assert outcomes[ids[1]].status is DeliveryStatus.INVALID
    # The exception's class, never its text: that can quote the row (the ledger is value-free).
    assert outcomes[ids[1]].reason == "could not render the message (RuntimeError)"
    assert result.counts["sent"] == 2 and result.stop is None
