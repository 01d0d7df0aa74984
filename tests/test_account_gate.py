"""The engine's side of the account-wide limits (sending/account.py): a run deals out the
account's slots and daily quota from chunks, pauses on a spent quota before WeChat answers
45009, and gives back what it reserved and did not send. The limits live in memory here
(`MemoryLimits`); the database's are tested in test_account_limits_db.py and through the
flow in test_account_quota_campaign.py."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from db.outcomes import DeliveryStatus
from sending.account import (
    CHUNK_SECONDS,
    MIN_QUOTA_CHUNK,
    AccountGate,
    QuotaChunk,
    SlotChunk,
    chunk_size,
)
from sending.message import MessageSpec
from sending.ratelimit import RateLimiter
from sending.sender import TokenSource, send_rows
from tests.test_sender import FAST, SPEC, follow, openids, row, stable_token
from wechat.client import WeChatClient
from wechat.simulator.process import SimulatorProcess

DAY = date(2026, 11, 29)


class MemoryLimits:
    """One account's limits in memory, as the database holds them for many processes."""

    def __init__(
        self,
        *,
        rate: float | None = None,
        quota: int = 100_000,
        app_id: str = "wxmemory",
        clock: Any = time.monotonic,
    ) -> None:
        self.app_id = app_id
        self.rate_per_second = rate
        self.daily_quota = quota
        self.used = 0
        self.tat = float("-inf")
        self.slot_calls: list[int] = []
        self.quota_calls: list[int] = []
        self.given_back = 0
        self.fail: Exception | None = None
        self._clock = clock

    async def take_slots(self, n: int) -> SlotChunk:
        assert self.rate_per_second
        self.slot_calls.append(n)
        now = self._clock()
        start = max(self.tat, now)
        self.tat = start + n / self.rate_per_second
        return SlotChunk(n, start - now, 1 / self.rate_per_second)

    async def take_quota(self, n: int) -> QuotaChunk:
        if self.fail is not None:
            raise self.fail
        self.quota_calls.append(n)
        granted = min(n, max(self.daily_quota - self.used, 0))
        self.used += granted
        return QuotaChunk(granted, DAY, self.used, self.daily_quota)

    async def give_back(self, day: date, n: int) -> None:
        assert day == DAY
        self.used -= n
        self.given_back += n


async def send(
    sim: SimulatorProcess,
    rows: list[dict[str, Any]],
    limits: MemoryLimits,
    *,
    spec: MessageSpec = SPEC,
    concurrency: int = 8,
    limiter: RateLimiter | None = None,
    token: SecretStr | None = None,
) -> Any:
    token = token if token is not None else await stable_token(sim)
    tokens = TokenSource(token, lambda failed: stable_token(sim))
    async with WeChatClient(sim.base_url, timeout=5.0) as client:
        return await send_rows(
            rows,
            spec=spec,
            campaign_id="cmp-account",
            client=client,
            token=tokens,
            limiter=limiter,
            concurrency=concurrency,
            retry=FAST,
            account=limits,
        )


async def test_a_spent_quota_pauses_before_wechat_answers_45009(sim: SimulatorProcess) -> None:
    ids = openids(40)
    follow(sim, ids)
    limits = MemoryLimits(rate=400.0, quota=25)
    result = await send(sim, [row(i) for i in ids], limits)

    sent = [o for o in result.outcomes if o.status is DeliveryStatus.SENT]
    assert len(sent) == 25, "every message of the quota was sent, none beyond it"
    assert len(result.outcomes) == 25, "the rest were never attempted: a resume sends them"
    assert result.stop is not None and result.stop.kind == "pause"
    assert result.stop.error_class == "QUOTA" and result.stop.errcode is None
    assert "daily template quota of account wxmemory (25 messages) is reached" in result.stop.reason
    assert "Beijing day 2026-11-29" in result.stop.reason
    assert "wxpush campaign resume cmp-account" in result.stop.reason
    assert "wxpush setup --daily-quota" in result.stop.reason
    counters = sim.admin.counters()
    assert counters.accepted == 25
    assert 45009 not in counters.errcodes, counters.errcodes
    assert limits.used == 25, "nothing held back: the day's count is what was sent"


async def test_unused_quota_goes_back_when_the_run_ends(sim: SimulatorProcess) -> None:
    ids = openids(13)
    follow(sim, ids)
    limits = MemoryLimits()  # no rate: the quota chunk starts at MIN_QUOTA_CHUNK
    result = await send(sim, [row(i) for i in ids], limits, concurrency=4)

    assert result.counts["sent"] == 13
    assert sum(limits.quota_calls) > 13, "the run reserved more than it sent"
    assert limits.used == 13 and limits.given_back == sum(limits.quota_calls) - 13


