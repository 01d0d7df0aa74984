"""The quota query (`POST /cgi-bin/openapi/quota/get`) of the simulator over real HTTP, and
wxpush's client against it: template/send's daily limit, use and rest per account and per
Beijing day, from the same counter that answers 45009."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.simulator import WeChatHttp
from wechat import errors
from wechat.client import WeChatClient
from wechat.models import ApiQuota, TemplateMessage
from wechat.simulator.defaults import DEMO_OPENID, DEMO_TEMPLATE_ID, demo_template_data
from wechat.simulator.process import SimulatorProcess

TEMPLATE_SEND = "/cgi-bin/message/template/send"
C_ID, C_SECRET = "wxc1c1c1c1c1c1c1c1", "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1"


def quota(wx: WeChatHttp, token: str | None, cgi_path: Any = TEMPLATE_SEND) -> dict[str, Any]:
    return wx.post("openapi/quota/get", token, json={"cgi_path": cgi_path}).json()


def test_used_and_remain_follow_the_template_sends(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.set_config(daily_quota=5)
    token = wx.token()
    assert quota(wx, token) == {
        "errcode": 0,
        "errmsg": "ok",
        "quota": {"daily_limit": 5, "used": 0, "remain": 5},
    }
    for _ in range(3):
        assert wx.send_template(token)["errcode"] == 0
    assert quota(wx, token)["quota"] == {"daily_limit": 5, "used": 3, "remain": 2}
    for _ in range(2):  # the same client_msg_id twice: the repeat is deduplicated, not counted
        assert wx.send_template(token, client_msg_id="m-4")["errcode"] == 0
    assert quota(wx, token)["quota"] == {"daily_limit": 5, "used": 4, "remain": 1}
    assert wx.send_template(token)["errcode"] == 0
    assert wx.send_template(token)["errcode"] == 45009  # the counter the query reads
    assert quota(wx, token)["quota"] == {"daily_limit": 5, "used": 5, "remain": 0}
    assert sim.admin.counters().calls["quota_get"] == 4


def test_used_resets_on_the_next_beijing_day(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    token = wx.token()
    wx.send_template(token), wx.send_template(token)
    limit = sim.admin.config().daily_quota
    assert quota(wx, token)["quota"] == {"daily_limit": limit, "used": 2, "remain": limit - 2}
    sim.admin.advance(sim.admin.clock().seconds_to_next_day + 1)
    token = wx.token()  # the old one may have aged out with the day
    assert quota(wx, token)["quota"] == {"daily_limit": limit, "used": 0, "remain": limit}


def test_each_account_answers_its_own_quota(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    sim.admin.add_account(C_ID, C_SECRET, daily_quota=7)
    a_token = wx.token()
    c_token = wx.stable_token(appid=C_ID, secret=C_SECRET)["access_token"]
    wx.send_template(a_token)
    assert quota(wx, c_token)["quota"] == {"daily_limit": 7, "used": 0, "remain": 7}
    assert quota(wx, a_token)["quota"]["used"] == 1
    assert sim.admin.account(C_ID).counters().calls["quota_get"] == 1


@pytest.mark.parametrize("cgi_path", ["/cgi-bin/no/such/api", "cgi-bin/message/template/send", 3])
def test_an_unknown_cgi_path_is_76021(wx: WeChatHttp, cgi_path: Any) -> None:
    answer = quota(wx, wx.token(), cgi_path)
    assert answer["errcode"] == 76021, answer
    assert answer["errmsg"].startswith("cgi_path not found, please check rid: "), answer


def test_token_and_body_errors_are_those_of_every_call(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    assert quota(wx, None)["errcode"] == 41001
    assert quota(wx, "not-a-token")["errcode"] == 40001
    token = wx.token()
    assert wx.post("openapi/quota/get", token, content=b"").json()["errcode"] == 44002
    assert wx.post("openapi/quota/get", token, content=b"[1]").json()["errcode"] == 47001
    got = wx.http.get("/cgi-bin/openapi/quota/get", params={"access_token": token})
    assert got.json()["errcode"] == 44002  # a GET carries no body


def test_rate_limit_is_reported_when_the_simulator_has_one(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    sim.admin.set_faults(rate_limit_per_second=50)
    answer = quota(wx, wx.token())
    assert answer["rate_limit"] == {"call_count": 50, "refresh_second": 1}


async def test_client_reads_the_quota_and_raises_the_errcodes_class(
    sim: SimulatorProcess,
) -> None:
    sim.admin.set_config(daily_quota=4)
    async with WeChatClient(sim.base_url) as client:
        token = (await client.stable_token(sim.app_id, sim.app_secret)).access_token
        await client.send_template(token, _message())
        assert await client.get_api_quota(token) == ApiQuota(daily_limit=4, used=1, remain=3)
        with pytest.raises(errors.RequestError) as bad_path:
            await client.get_api_quota(token, "/cgi-bin/no/such/api")
        assert bad_path.value.errcode == 76021
        with pytest.raises(errors.TokenError) as bad_token:
            await client.get_api_quota("not-a-token")
        assert bad_token.value.errcode == 40001


def _message() -> TemplateMessage:
    data = {key: item["value"] for key, item in demo_template_data().items()}
    return TemplateMessage(touser=DEMO_OPENID, template_id=DEMO_TEMPLATE_ID, data=data)
