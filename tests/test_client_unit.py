"""Edge cases of the WeChat client's answer handling, with respx (no server needed).

End-to-end behaviour against the simulator lives in test_client_simulator.py.
"""

from __future__ import annotations

import logging

import httpx
import pytest
import respx
from pydantic import SecretStr

from wechat import errors
from wechat.client import WeChatClient
from wechat.models import TemplateMessage

BASE = "https://api.example.test"
SEND = f"{BASE}/cgi-bin/message/template/send"
TOKEN = "TOKEN-abc123-should-never-leak"
MESSAGE = TemplateMessage(touser="o1", template_id="t1", data={"thing1": "你好"})


@pytest.fixture
async def client():
    # respx patches httpx's own transport, so these unit tests use it.
    async with WeChatClient(BASE, transport="httpx") as c:
        yield c


@respx.mock
async def test_success_keeps_64_bit_msgid(client: WeChatClient) -> None:
    respx.post(SEND).mock(
        return_value=httpx.Response(
            200, text='{"errcode":0,"errmsg":"ok","msgid":3662956322040938501}'
        )
    )
    result = await client.send_template(TOKEN, MESSAGE)
    assert result.msgid == 3662956322040938501


@respx.mock
async def test_body_is_raw_utf8_with_token_in_query(client: WeChatClient) -> None:
    route = respx.post(SEND).mock(return_value=httpx.Response(200, json={"errcode": 0, "msgid": 1}))
    await client.send_template(SecretStr(TOKEN), MESSAGE)
    request = route.calls.last.request
    assert request.url.params["access_token"] == TOKEN
    assert "你好".encode() in request.content
    assert b"\\u" not in request.content


@pytest.mark.parametrize("errcode", ["40001", 40001.0, 40001])
@respx.mock
async def test_errcode_as_string_or_float(client: WeChatClient, errcode: object) -> None:
    respx.post(SEND).mock(
        return_value=httpx.Response(200, json={"errcode": errcode, "errmsg": "invalid credential"})
    )
    with pytest.raises(errors.TokenError) as info:
        await client.send_template(TOKEN, MESSAGE)
    assert info.value.errcode == 40001


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
@respx.mock
async def test_http_5xx_and_429_are_retryable(client: WeChatClient, status: int) -> None:
    respx.post(SEND).mock(return_value=httpx.Response(status, text="<html>bad gateway</html>"))
    with pytest.raises(errors.TransportError) as info:
        await client.send_template(TOKEN, MESSAGE)
    assert info.value.status_code == status
    assert info.value.error_class is errors.ErrorClass.RETRY


@respx.mock
async def test_non_json_200_is_retryable(client: WeChatClient) -> None:
    respx.post(SEND).mock(return_value=httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(errors.TransportError):
        await client.send_template(TOKEN, MESSAGE)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectError(f"cannot connect to {BASE}/cgi-bin/x?access_token={TOKEN}"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
@respx.mock
async def test_transport_failures_are_retryable_and_token_free(
    client: WeChatClient, exc: Exception
) -> None:
    respx.post(SEND).mock(side_effect=exc)
    with pytest.raises(errors.TransportError) as info:
        await client.send_template(TOKEN, MESSAGE)
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)


@respx.mock
async def test_token_fetch_40001_means_wrong_secret(client: WeChatClient) -> None:
    respx.get(f"{BASE}/cgi-bin/token").mock(
        return_value=httpx.Response(200, json={"errcode": 40001, "errmsg": "AppSecret error"})
    )
    with pytest.raises(errors.ConfigError) as info:
        await client.classic_token("wx1", "s3cr3t-value")
    assert "s3cr3t-value" not in str(info.value)


@respx.mock
async def test_stable_token_body(client: WeChatClient) -> None:
    route = respx.post(f"{BASE}/cgi-bin/stable_token").mock(
        return_value=httpx.Response(200, json={"access_token": TOKEN, "expires_in": 7200})
    )
    token = await client.stable_token("wx1", SecretStr("sek"), force_refresh=True)
    assert token.access_token.get_secret_value() == TOKEN
    assert token.expires_in == 7200
    assert TOKEN not in repr(token)
    sent = route.calls.last.request.content
    assert b'"force_refresh":true' in sent and b'"secret":"sek"' in sent


@respx.mock
async def test_httpx_request_log_is_redacted(
    client: WeChatClient, caplog: pytest.LogCaptureFixture
) -> None:
    respx.post(SEND).mock(return_value=httpx.Response(200, json={"errcode": 0, "msgid": 7}))
    with caplog.at_level(logging.DEBUG):
        await client.send_template(TOKEN, MESSAGE)
    assert any("access_token=" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


@respx.mock
async def test_unknown_errcode_stops_conservatively(client: WeChatClient) -> None:
    respx.post(SEND).mock(return_value=httpx.Response(200, json={"errcode": 12345, "errmsg": "?"}))
    with pytest.raises(errors.RequestError) as info:
        await client.send_template(TOKEN, MESSAGE)
    assert not errors.lookup(12345).known and info.value.meaning == errors.UNKNOWN_MEANING
    assert info.value.fix == errors.CLASS_FIX[errors.ErrorClass.REQUEST]


async def test_refused_connection_is_named_as_such() -> None:
    # Nothing listens on port 9 of 127.0.0.1 (discard); the aiohttp transport is the default.
    async with WeChatClient("http://127.0.0.1:9", timeout=2.0) as c:
        with pytest.raises(errors.TransportError) as info:
            await c.check_token(TOKEN)
    assert "connection failed" in str(info.value)
    assert TOKEN not in str(info.value)
