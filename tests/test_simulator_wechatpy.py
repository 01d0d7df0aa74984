"""An off-the-shelf SDK, unchanged, against the simulator: wechatpy 1.8.18.

What had to be pointed where: wechatpy builds API URLs from `API_BASE_URL` (a class attribute,
set here on the instance), but `WeChatClient.fetch_access_token` hard-codes
`https://api.weixin.qq.com/cgi-bin/token`. So the token fetch is routed by mounting a requests
transport adapter on the client's own `requests.Session` (`client._http`) that sends whatever is
addressed to api.weixin.qq.com to the simulator: no wechatpy code is replaced.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from wechatpy import WeChatClient
from wechatpy.exceptions import APILimitedException, WeChatClientException

from wechat.simulator.defaults import DEMO_OPENID, DEMO_TEMPLATE_ID, DEMO_TEMPLATE_VALUES
from wechat.simulator.process import SimulatorProcess

REAL_HOST = "https://api.weixin.qq.com"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # wechatpy's own `_post`


class ToSimulator(HTTPAdapter):
    """A requests adapter that sends requests for api.weixin.qq.com to the simulator."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        assert request.url is not None and request.url.startswith(REAL_HOST)
        request.url = self.base_url + request.url[len(REAL_HOST) :]
        return super().send(request, **kwargs)


def wechatpy_client(sim: SimulatorProcess) -> WeChatClient:
    client = WeChatClient(sim.app_id, sim.app_secret, timeout=5)
    client.API_BASE_URL = f"{sim.base_url}/cgi-bin/"
    client._http.mount(REAL_HOST + "/", ToSimulator(sim.base_url))
    return client


DATA = {key: {"value": value} for key, value in DEMO_TEMPLATE_VALUES}


def test_wechatpy_fetches_a_token_and_sends_a_template(sim: SimulatorProcess) -> None:
    client = wechatpy_client(sim)
    token = client.fetch_access_token()
    assert token["expires_in"] == 7200 and len(token["access_token"]) > 100
    answer = client.message.send_template(
        DEMO_OPENID, DEMO_TEMPLATE_ID, DATA, url="https://example.com/o/9"
    )
    assert answer["errcode"] == 0 and answer["msgid"] > 2**53
    [message] = sim.admin.messages().items
    assert message.msgid == answer["msgid"] and message.url == "https://example.com/o/9"
    assert message.data == dict(DEMO_TEMPLATE_VALUES)
    assert sim.admin.counters().calls["token"] == 1  # the classic endpoint, via the adapter


def test_wechatpy_recovers_from_a_rotated_token_by_itself(sim: SimulatorProcess) -> None:
    client = wechatpy_client(sim)
    client.fetch_access_token()
    sim.admin.rotate_tokens()
    answer = client.message.send_template(DEMO_OPENID, DEMO_TEMPLATE_ID, DATA)
    assert answer["errcode"] == 0
    counters = sim.admin.counters()
    assert counters.errcodes == {40001: 1} and counters.calls["token"] == 2
    assert counters.accepted == 1


def test_wechatpy_sees_wechat_errors(sim: SimulatorProcess) -> None:
    client = wechatpy_client(sim)
    with pytest.raises(WeChatClientException) as info:
        client.message.send_template("o-nobody", DEMO_TEMPLATE_ID, DATA)
    assert info.value.errcode == 40003
    sim.admin.set_config(daily_quota=0)
    with pytest.raises(APILimitedException):
        client.message.send_template(DEMO_OPENID, DEMO_TEMPLATE_ID, DATA)


def test_wechatpy_custom_and_subscribe_messages(sim: SimulatorProcess) -> None:
    sim.admin.add_follower("o-sub", subscribe_authorizations={DEMO_TEMPLATE_ID: 1})
    client = wechatpy_client(sim)
    assert client.message.send_text(DEMO_OPENID, "你好")["errcode"] == 0
    sent = client.message.send_subscribe_message("o-sub", DEMO_TEMPLATE_ID, DATA, page="p/1")
    assert sent["errcode"] == 0
    with pytest.raises(WeChatClientException) as info:
        client.message.send_subscribe_message("o-sub", DEMO_TEMPLATE_ID, DATA)
    assert info.value.errcode == 43101
    kinds = [m.kind for m in sim.admin.messages().items]
    assert kinds == ["custom", "subscribe"]


def test_wechatpy_sees_a_dropped_connection_as_a_connection_error(
    sim: SimulatorProcess,
) -> None:
    client = wechatpy_client(sim)
    client.fetch_access_token()
    sim.admin.set_faults(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        client.message.send_template(DEMO_OPENID, DEMO_TEMPLATE_ID, DATA)
    assert sim.admin.messages().total == 0
