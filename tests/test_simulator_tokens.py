"""Token endpoints of the simulator over real HTTP: classic and stable semantics, their
errcodes, and the token checks every API call makes (41001 / 40001 / 42001)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from tests.fixtures.simulator import WeChatHttp
from wechat.simulator.process import SimulatorProcess

RID = re.compile(r" rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{136,}$")


def assert_error(answer: dict, errcode: int, text: str) -> None:
    assert answer["errcode"] == errcode, answer
    assert answer["errmsg"].startswith(text), answer
    assert RID.search(answer["errmsg"]), answer


def test_classic_token_shape_and_every_call_issues_a_new_one(wx: WeChatHttp) -> None:
    first, second = wx.classic_token(), wx.classic_token()
    assert set(first) == {"access_token", "expires_in"}  # no errcode key on success
    assert first["expires_in"] == 7200
    assert TOKEN.match(first["access_token"]) and TOKEN.match(second["access_token"])
    assert first["access_token"] != second["access_token"]


def test_classic_token_errors(wx: WeChatHttp) -> None:
    assert_error(wx.classic_token(appid="wx0000000000000000"), 40013, "invalid appid")
    assert_error(wx.classic_token(secret="0" * 32), 40001, "invalid credential")
    assert_error(wx.classic_token(grant_type="password"), 40002, "invalid grant_type")
    assert_error(wx.classic_token(appid=""), 41002, "appid missing")
    assert_error(wx.classic_token(secret=""), 41004, "appsecret missing")


def test_classic_previous_token_dies_after_the_overlap_not_before(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    old = wx.classic_token()["access_token"]
    new = wx.classic_token()["access_token"]
    sim.admin.advance(299)
    assert wx.callback_ip(old) == {"ip_list": ["127.0.0.1"]}
    sim.admin.advance(2)
    assert_error(wx.callback_ip(old), 40001, "invalid credential, access_token is invalid")
    assert wx.callback_ip(new) == {"ip_list": ["127.0.0.1"]}


def test_classic_overlap_is_configurable(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.set_config(classic_overlap_seconds=0)
    old = wx.classic_token()["access_token"]
    wx.classic_token()
    assert_error(wx.callback_ip(old), 40001, "invalid credential")


def test_classic_daily_limit(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.set_config(classic_token_daily_limit=2)
    wx.classic_token(), wx.classic_token()
    assert_error(wx.classic_token(), 45009, "reach max api daily quota limit")
    sim.admin.advance(sim.admin.clock().seconds_to_next_day + 1)
    assert "access_token" in wx.classic_token()


def test_stable_token_is_shared_by_concurrent_callers(wx: WeChatHttp) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: wx.stable_token(), range(16)))
    assert len({a["access_token"] for a in answers}) == 1
    assert all(0 < a["expires_in"] <= 7200 for a in answers)


def test_stable_expires_in_is_the_remaining_life(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    first = wx.stable_token()
    sim.admin.advance(1000)
    later = wx.stable_token()
    assert later["access_token"] == first["access_token"]
    assert 6199 <= later["expires_in"] <= 6200


def test_stable_rolls_in_the_last_300s_and_both_stay_valid(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    old = wx.stable_token()["access_token"]
    sim.admin.advance(7200 - 301)
    assert wx.stable_token()["access_token"] == old  # 301 s left: not yet
    sim.admin.advance(2)
    rolled = wx.stable_token()
    assert rolled["access_token"] != old and rolled["expires_in"] == 7200
    assert wx.stable_token()["access_token"] == rolled["access_token"]  # the new one is shared
    assert "ip_list" in wx.callback_ip(old) and "ip_list" in wx.callback_ip(rolled["access_token"])
    sim.admin.advance(300)
    assert_error(wx.callback_ip(old), 42001, "access_token expired")
    assert "ip_list" in wx.callback_ip(rolled["access_token"])


def test_stable_token_errors(wx: WeChatHttp) -> None:
    assert_error(wx.stable_token(secret="0" * 32), 40125, "invalid appsecret")
    assert_error(wx.stable_token(appid="wx0000000000000000"), 40013, "invalid appid")
    assert_error(wx.stable_token(grant_type="x"), 40002, "invalid grant_type")
    assert_error(wx.stable_token(force_refresh="yes"), 47001, "data format error")
    as_get = wx.http.get("/cgi-bin/stable_token").json()
    assert_error(as_get, 44002, "empty post data")
    bad_json = wx.http.post("/cgi-bin/stable_token", content=b"{not json").json()
    assert_error(bad_json, 47001, "data format error")
    empty = wx.http.post("/cgi-bin/stable_token", content=b"").json()
    assert_error(empty, 44002, "empty post data")


def test_force_refresh_invalidates_the_old_stable_token(wx: WeChatHttp) -> None:
    old = wx.stable_token()["access_token"]
    new = wx.stable_token(force_refresh=True)["access_token"]
    assert new != old
    assert_error(wx.callback_ip(old), 40001, "invalid credential")
    assert "ip_list" in wx.callback_ip(new)
    assert wx.stable_token()["access_token"] == new


def test_force_refresh_within_30s_returns_the_current_token(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    first = wx.stable_token(force_refresh=True)["access_token"]
    sim.admin.advance(29)
    assert wx.stable_token(force_refresh=True)["access_token"] == first
    sim.admin.advance(2)
    assert wx.stable_token(force_refresh=True)["access_token"] != first


def test_force_refresh_daily_limit_then_next_day(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    if sim.admin.clock().seconds_to_next_day < 21 * 31:  # the loop must not cross midnight
        sim.admin.advance(sim.admin.clock().seconds_to_next_day + 1)
    for _ in range(20):
        assert "access_token" in wx.stable_token(force_refresh=True)
        sim.admin.advance(31)
    assert_error(wx.stable_token(force_refresh=True), 45009, "reach max api daily quota limit")
    assert "access_token" in wx.stable_token()  # normal mode is not rationed
    sim.admin.advance(sim.admin.clock().seconds_to_next_day + 1)
    assert "access_token" in wx.stable_token(force_refresh=True)
    counters = sim.admin.counters()
    assert counters.calls["stable_token_force"] == 22
    assert counters.errcodes == {45009: 1}


def test_stable_and_classic_tokens_are_isolated(wx: WeChatHttp) -> None:
    stable = wx.stable_token()["access_token"]
    classic = wx.classic_token()["access_token"]
    wx.classic_token(), wx.classic_token()  # supersedes classic tokens only
    wx.stable_token(force_refresh=True)  # invalidates stable tokens only
    assert_error(wx.callback_ip(stable), 40001, "invalid credential")
    assert "ip_list" in wx.callback_ip(classic)  # still inside its overlap


def test_token_checks_on_api_calls(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    assert_error(wx.callback_ip(None), 41001, "access_token missing")
    assert_error(wx.callback_ip("not-a-token"), 40001, "invalid credential")
    assert_error(wx.send_template(None), 41001, "access_token missing")
    token = wx.token()
    sim.admin.advance(7201)
    assert_error(wx.callback_ip(token), 42001, "access_token expired")
    assert_error(wx.send_template(token), 42001, "access_token expired")


def test_rotate_invalidates_every_current_token(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    stable, classic = wx.token(), wx.classic_token()["access_token"]
    sim.admin.rotate_tokens()
    assert_error(wx.callback_ip(stable), 40001, "invalid credential")
    assert_error(wx.callback_ip(classic), 40001, "invalid credential")
    fresh = wx.token()
    assert fresh != stable and "ip_list" in wx.callback_ip(fresh)


def test_tokens_issued_are_counted(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    wx.token(), wx.token(), wx.classic_token()
    counters = sim.admin.counters()
    assert counters.tokens_issued == {"classic": 1, "stable": 1}
    assert counters.calls["stable_token"] == 2 and counters.calls["token"] == 1


def test_token_endpoint_answers_json_like_wechat(wx: WeChatHttp) -> None:
    response = wx.http.get("/cgi-bin/token", params={"grant_type": "client_credential"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; encoding=utf-8"
    assert_error(response.json(), 41002, "appid missing")
