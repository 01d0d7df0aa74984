"""Message sends over real HTTP: template/send (recipient, template and data checks, dedupe,
msgids, quota), custom/send (the 48-hour window) and subscribe/bizsend (authorizations)."""

from __future__ import annotations

import re

from tests.fixtures.simulator import WeChatHttp
from wechat.fields import check_field
from wechat.simulator.defaults import (
    DEMO_OPENID,
    DEMO_TEMPLATE_ID,
    DEMO_TEMPLATE_VALUES,
    demo_template_data,
)
from wechat.simulator.process import SimulatorProcess

RID = re.compile(r" rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$")


def assert_error(answer: dict, errcode: int, text: str) -> None:
    assert answer["errcode"] == errcode, answer
    assert answer["errmsg"].startswith(text), answer
    assert RID.search(answer["errmsg"]), answer


def test_template_send_success_is_recorded(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    answer = wx.send_template(
        wx.token(),
        url="https://example.com/o/1",
        miniprogram={"appid": "wx1234567890abcdef", "pagepath": "index?o=1"},
        client_msg_id="order-1",
    )
    assert answer["errcode"] == 0 and answer["errmsg"] == "ok"
    assert set(answer) == {"errcode", "errmsg", "msgid"}
    [message] = sim.admin.messages().items
    assert message.msgid == answer["msgid"] and message.msgid_str == str(answer["msgid"])
    assert message.kind == "template" and message.openid == DEMO_OPENID
    assert message.template_id == DEMO_TEMPLATE_ID and message.client_msg_id == "order-1"
    assert message.data == dict(DEMO_TEMPLATE_VALUES)
    assert message.url == "https://example.com/o/1"
    assert message.miniprogram == {"appid": "wx1234567890abcdef", "pagepath": "index?o=1"}
    assert sim.admin.counters().accepted == 1


def test_msgids_are_64_bit_above_2_53_and_unique(wx: WeChatHttp) -> None:
    token = wx.token()
    msgids = [wx.send_template(token)["msgid"] for _ in range(50)]
    assert all(2**53 < msgid < 2**63 for msgid in msgids)
    assert len(set(msgids)) == 50


def test_recipient_errors(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.add_followers(
        [
            {"openid": "o-gone", "subscribed": False},
            {"openid": "o-black", "blocked": "blacklist"},
            {"openid": "o-refuse", "blocked": "refuse"},
        ]
    )
    token = wx.token()
    assert_error(wx.send_template(token, touser="o-nobody"), 40003, "invalid openid")
    assert_error(wx.send_template(token, touser=""), 40003, "invalid openid")
    assert_error(wx.send_template(token, touser="o-gone"), 43004, "require subscribe")
    assert_error(wx.send_template(token, touser="o-black"), 43019, "require remove blacklist")
    assert_error(wx.send_template(token, touser="o-refuse"), 48002, "api forbidden")
    assert sim.admin.messages().total == 0
    assert sim.admin.counters().errcodes == {40003: 2, 43004: 1, 43019: 1, 48002: 1}


def test_template_errors(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    assert_error(wx.send_template(token, template_id="nope"), 40037, "invalid template_id")
    assert_error(wx.send_template(token, template_id=""), 40036, "invalid template_id size")
    sim.admin.delete_template(DEMO_TEMPLATE_ID)
    assert_error(wx.send_template(token), 40037, "invalid template_id")


def test_data_errors_name_the_first_failing_key(wx: WeChatHttp) -> None:
    token = wx.token()
    data = demo_template_data()
    del data["time3"]
    data["amount4"] = {"value": ""}
    # time3 (missing) comes before amount4 (empty) in the template: it is the one named, in
    # the words of wechat.fields (WeChat's own spelling).
    empty = check_field("time3", "")
    assert empty is not None
    assert_error(
        wx.send_template(token, data=data), 47003, f"argument invalid! {empty.wechat_detail}"
    )
    too_long = {**demo_template_data(), "thing1": {"value": "商" * 21}}
    assert_error(
        wx.send_template(token, data=too_long), 47003, "argument invalid! data.thing1.value invalid"
    )
    chinese_code = {**demo_template_data(), "character_string2": {"value": "顺丰123"}}
    assert_error(
        wx.send_template(token, data=chinese_code),
        47003,
        "argument invalid! data.character_string2.value invalid",
    )
    assert_error(wx.send_template(token, data=None), 47003, "argument invalid! data.thing1")


def test_extra_keys_are_ignored(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    data = {**demo_template_data(), "remark": {"value": "not in the template"}}
    assert wx.send_template(wx.token(), data=data)["errcode"] == 0
    assert "remark" not in sim.admin.messages().items[0].data


def test_body_errors(wx: WeChatHttp) -> None:
    token = wx.token()
    empty = wx.post("message/template/send", token, content=b"").json()
    assert_error(empty, 44002, "empty post data")
    bad = wx.post("message/template/send", token, content=b'{"touser": ').json()
    assert_error(bad, 47001, "data format error")
    not_object = wx.post("message/template/send", token, content=b"[1, 2]").json()
    assert_error(not_object, 47001, "data format error")


def test_body_without_content_type_is_accepted(wx: WeChatHttp) -> None:
    # wechatpy posts raw UTF-8 bytes with no Content-Type; WeChat does not care, nor do we.
    import orjson

    body = orjson.dumps(
        {"touser": DEMO_OPENID, "template_id": DEMO_TEMPLATE_ID, "data": demo_template_data()}
    )
    response = wx.post("message/template/send", wx.token(), content=body)
    assert response.json()["errcode"] == 0


def test_client_msg_id_dedupes_within_the_window_only(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    token = wx.token()
    first = wx.send_template(token, client_msg_id="c-1")
    sim.admin.advance(599)
    again = wx.send_template(token, client_msg_id="c-1")
    other = wx.send_template(token, client_msg_id="c-2")
    assert again == first and other["msgid"] != first["msgid"]
    sim.admin.advance(2)  # c-1 was sent 601 s ago: outside the 10-minute window
    later = wx.send_template(token, client_msg_id="c-1")
    assert later["errcode"] == 0 and later["msgid"] != first["msgid"]
    assert [m.client_msg_id for m in sim.admin.messages().items] == ["c-1", "c-2", "c-1"]
    counters = sim.admin.counters()
    assert counters.deduplicated == 1 and counters.accepted == 3


def test_dedupe_is_per_openid(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.add_follower("o-second")
    token = wx.token()
    first = wx.send_template(token, client_msg_id="same")
    second = wx.send_template(token, touser="o-second", client_msg_id="same")
    assert first["msgid"] != second["msgid"]
    assert sim.admin.counters().deduplicated == 0


def test_daily_quota_counts_accepted_sends_and_resets_next_day(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    sim.admin.set_config(daily_quota=3)
    token = wx.token()
    assert wx.send_template(token, template_id="nope")["errcode"] == 40037  # not counted
    sent = [wx.send_template(token, client_msg_id=f"q{i}")["errcode"] for i in range(3)]
    assert sent == [0, 0, 0]
    assert wx.send_template(token, client_msg_id="q0")["errcode"] == 45009  # even a repeat
    assert_error(wx.send_template(token), 45009, "reach max api daily quota limit")
    sim.admin.advance(sim.admin.clock().seconds_to_next_day + 1)
    token = wx.token()  # the day's advance also outlived the old token
    assert wx.send_template(token)["errcode"] == 0


def test_custom_send_within_the_48h_window(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    text = {"touser": DEMO_OPENID, "msgtype": "text", "text": {"content": "你好"}}
    answer = wx.post("message/custom/send", token, json=text).json()
    assert answer == {"errcode": 0, "errmsg": "ok"}
    [message] = sim.admin.messages(kind="custom").items
    assert message.msgtype == "text" and message.data == {"content": "你好"}
    sim.admin.advance(48 * 3600 + 1)
    token = wx.token()
    late = wx.post("message/custom/send", token, json=text).json()
    assert_error(late, 45015, "response out of time limit or subscription is canceled")
    sim.admin.set_config(custom_window_hours=72)
    assert wx.post("message/custom/send", token, json=text).json()["errcode"] == 0


def test_custom_send_errors(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.add_follower("o-never", last_interaction_at=None)
    token = wx.token()

    def custom(**body: object) -> dict:
        return wx.post("message/custom/send", token, json=body).json()

    assert_error(custom(touser=DEMO_OPENID, msgtype="hologram"), 40008, "invalid message type")
    assert_error(custom(touser="o-nobody", msgtype="text", text={"content": "x"}), 40003, "invalid")
    never = custom(touser="o-never", msgtype="text", text={"content": "x"})
    assert_error(never, 45015, "response out of time limit")


def test_subscribe_bizsend_consumes_authorizations(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.add_follower("o-sub", subscribe_authorizations={DEMO_TEMPLATE_ID: 2})
    token = wx.token()
    body = {
        "touser": "o-sub",
        "template_id": DEMO_TEMPLATE_ID,
        "page": "pages/order?id=1",
        "data": demo_template_data(),
    }
    first = wx.post("message/subscribe/bizsend", token, json=body).json()
    assert first["errcode"] == 0 and first["msgid"] > 2**53
    assert wx.post("message/subscribe/bizsend", token, json=body).json()["errcode"] == 0
    refused = wx.post("message/subscribe/bizsend", token, json=body).json()
    assert_error(refused, 43101, "user refuse to accept the msg")
    follower = sim.admin.follower("o-sub")
    assert follower is not None and follower.subscribe_authorizations == {DEMO_TEMPLATE_ID: 0}
    messages = sim.admin.messages(kind="subscribe").items
    assert [m.page for m in messages] == ["pages/order?id=1"] * 2


def test_bizsend_without_authorization_or_with_bad_data(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    sim.admin.add_follower("o-sub", subscribe_authorizations={DEMO_TEMPLATE_ID: 1})
    token = wx.token()
    body = {"touser": DEMO_OPENID, "template_id": DEMO_TEMPLATE_ID, "data": demo_template_data()}
    assert_error(wx.post("message/subscribe/bizsend", token, json=body).json(), 43101, "user")
    bad = {**body, "touser": "o-sub", "data": {}}
    assert_error(wx.post("message/subscribe/bizsend", token, json=bad).json(), 47003, "argument")
    follower = sim.admin.follower("o-sub")
    assert follower is not None and follower.subscribe_authorizations[DEMO_TEMPLATE_ID] == 1


def test_get_on_a_send_path_is_empty_post_data(wx: WeChatHttp) -> None:
    token = wx.token()
    answer = wx.http.get("/cgi-bin/message/template/send", params={"access_token": token}).json()
    assert_error(answer, 44002, "empty post data")
