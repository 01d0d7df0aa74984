"""The admin API (/_sim/…) through SimulatorAdmin and raw HTTP: followers in bulk, templates,
message listing (filters, paging, cursor, exact 64-bit msgids), config, clock, reset, health."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.fixtures.simulator import WeChatHttp
from wechat.simulator.defaults import (
    DEMO_APP_ID,
    DEMO_OPENID,
    DEMO_TEMPLATE_ID,
    DEMO_TEMPLATE_KEYS,
)
from wechat.simulator.process import SimulatorProcess


def test_health_describes_the_demo_account(sim: SimulatorProcess) -> None:
    health = sim.admin.health()
    assert (health.status, health.app_id) == ("ok", DEMO_APP_ID)
    assert (health.followers, health.templates, health.messages) == (1, 1, 0)
    demo = sim.admin.follower(DEMO_OPENID)
    assert demo is not None and demo.subscribed and demo.last_interaction_at is not None
    [template] = sim.admin.templates()
    assert (template.template_id, tuple(template.keys)) == (DEMO_TEMPLATE_ID, DEMO_TEMPLATE_KEYS)


def test_bulk_followers_in_one_request(sim: SimulatorProcess) -> None:
    started = time.monotonic()
    result = sim.admin.add_followers({"openid": f"oBulk{i:023d}"} for i in range(100_000))
    assert (result.created, result.updated, result.total) == (100_000, 0, 100_001)
    assert time.monotonic() - started < 10
    assert sim.admin.follower_count() == 100_001
    page = httpx.get(f"{sim.base_url}/_sim/followers", params={"offset": 1, "limit": 2}).json()
    assert [f["openid"] for f in page["followers"]] == [f"oBulk{i:023d}" for i in (0, 1)]


def test_follower_upsert_changes_only_the_fields_given(sim: SimulatorProcess) -> None:
    sim.admin.add_follower(
        "o-1", last_interaction_at="2026-01-02T03:04:05+08:00", subscribe_authorizations={"t": 2}
    )
    result = sim.admin.add_follower("o-1", blocked="refuse", subscribe_authorizations={"u": 1})
    assert (result.created, result.updated) == (0, 1)
    follower = sim.admin.follower("o-1")
    assert follower is not None
    assert follower.blocked == "refuse" and follower.subscribed
    assert follower.subscribe_authorizations == {"t": 2, "u": 1}
    assert follower.last_interaction_at is not None
    assert follower.last_interaction_at.timestamp() == 1767294245  # 2026-01-01T19:04:05Z
    sim.admin.add_follower("o-1", last_interaction_at=1_700_000_000, blocked=None)
    follower = sim.admin.follower("o-1")
    assert follower is not None and follower.blocked is None
    assert follower.last_interaction_at is not None
    assert follower.last_interaction_at.timestamp() == 1_700_000_000


def test_follower_errors(sim: SimulatorProcess) -> None:
    assert sim.admin.follower("o-unknown") is None
    bad = httpx.post(f"{sim.base_url}/_sim/followers", json={"openid": "x", "blocked": "maybe"})
    assert bad.status_code == 400
    assert any("blocked" in error["loc"] for error in bad.json()["detail"])
    garbage = httpx.post(f"{sim.base_url}/_sim/followers", content=b"{oops")
    assert garbage.status_code == 400


def test_templates_add_list_delete(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.add_template("tpl-2", ["thing1", "number2"], title="到货提醒")
    assert {t.template_id for t in sim.admin.templates()} == {DEMO_TEMPLATE_ID, "tpl-2"}
    body = {"touser": DEMO_OPENID, "template_id": "tpl-2", "data": {"thing1": {"value": "x"}}}
    answer = wx.post("message/template/send", wx.token(), json=body).json()
    assert answer["errcode"] == 47003 and "data.number2" in answer["errmsg"]
    sim.admin.delete_template("tpl-2")
    with pytest.raises(httpx.HTTPStatusError):
        sim.admin.delete_template("tpl-2")
    listed = httpx.post(
        f"{sim.base_url}/_sim/templates",
        json=[{"template_id": "a", "keys": ["thing1"]}, {"template_id": "b", "keys": ["time1"]}],
    )
    assert listed.status_code == 200 and len(sim.admin.templates()) == 3


@pytest.fixture
def five_messages(sim: SimulatorProcess, wx: WeChatHttp) -> list[int]:
    sim.admin.add_follower("o-b")
    token = wx.token()
    msgids = []
    for i, openid in enumerate([DEMO_OPENID, "o-b", DEMO_OPENID, "o-b", DEMO_OPENID]):
        answer = wx.send_template(token, touser=openid, client_msg_id=f"m{i}")
        msgids.append(answer["msgid"])
    custom = {"touser": "o-b", "msgtype": "text", "text": {"content": "hi"}}
    assert wx.post("message/custom/send", token, json=custom).json()["errcode"] == 0
    return msgids


def test_message_filters(sim: SimulatorProcess, five_messages: list[int]) -> None:
    admin = sim.admin
    assert admin.messages().total == 6
    by_openid = admin.messages(openid="o-b")
    assert by_openid.total == 3 and {m.openid for m in by_openid.items} == {"o-b"}
    assert admin.messages(kind="custom").total == 1
    assert admin.messages(template_id=DEMO_TEMPLATE_ID, openid="o-b").total == 2
    [m3] = admin.messages(client_msg_id="m3").items
    assert m3.msgid == five_messages[3]
    assert admin.messages(openid="o-b", client_msg_id="m0").total == 0
    assert admin.messages(openid="nobody").total == 0


def test_message_paging_and_since_cursor(sim: SimulatorProcess, five_messages: list[int]) -> None:
    admin = sim.admin
    page = admin.messages(offset=1, limit=2)
    assert page.total == 6 and [m.seq for m in page.items] == [2, 3]
    after = admin.messages(since=page.next_since, limit=10)
    assert [m.seq for m in after.items] == [4, 5, 6] and after.next_since == 6
    assert admin.messages(since=6).items == [] and admin.messages(since=6).next_since == 6
    assert admin.messages(openid="o-b", since=2).total == 2  # seq 4 and 6
    every = list(admin.iter_messages(page_size=2))
    assert [m.seq for m in every] == [1, 2, 3, 4, 5, 6]
    assert [m.msgid for m in admin.iter_messages(kind="template")] == five_messages
    for params in ({"limit": 0}, {"offset": -1}, {"kind": "sms"}, {"since": "x"}):
        response = httpx.get(f"{sim.base_url}/_sim/messages", params=params)
        assert response.status_code == 400, params


def test_msgids_survive_json_exactly(sim: SimulatorProcess, five_messages: list[int]) -> None:
    raw = httpx.get(f"{sim.base_url}/_sim/messages").text
    for item in json.loads(raw)["items"][:5]:
        assert item["msgid"] > 2**53
        assert str(item["msgid"]) == item["msgid_str"]
        assert item["msgid_str"] in raw  # written as an exact integer, not a float
    # Why msgid_str exists: a double (JavaScript's number) cannot hold these exactly.
    assert any(int(float(msgid)) != msgid for msgid in five_messages)


def test_config_is_merged_and_validated(sim: SimulatorProcess) -> None:
    before = sim.admin.config()
    after = sim.admin.set_config(daily_quota=5, dedupe_window_seconds=60)
    assert (after.daily_quota, after.dedupe_window_seconds) == (5, 60)
    assert after.token_expires_in == before.token_expires_in and after.app_id == DEMO_APP_ID
    for bad in ({"stable_roll_seconds": 7200}, {"no_such_knob": 1}, {"daily_quota": -1}):
        response = httpx.post(f"{sim.base_url}/_sim/config", json=bad)
        assert response.status_code == 400, bad
    assert sim.admin.config() == after


def test_credentials_can_be_changed(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.set_config(app_secret="f" * 32)
    assert wx.stable_token()["errcode"] == 40125
    assert "access_token" in wx.stable_token(secret="f" * 32)


def test_clock_moves_forward_only(sim: SimulatorProcess) -> None:
    before = sim.admin.clock()
    after = sim.admin.advance(3600)
    assert after.offset_seconds == 3600 and after.now - before.now >= 3600
    assert 0 < after.seconds_to_next_day <= 86_400
    response = httpx.post(f"{sim.base_url}/_sim/clock", json={"advance_seconds": -1})
    assert response.status_code == 400


def test_reset_keeps_followers_templates_and_config(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.add_follower("o-kept")
    sim.admin.set_config(daily_quota=7)
    token = wx.token()
    assert wx.send_template(token)["errcode"] == 0
    sim.admin.set_faults(minus_one_rate=0.5)
    sim.admin.advance(100)
    sim.admin.reset()
    assert sim.admin.messages().total == 0 and sim.admin.counters().accepted == 0
    assert sim.admin.counters().tokens_issued == {"classic": 0, "stable": 0}
    assert sim.admin.faults().minus_one_rate == 0 and sim.admin.clock().offset_seconds == 0
    assert wx.callback_ip(token)["errcode"] == 40001  # tokens are forgotten
    assert sim.admin.follower("o-kept") is not None and sim.admin.config().daily_quota == 7
    sim.admin.reset(everything=True)
    assert sim.admin.follower("o-kept") is None and sim.admin.config().daily_quota == 100_000
    assert sim.admin.health().followers == 1 and sim.admin.health().templates == 1


def test_counters_shape(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    wx.send_template(token, client_msg_id="x")
    wx.send_template(token, client_msg_id="x")
    wx.send_template(token, touser="nobody")
    counters = sim.admin.counters()
    assert counters.calls["template_send"] == 3 and counters.calls["stable_token"] == 1
    assert counters.accepted == 1 and counters.accepted_by_kind["template"] == 1
    assert counters.deduplicated == 1 and counters.errcodes == {40003: 1}
    assert set(counters.faults) == {"drop", "http_5xx", "minus_one", "slow", "rate_limited"}


def test_the_log_shows_no_secret_and_no_token(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    classic = wx.classic_token()["access_token"]
    wx.classic_token(secret="0" * 32)
    sim.admin.set_faults(drop_rate=1.0)
    with pytest.raises(httpx.TransportError):
        wx.post("message/template/send", token, json={"touser": DEMO_OPENID})
    log = sim.log_tail(100_000)
    assert "WeChat API simulator on" in log  # the one start-up line is there
    for secret in (sim.app_secret, token, classic):
        assert secret not in log
