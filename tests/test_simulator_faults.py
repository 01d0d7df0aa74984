"""Injected faults over real HTTP: reproducible from a seed, a dropped connection is a real TCP
close with no answer, 5xx and slow answers, the 45011 send-rate limit; none of them sends."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fixtures.simulator import WeChatHttp
from tests.waiting import wait_until
from wechat.simulator.defaults import DEMO_OPENID, DEMO_TEMPLATE_ID, demo_template_data
from wechat.simulator.process import SimulatorProcess

MIXED = {"seed": 42, "minus_one_rate": 0.25, "http_5xx_rate": 0.25, "drop_rate": 0.15}


def outcome(wx: WeChatHttp, token: str) -> str:
    """One template send, summarised: ok / -1 / http-502 / drop."""
    try:
        response = wx.post("message/template/send", token, json=_demo_body())
    except httpx.TransportError:
        return "drop"
    if response.status_code != 200:
        return f"http-{response.status_code}"
    return "ok" if response.json()["errcode"] == 0 else str(response.json()["errcode"])


def _demo_body() -> dict:
    return {"touser": DEMO_OPENID, "template_id": DEMO_TEMPLATE_ID, "data": demo_template_data()}


def test_same_seed_same_outcomes(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    sim.admin.set_faults(**MIXED)
    first = [outcome(wx, token) for _ in range(40)]
    sim.admin.set_faults(**MIXED)  # re-seeds
    second = [outcome(wx, token) for _ in range(40)]
    sim.admin.set_faults(**{**MIXED, "seed": 43})
    other = [outcome(wx, token) for _ in range(40)]
    assert first == second
    assert other != first
    assert {"ok", "-1", "http-502", "drop"} <= set(first)


def test_faulted_requests_are_counted_and_never_sent(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    sim.admin.set_faults(**MIXED)
    outcomes = [outcome(wx, token) for _ in range(40)]
    counters = sim.admin.counters()
    assert counters.faults["minus_one"] == outcomes.count("-1")
    assert counters.faults["http_5xx"] == outcomes.count("http-502")
    assert counters.faults["drop"] == outcomes.count("drop")
    assert counters.errcodes.get(-1, 0) == outcomes.count("-1")
    assert counters.accepted == outcomes.count("ok") == sim.admin.messages().total
    assert counters.calls["template_send"] == 40


def test_minus_one_answer_shape(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    sim.admin.set_faults(minus_one_rate=1.0)
    answer = wx.send_template(token)
    assert answer["errcode"] == -1 and answer["errmsg"].startswith("system error rid: ")


def test_http_5xx_has_the_configured_status_and_an_html_body(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    token = wx.token()
    sim.admin.set_faults(http_5xx_rate=1.0, http_5xx_status=503)
    response = wx.post("message/template/send", token, json=_demo_body())
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert "503 Service Unavailable" in response.text


def test_dropped_connection_sends_no_bytes_at_all(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    sim.admin.set_faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        wx.post("message/template/send", token, json=_demo_body())
    # The same at the socket level: the server reads the request and closes (EOF, no status).
    address = urlsplit(sim.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as raw:
        request = (
            f"POST /cgi-bin/message/template/send?access_token={token} HTTP/1.1\r\n"
            f"Host: {address.netloc}\r\nContent-Length: 2\r\n\r\n{{}}"
        )
        raw.sendall(request.encode())
        assert raw.recv(1024) == b""
    assert sim.admin.messages().total == 0


def test_slow_answers_do_not_block_other_requests(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    sim.admin.set_faults(slow_rate=1.0, slow_seconds=0.6)
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        slow = pool.submit(wx.send_template, token)
        wait_until(lambda: sim.admin.counters().faults["slow"] == 1, "the send is being slowed")
        assert "ip_list" in wx.callback_ip(token)  # not a send: never faulted
        fast_done = time.monotonic() - started
        answer = slow.result(timeout=10)
        slow_done = time.monotonic() - started
    assert fast_done < 0.5 <= slow_done
    assert answer["errcode"] == 0  # a slow answer is still an answer: the message is sent
    assert sim.admin.messages().total == 1 and sim.admin.counters().faults["slow"] == 1


def test_a_reset_drops_slow_requests_in_flight(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    sim.admin.set_faults(slow_rate=1.0, slow_seconds=0.5)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(wx.send_template, token)
        wait_until(lambda: sim.admin.counters().faults["slow"] == 1, "the send is being slowed")
        sim.admin.reset()
        with pytest.raises(httpx.TransportError):
            slow.result(timeout=10)
    assert sim.admin.messages().total == 0


def test_rate_limit_answers_45011(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    sim.admin.set_faults(rate_limit_per_second=5)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: wx.send_template(token), range(24)))
    seconds_spanned = int(time.monotonic() - started) + 2  # fixed windows: at most this many
    codes = [a["errcode"] for a in answers]
    limited = [a for a in answers if a["errcode"] == 45011]
    assert limited and all(
        a["errmsg"].startswith("api minute-quota reach limit mustslower retry next minute")
        for a in limited
    )
    assert 5 <= codes.count(0) <= 5 * seconds_spanned
    counters = sim.admin.counters()
    assert counters.faults["rate_limited"] == len(limited) == counters.errcodes[45011]
    assert counters.accepted == codes.count(0)


def test_token_endpoints_are_spared_unless_configured(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    sim.admin.set_faults(minus_one_rate=1.0)
    assert "access_token" in wx.stable_token()
    assert "access_token" in wx.classic_token()
    sim.admin.set_faults(minus_one_rate=1.0, apply_to_token_endpoints=True)
    assert wx.stable_token()["errcode"] == -1
    assert wx.classic_token()["errcode"] == -1
    assert sim.admin.counters().tokens_issued == {"classic": 1, "stable": 1}


def test_fault_config_is_validated_and_replaced(sim: SimulatorProcess) -> None:
    response = httpx.post(f"{sim.base_url}/_sim/faults", json={"drop_rate": 0.7, "slow_rate": 0.5})
    assert response.status_code == 400
    sim.admin.set_faults(drop_rate=0.5, seed=9)
    after = sim.admin.set_faults(seed=9)  # a new profile: drop_rate back to 0
    assert after.drop_rate == 0 and sim.admin.faults() == after
