"""The circuit breaker (sending/breaker.py) on a hand-driven clock, and the send engine's use
of it with a stub sender: no servers, no sleeps in the tests.

The engine tests give the breaker millisecond probe intervals on the real clock; what they
assert is counts and outcomes (who was sent, how many attempts, which stop), never timing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from db.outcomes import DeliveryStatus
from sending.breaker import Breaker, BreakerPolicy
from sending.message import MessageSpec
from sending.sender import RetryPolicy, StopCause, StopSignal, TokenSource, send_rows
from tasks.params import CampaignParams, DigestParams
from wechat.errors import TransportError, WeChatError, api_error
from wechat.models import SendResult


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **policy: Any) -> Breaker:
    values: dict[str, Any] = {"window": 10, "share": 0.5, "min_attempts": 10}
    values.update(policy)
    return Breaker(BreakerPolicy(**values), clock=clock)


def answers(b: Breaker, *failed: bool) -> list[bool]:
    """Report answers in order; what `failed` returned for each failure (True: held)."""
    return [b.failed() if f else (b.passed() or False) for f in failed]


# -- opening -------------------------------------------------------------------------------------


def test_it_opens_only_when_more_than_the_share_failed_and_enough_were_seen() -> None:
    clock = Clock()
    b = breaker(clock)
    assert answers(b, *[True] * 9) == [False] * 9, "9 failures are fewer than min_attempts"
    assert b.closed
    assert b.failed() is True, "the 10th: 10 of 10 failed, the failure that opens is held"
    assert not b.closed and b.opened == 1

    b = breaker(clock)
    answers(b, *[False] * 5, *[True] * 5)
    assert b.closed, "exactly the share (5 of 10) is not more than it"
    assert b.failed() is True and not b.closed, "6 of the last 10"


def test_the_window_slides_old_failures_out() -> None:
    b = breaker(Clock())
    answers(b, *[True] * 5, *[False] * 5)  # 5 of 10
    answers(b, *[False] * 5)  # the 5 failures slid out: 0 of 10
    assert answers(b, *[True] * 5) == [False] * 5 and b.closed  # 5 of 10 again
    assert b.failed() is True and not b.closed  # 6 of 10


def test_a_share_of_one_never_opens() -> None:
    b = breaker(Clock(), share=1.0)
    assert answers(b, *[True] * 100) == [False] * 100 and b.closed


# -- probing and closing ---------------------------------------------------------------------------


def test_one_probe_at_a_time_at_a_growing_interval_with_a_cap() -> None:
    clock = Clock()
    b = breaker(clock, first_probe=1.0, max_probe_interval=4.0, give_up_seconds=3600)
    answers(b, *[True] * 10)
    assert b.turn() == pytest.approx(1.0), "the first probe one second after opening"
    gaps = []
    for _ in range(5):
        wait = b.turn()
        assert wait is not None
        clock.now += wait
        assert b.turn() is None, "due: this caller is the probe"
        assert b.turn() == pytest.approx(4.0), "a probe is out: everyone else waits"
        clock.now += 0.5
        assert b.failed(probe=True) is True, "a failed probe is held, not counted"
        gaps.append(b.turn())
    assert gaps == pytest.approx([2.0, 4.0, 4.0, 4.0, 4.0]), "1 s, 2 s, 4 s … capped at 4 s"
    assert not b.closed and b.outage().probes == 5


def test_answers_of_attempts_started_before_it_opened_do_not_close_it() -> None:
    b = breaker(Clock())
    answers(b, *[True] * 10)
    b.passed()  # an attempt in flight when it opened, answered now
    assert not b.closed
    assert b.failed() is True and b.outage().failed == 11


def test_a_probe_answered_closes_it_with_a_fresh_window() -> None:
    clock = Clock()
    b = breaker(clock)
    answers(b, *[True] * 10)
    clock.now += 1.0
    assert b.turn() is None
    clock.now += 0.2
    b.passed(probe=True)  # sent, or any answer that is not RETRY-class
    assert b.closed
    assert b.outage().seconds == pytest.approx(1.2)
    assert answers(b, *[True] * 9) == [False] * 9, "the outage's failures are forgotten"
    assert b.closed


def test_a_storm_is_failures_in_a_row_and_needs_a_breaker_that_can_open() -> None:
    b = breaker(Clock())
    answers(b, True, True, False, True, True)
    assert b.storm(2) and not b.storm(3), "the last two answers failed, not the last three"
    b = breaker(Clock(), share=1.0)
    answers(b, *[True] * 5)
    assert not b.storm(1), "a breaker that never opens must not keep messages retrying"


def test_a_withdrawn_probe_lets_the_next_caller_probe() -> None:
    clock = Clock()
    b = breaker(clock)
    answers(b, *[True] * 10)
    clock.now += 1.0
    assert b.turn() is None
    b.withdraw()
    assert b.turn() is None


def test_it_expires_after_the_limit_and_never_waits_past_it() -> None:
    clock = Clock()
    b = breaker(clock, first_probe=1.0, max_probe_interval=30.0, give_up_seconds=10.0)
    answers(b, *[True] * 10)
    waited = 0.0
    while not b.expired():
        wait = b.turn()
        if wait is None:
            clock.now += 0.1
            b.failed(probe=True)
            continue
        assert waited + wait <= 10.0 + 1e-9, "no wait reaches past the limit"
        clock.now += wait
        waited = clock.now - 1000.0
    outage = b.outage()
    assert outage.seconds == pytest.approx(10.0)
    assert (outage.window_failed, outage.window_size) == (10, 10)
    assert outage.probes >= 3 and outage.failed == 10 + outage.probes


# -- the knobs ------------------------------------------------------------------------------------


def test_the_forms_share_the_knobs_with_sane_defaults() -> None:
    p = CampaignParams(name="x", template_id="t", data={"a": "b"})
    assert (p.breaker_share, p.breaker_window, p.breaker_give_up_minutes) == (0.5, 50, 5.0)
    digest = DigestParams(breaker_share=0.3, breaker_window=20).campaign(date(2026, 11, 27))
    assert (digest.breaker_share, digest.breaker_window) == (0.3, 20)
    with pytest.raises(ValidationError):
        CampaignParams(name="x", template_id="t", data={"a": "b"}, breaker_give_up_minutes=30)
    schema = CampaignParams.model_json_schema()["properties"]
    titles = [schema[k]["title"] for k in ("breaker_share", "breaker_window")]
    assert all(t and "_" not in t for t in titles), titles


# -- the engine ------------------------------------------------------------------------------------

SPEC = MessageSpec(template_id="tpl", data={"thing1": "{name}"})
FAST_RETRY = RetryPolicy(max_attempts=2, base_delay=0.0005, max_delay=0.001)


class StubWeChat:
    """`send_template` answers from a script: `fail(openid, n)` → an error or None (sent)."""

    def __init__(self, fail: Callable[[str, int], WeChatError | None]) -> None:
        self.fail = fail
        self.calls: list[str] = []
        self.sent: list[str] = []

    async def send_template(self, token: Any, message: Any) -> SendResult:
        openid = message.touser
        self.calls.append(openid)
        error = self.fail(openid, len(self.calls))
        if error is not None:
            raise error
        self.sent.append(openid)
        return SendResult(msgid=len(self.calls))


async def _send(
    stub: StubWeChat, n: int, policy: BreakerPolicy | Breaker, **kw: Any
) -> tuple[Any, StopSignal]:
    stop = StopSignal()

    async def no_refresh(_: Any) -> Any:
        raise AssertionError("no token refresh expected")

    result = await send_rows(
        [{"openid": f"o{i:03d}", "name": "x"} for i in range(n)],
        spec=SPEC,
        campaign_id="breaker-unit",
        client=stub,  # type: ignore[arg-type]
        token=TokenSource("t", no_refresh),
        concurrency=kw.pop("concurrency", 4),
        retry=kw.pop("retry", FAST_RETRY),
        stop=stop,
        breaker=policy,
        **kw,
    )
    return result, stop


def _busy() -> WeChatError:
    return api_error(-1, "system error", endpoint="template/send")


async def test_an_outage_holds_messages_without_burning_their_attempts() -> None:
    # Calls 31..70 fail (-1): the outage. With 3 attempts per message and no breaker, the
    # messages tried in it would end failed; with it, every message is sent once. The first
    # retry waits up to 0.5 s: no message can fail three times in the few calls (microseconds)
    # before the breaker opens, so every one of its later failures is one the breaker held.
    stub = StubWeChat(lambda _openid, call: _busy() if 31 <= call <= 70 else None)
    policy = BreakerPolicy(window=10, min_attempts=10, first_probe=0.001, max_probe_interval=0.004)
    retry = RetryPolicy(max_attempts=3)
    result, stop = await _send(stub, 100, policy, retry=retry)

    assert stop.stop is None
    assert result.counts["sent"] == 100, result.counts
    assert sorted(stub.sent) == sorted(set(stub.sent)) and len(stub.sent) == 100
    assert len(stub.calls) == 140
    held = [o for o in result.outcomes if o.attempts > retry.max_attempts]
    assert held, "some messages were tried more often than their own attempts allow"


async def test_one_send_at_a_time_in_an_outage_fails_no_message() -> None:
    # One attempt per message and one send at a time: the window fills at the pace of one
    # message's retries. Without the breaker every failure would end its message; with it,
    # a message whose failures are the run's (every answer since failed too) waits on, the
    # 4th failure in a row opens the breaker, and the probes carry on until WeChat is back.
    stub = StubWeChat(lambda _openid, call: _busy() if 3 <= call <= 40 else None)
    policy = BreakerPolicy(window=4, min_attempts=4, first_probe=0.001, max_probe_interval=0.002)
    b = Breaker(policy)
    result, stop = await _send(stub, 12, b, concurrency=1, retry=RetryPolicy(max_attempts=1))

    assert result.counts["sent"] == 12 and result.counts["failed"] == 0, result.counts
    assert stop.stop is None and b.opened == 1
    third = next(o for o in result.outcomes if o.openid == "o002")
    assert third.attempts == 40 - 3 + 2, "the outage's every attempt was the third message's"


async def test_a_message_failing_alone_still_gives_up() -> None:
    # Only o001 fails: the others' answers show WeChat works, so it is o001's own failure.
    stub = StubWeChat(lambda openid, _call: _busy() if openid == "o001" else None)
    policy = BreakerPolicy(window=10, min_attempts=10)
    b = Breaker(policy)
    retry = RetryPolicy(max_attempts=3, base_delay=0.002, max_delay=0.004)
    result, stop = await _send(stub, 40, b, concurrency=4, retry=retry)

    failed = [o for o in result.outcomes if o.status is DeliveryStatus.FAILED]
    assert [(o.openid, o.attempts, o.error_class) for o in failed] == [("o001", 3, "RETRY")]
    assert failed[0].reason.startswith("gave up after 3 attempts")
    assert result.counts["sent"] == 39 and b.opened == 0 and stop.stop is None


async def test_45011_is_an_answer_to_the_breaker() -> None:
    stub = StubWeChat(
        lambda _openid, call: (
            api_error(45011, "api minute-quota reach limit", endpoint="template/send")
            if call <= 20
            else None
        )
    )
    policy = BreakerPolicy(window=10, min_attempts=10, give_up_seconds=0.05)
    retry = RetryPolicy(max_attempts=20, minute_quota_delay=0.001)
    b = Breaker(policy)
    result, stop = await _send(stub, 20, b, retry=retry)

    assert b.opened == 0 and stop.stop is None
    assert result.counts["sent"] == 20


async def test_open_past_the_limit_pauses_with_the_breaker_cause() -> None:
    stub = StubWeChat(lambda _openid, _call: TransportError("HTTP 502", status_code=502))
    policy = BreakerPolicy(
        window=10,
        min_attempts=10,
        first_probe=0.001,
        max_probe_interval=0.002,
        give_up_seconds=0.05,
    )
    result, stop = await _send(stub, 50, policy, retry=RetryPolicy(max_attempts=50))

    assert stop.stop is not None and stop.stop.kind == "pause"
    assert stop.stop.cause is StopCause.BREAKER
    reason = stop.stop.reason
    assert "WeChat's API kept failing" in reason and "10 of the last 10" in reason
    assert "`wxpush campaign resume breaker-unit`" in reason
    assert result.counts["failed"] == 0, "no message gave up during the outage"
    assert len(stub.calls) < 10 + 4 + 60, "the window, the sends in flight, and probes"
