"""The client against the simulator over real HTTP on 127.0.0.1.

Every errcode the simulator implements is produced here and must arrive as the right
exception class; and the token semantics that make wxpush safe to run on many workers hold
across threads and processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx
import pytest

from wechat import errors
from wechat.client import WeChatClient
from wechat.errors import ErrorClass
from wechat.models import CustomMessage, SubscribeMessage, TemplateMessage

TEMPLATE = "tmpl-order-shipped-0000000000000000000000000"
FIELDS = ["thing1", "character_string2", "time3"]
GOOD = {
    "thing1": "Your order shipped",
    "character_string2": "SF1234567890",
    "time3": "2026-11-26 15:01",
}


def admin(sim: Any, method: str, path: str, body: Any = None) -> Any:
    """Call the simulator's admin API directly (its contract is /_sim/…)."""
    response = httpx.request(method, f"{sim.base_url}/_sim/{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json() if response.content else None


def follower(openid: str, **fields: Any) -> dict[str, Any]:
    return {"openid": openid, "subscribed": True, **fields}


@pytest.fixture
def account(sim: Any) -> Any:
    admin(sim, "POST", "templates", {"template_id": TEMPLATE, "keys": FIELDS})
    admin(
        sim,
        "POST",
        "followers",
        [
            follower("o-ok"),
            follower("o-gone", subscribed=False),
            follower("o-black", blocked="blacklist"),
            follower("o-refuse", blocked="refuse"),
            follower("o-old", last_interaction_at=0),
            follower("o-authorized", subscribe_authorizations={TEMPLATE: 1}),
        ],
    )
    return sim


@pytest.fixture
async def client(account: Any):
    async with WeChatClient(account.base_url, timeout=3.0) as c:
        yield c


async def token(client: WeChatClient, sim: Any) -> str:
    return (await client.stable_token(sim.app_id, sim.app_secret)).access_token.get_secret_value()


def message(touser: str = "o-ok", **overrides: Any) -> TemplateMessage:
    fields: dict[str, Any] = {"data": dict(GOOD), **overrides}
    return TemplateMessage(touser=touser, template_id=TEMPLATE, **fields)


async def expect(
    coro: Any, exc_type: type[errors.WeChatError], errcode: int | None
) -> errors.WeChatError:
    with pytest.raises(exc_type) as info:
        await coro
    assert info.value.errcode == errcode
    return info.value


# -- every errcode, classified ------------------------------------------------------------


async def test_token_fetch_config_errors(client: WeChatClient, sim: Any) -> None:
    await expect(
        client.stable_token("wx0000000000000000", sim.app_secret), errors.ConfigError, 40013
    )
    await expect(
        client.classic_token("wx0000000000000000", sim.app_secret), errors.ConfigError, 40013
    )
    await expect(client.stable_token(sim.app_id, "0" * 32), errors.ConfigError, 40125)
    # /cgi-bin/token answers 40001 to a wrong secret: a CONFIG problem there, not a stale token.
    await expect(client.classic_token(sim.app_id, "0" * 32), errors.ConfigError, 40001)


async def test_token_errors_on_api_calls(client: WeChatClient, sim: Any) -> None:
    await expect(client.send_template("", message()), errors.RequestError, 41001)
    await expect(client.send_template("not-a-token", message()), errors.TokenError, 40001)
    expired = await client.stable_token(sim.app_id, sim.app_secret)
    admin(sim, "POST", "clock", {"advance_seconds": expired.expires_in + 1})
    exc = await expect(
        client.send_template(expired.access_token, message()), errors.TokenError, 42001
    )
    assert exc.error_class is ErrorClass.REFRESH


async def test_recipient_errors(client: WeChatClient, sim: Any) -> None:
    tok = await token(client, sim)
    for openid, code in [
        ("o-nobody", 40003),
        ("o-gone", 43004),
        ("o-black", 43019),
        ("o-refuse", 48002),
    ]:
        exc = await expect(client.send_template(tok, message(openid)), errors.RecipientError, code)
        assert exc.rid, "the simulator appends a rid to errmsg like WeChat"


async def test_request_errors_name_the_problem(client: WeChatClient, sim: Any) -> None:
    tok = await token(client, sim)
    unknown = TemplateMessage(touser="o-ok", template_id="tmpl-nope", data=dict(GOOD))
    await expect(client.send_template(tok, unknown), errors.RequestError, 40037)
    too_long = message(data={**GOOD, "thing1": "x" * 21})
    exc = await expect(client.send_template(tok, too_long), errors.RequestError, 47003)
    assert "thing1" in exc.errmsg
    nothing = admin(sim, "GET", "messages")
    assert _items(nothing) == []


def _items(payload: Any) -> list[dict[str, Any]]:
    return payload["items"] if isinstance(payload, dict) else payload


async def test_success_dedupe_and_64_bit_msgid(client: WeChatClient, sim: Any) -> None:
    tok = await token(client, sim)
    first = await client.send_template(tok, message(client_msg_id="c-1"))
    again = await client.send_template(tok, message(client_msg_id="c-1"))
    other = await client.send_template(tok, message(client_msg_id="c-2"))
    assert first.msgid is not None and first.msgid > 2**53
    assert again.msgid == first.msgid
    assert other.msgid != first.msgid
    accepted = _items(admin(sim, "GET", "messages"))
    assert sorted(m["client_msg_id"] for m in accepted) == ["c-1", "c-2"]


async def test_daily_quota_is_quota_class(client: WeChatClient, sim: Any) -> None:
    admin(sim, "POST", "config", {"daily_quota": 2})
    tok = await token(client, sim)
    await client.send_template(tok, message(client_msg_id="q1"))
    await client.send_template(tok, message(client_msg_id="q2"))
    await expect(client.send_template(tok, message(client_msg_id="q3")), errors.QuotaError, 45009)


async def test_customer_service_window_and_subscribe_authorization(
    client: WeChatClient, sim: Any
) -> None:
    tok = await token(client, sim)
    text = {"content": "hello"}
    await client.send_custom(tok, CustomMessage(touser="o-ok", content=text))
    await expect(
        client.send_custom(tok, CustomMessage(touser="o-old", content=text)),
        errors.RecipientError,
        45015,
    )
    sub = SubscribeMessage(touser="o-authorized", template_id=TEMPLATE, data=dict(GOOD))
    assert (await client.send_subscribe(tok, sub)).msgid is not None
    await expect(client.send_subscribe(tok, sub), errors.RecipientError, 43101)


@pytest.mark.parametrize(
    ("faults", "exc_type", "errcode"),
    [
        ({"minus_one_rate": 1.0}, errors.RetryableError, -1),
        ({"http_5xx_rate": 1.0, "http_5xx_status": 502}, errors.TransportError, None),
        ({"drop_rate": 1.0}, errors.TransportError, None),
        ({"slow_rate": 1.0, "slow_seconds": 5.0}, errors.TransportError, None),
    ],
)
async def test_faults_are_retryable(
    client: WeChatClient, sim: Any, faults: dict[str, Any], exc_type: type, errcode: int | None
) -> None:
    tok = await token(client, sim)
    admin(sim, "POST", "faults", {"seed": 7, **faults})
    exc = await expect(client.send_template(tok, message()), exc_type, errcode)
    assert exc.error_class is ErrorClass.RETRY
    admin(sim, "POST", "faults", {"seed": 7})
    assert _items(admin(sim, "GET", "messages")) == [], "a faulted request is not a send"


async def test_rate_limit_answers_45011(client: WeChatClient, sim: Any) -> None:
    tok = await token(client, sim)
    admin(sim, "POST", "faults", {"rate_limit_per_second": 3})
    results = await asyncio.gather(
        *(client.send_template(tok, message(client_msg_id=f"r{i}")) for i in range(12)),
        return_exceptions=True,
    )
    limited = [r for r in results if isinstance(r, errors.RetryableError)]
    assert limited and all(r.errcode == 45011 for r in limited)
    assert sum(1 for r in results if not isinstance(r, Exception)) <= 6


# -- token semantics ------------------------------------------------------------------------


async def test_classic_token_invalidates_previous_after_overlap(
    client: WeChatClient, sim: Any
) -> None:
    first = await client.classic_token(sim.app_id, sim.app_secret)
    second = await client.classic_token(sim.app_id, sim.app_secret)
    assert first.access_token.get_secret_value() != second.access_token.get_secret_value()
    await client.check_token(first.access_token)  # still inside the overlap
    admin(sim, "POST", "clock", {"advance_seconds": 301})
    await expect(client.check_token(first.access_token), errors.TokenError, 40001)
    await client.check_token(second.access_token)


async def test_force_refresh_limits(client: WeChatClient, sim: Any) -> None:
    clock = admin(sim, "GET", "clock")
    if clock["seconds_to_next_day"] < 120:  # the daily count must not reset mid-test
        admin(sim, "POST", "clock", {"advance_seconds": clock["seconds_to_next_day"] + 1})
    old = await client.stable_token(sim.app_id, sim.app_secret)
    new = await client.stable_token(sim.app_id, sim.app_secret, force_refresh=True)
    assert new.access_token.get_secret_value() != old.access_token.get_secret_value()
    await expect(client.check_token(old.access_token), errors.TokenError, 40001)
    # Within 30 s a force call does not refresh: the same token comes back.
    same = await client.stable_token(sim.app_id, sim.app_secret, force_refresh=True)
    assert same.access_token.get_secret_value() == new.access_token.get_secret_value()
    admin(sim, "POST", "config", {"force_refresh_daily_limit": 2})
    admin(sim, "POST", "clock", {"advance_seconds": 31})
    await client.stable_token(sim.app_id, sim.app_secret, force_refresh=True)
    admin(sim, "POST", "clock", {"advance_seconds": 31})
    await expect(
        client.stable_token(sim.app_id, sim.app_secret, force_refresh=True),
        errors.QuotaError,
        45009,
    )


def _refresh_and_send(base_url: str, app_id: str, app_secret: str, rounds: int) -> list[str]:
    """One refresher: fetch the stable token repeatedly and use it each time."""

    async def run() -> list[str]:
        seen = []
        async with WeChatClient(base_url) as c:
            for _ in range(rounds):
                tok = await c.stable_token(app_id, app_secret)
                await c.check_token(tok.access_token)
                seen.append(tok.access_token.get_secret_value())
        return seen

    return asyncio.run(run())


def test_stable_refreshers_in_threads_never_invalidate_each_other(account: Any) -> None:
    sim = account
    results: list[list[str]] = []
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(_refresh_and_send(sim.base_url, sim.app_id, sim.app_secret, 10))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert len({tok for seen in results for tok in seen}) == 1


def test_stable_refreshers_in_processes_never_invalidate_each_other(account: Any) -> None:
    sim = account
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = [
            pool.submit(_refresh_and_send, sim.base_url, sim.app_id, sim.app_secret, 10)
            for _ in range(2)
        ]
        results = [f.result(timeout=120) for f in futures]
    assert len({tok for seen in results for tok in seen}) == 1
    counters = admin(sim, "GET", "counters")
    assert "40001" not in {str(k) for k in counters.get("errcodes", {})}