async def test_recipient_errors_count_against_the_quota(sim: SimulatorProcess) -> None:
    """WeChat may count a refused call: the engine counts every attempt, so it pauses a
    little early rather than meet 45009."""
    ids = openids(6)
    follow(sim, ids[:3])
    follow(sim, ids[3:], blocked="refuse")
    limits = MemoryLimits()
    result = await send(sim, [row(i) for i in ids], limits, concurrency=2)
    assert result.counts["sent"] == 3 and result.counts["failed"] == 3
    assert limits.used == 6


async def test_customer_service_messages_do_not_count_against_the_template_quota(
    sim: SimulatorProcess,
) -> None:
    ids = openids(5)
    follow(sim, ids, last_interaction_at=datetime.now(UTC).isoformat())
    limits = MemoryLimits(quota=1)
    spec = MessageSpec(kind="customer_service", text="hello {goods}")
    result = await send(sim, [row(i) for i in ids], limits, spec=spec)
    assert result.counts["sent"] == 5 and result.stop is None
    assert limits.quota_calls == [] and limits.used == 0


async def test_limits_that_cannot_be_reached_pause_the_campaign(sim: SimulatorProcess) -> None:
    ids = openids(5)
    follow(sim, ids)
    limits = MemoryLimits()
    limits.fail = ConnectionError("the database went away\nsecond line")
    result = await send(sim, [row(i) for i in ids], limits)
    assert result.outcomes == [] and sim.admin.counters().accepted == 0
    assert result.stop is not None and result.stop.kind == "pause"
    assert result.stop.reason == (
        "could not reserve the account's send slots or quota (the database went away); "
        "resume (`wxpush campaign resume cmp-account`) once they can be reached"
    )


async def test_two_runs_share_the_accounts_quota(sim: SimulatorProcess) -> None:
    """Two runs of one account (two campaigns) at once: together exactly the quota."""
    ids = openids(60)
    follow(sim, ids)
    limits = MemoryLimits(rate=500.0, quota=37)
    # One token fetched first: both runs start in the same tick, not one a token fetch later
    # (on the suite's loaded machine the second's fetch once came back while the first,
    # nearly done, held the rest of the day in a prefetched chunk: 30 + 0 sent).
    token = await stable_token(sim)
    first, second = await asyncio.gather(
        send(sim, [row(i) for i in ids[:30]], limits, token=token),
        send(sim, [row(i) for i in ids[30:]], limits, token=token),
    )
    assert first.counts["sent"] + second.counts["sent"] == 37
    assert sim.admin.counters().accepted == 37
    assert limits.used == 37


# -- the gate alone, on a fake clock ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_slots_are_dealt_one_interval_apart_from_chunks() -> None:
    clock = FakeClock()
    limits = MemoryLimits(rate=200.0, clock=clock)
    gate = AccountGate(limits, counts_quota=False, clock=clock)
    assert gate.slot_chunk == chunk_size(200.0) == 20
    waits = [await gate.slot() for _ in range(100)]
    # 100 slots at 200/s from an idle account: 0, 5 ms, 10 ms, ... on the one schedule.
    assert waits == pytest.approx([k / 200 for k in range(100)])
    await asyncio.sleep(0)  # let the last prefetch land
    assert sum(limits.slot_calls) <= 100 + 2 * gate.slot_chunk, "at most a chunk ahead"
    assert set(limits.slot_calls) == {20}


async def test_a_slower_campaign_takes_smaller_chunks_of_the_account() -> None:
    """A campaign capped at 5/s holds at most a slot of an account allowed 100/s at a time,
    so the other campaigns of the account are not kept waiting behind its chunk."""
    gate = AccountGate(MemoryLimits(rate=100.0), counts_quota=True, campaign_rate=5.0)
    assert gate.slot_chunk == 1 and gate.quota_chunk == 1
    fast = AccountGate(MemoryLimits(rate=100.0), counts_quota=True, campaign_rate=None)
    assert fast.slot_chunk == fast.quota_chunk == round(100 * CHUNK_SECONDS)


async def test_without_a_rate_the_quota_chunk_follows_the_pace() -> None:
    clock = FakeClock()
    limits = MemoryLimits(clock=clock)
    gate = AccountGate(limits, counts_quota=True, clock=clock)
    assert gate.quota_chunk == MIN_QUOTA_CHUNK
    for _ in range(200):  # fast: each chunk lasts no time at all
        assert await gate.take_unit()
        await asyncio.sleep(0)
    assert max(limits.quota_calls) > MIN_QUOTA_CHUNK, "chunks grew"
    grown = gate.quota_chunk
    for _ in range(3 * grown):  # slow: a second per message
        clock.now += 1.0
        assert await gate.take_unit()
        await asyncio.sleep(0)
    assert gate.quota_chunk < grown, "chunks shrank again"
    await gate.close()
    assert limits.used == 200 + 3 * grown


async def test_a_unit_put_back_is_given_back_at_the_end() -> None:
    limits = MemoryLimits(quota=100)
    gate = AccountGate(limits, counts_quota=True, campaign_rate=1000.0)
    assert await gate.take_unit()
    gate.put_back()
    await gate.close()
    assert limits.used == 0
