"""Edge cases of the WeChat client's answer handling, with respx (no server needed).

End-to-end behaviour against the simulator lives in test_client_simulator.py.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from pydantic import SecretStr

from wechat import errors
from wechat.client import TransportChoice, WeChatClient
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


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_hung_server_times_out_within_the_client_timeout(transport: TransportChoice) -> None:
    # Requests skip httpx.AsyncClient, so the read timeout must travel in the request itself.
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(5)  # then hang up: without the timeout the test fails, not hangs
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    timeout = httpx.Timeout(connect=5.0, read=0.5, write=5.0, pool=5.0)
    try:
        async with WeChatClient(
            f"http://127.0.0.1:{port}", timeout=timeout, transport=transport
        ) as c:
            started = time.perf_counter()
            with pytest.raises(errors.TransportError) as info:
                await c.send_template(TOKEN, MESSAGE)
            waited = time.perf_counter() - started
    finally:
        server.close()
    assert 0.4 < waited < 3.0
    assert "timeout" in str(info.value)
    assert TOKEN not in str(info.value)


async def test_custom_transport_gets_the_timeout_and_a_read_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"errcode": 0, "msgid": 5})

    timeout = httpx.Timeout(connect=1.0, read=2.0, write=3.0, pool=4.0)
    async with WeChatClient(BASE, timeout=timeout, transport=httpx.MockTransport(handler)) as c:
        result = await c.send_template(TOKEN, MESSAGE)
    assert result.msgid == 5
    request = seen[0]
    assert request.extensions["timeout"] == {"connect": 1.0, "read": 2.0, "write": 3.0, "pool": 4.0}
    assert request.headers["content-length"] == str(len(request.content))
    assert request.headers["host"] == "api.example.test"
    assert request.headers["user-agent"] == "wxpush"
    assert request.headers["content-type"] == "application/json; charset=utf-8"


@respx.mock
async def test_gzip_answer_is_decoded(client: WeChatClient) -> None:
    body = gzip.compress(b'{"errcode":0,"errmsg":"ok","msgid":9}')
    respx.post(SEND).mock(
        return_value=httpx.Response(200, content=body, headers={"content-encoding": "gzip"})
    )
    assert (await client.send_template(TOKEN, MESSAGE)).msgid == 9


class _Chunks(httpx.AsyncByteStream):
    """A body that can be read once, as from a socket."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = iter(chunks)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class _ReadsFirst(httpx.AsyncBaseTransport):
    """A wrapping transport that reads the answer before handing it back."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = httpx.Response(200, stream=_Chunks(b'{"errcode":0,', b'"msgid":11}'))
        await response.aread()
        return response


class _Streams(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Chunks(b'{"errcode":0,', b'"msgid":12}'))


async def test_streamed_and_already_read_answers_are_both_read() -> None:
    async with WeChatClient(BASE, transport=_ReadsFirst()) as c:
        assert (await c.send_template(TOKEN, MESSAGE)).msgid == 11
    async with WeChatClient(BASE, transport=_Streams()) as c:
        assert (await c.send_template(TOKEN, MESSAGE)).msgid == 12


QUOTA_GET = f"{BASE}/cgi-bin/openapi/quota/get"
QUOTA_OK = {
    "errcode": 0,
    "errmsg": "ok",
    "quota": {"daily_limit": 100000, "used": 12, "remain": 99988},
    "rate_limit": {"call_count": 100, "refresh_second": 60},
    "component_rate_limit": {"call_count": 0, "refresh_second": 0},
}


@respx.mock
async def test_api_quota_asks_for_template_send_by_default(client: WeChatClient) -> None:
    route = respx.post(QUOTA_GET).mock(return_value=httpx.Response(200, json=QUOTA_OK))
    quota = await client.get_api_quota(SecretStr(TOKEN))
    assert (quota.daily_limit, quota.used, quota.remain) == (100000, 12, 99988)
    request = route.calls.last.request
    assert request.url.params["access_token"] == TOKEN
    assert request.content == b'{"cgi_path":"/cgi-bin/message/template/send"}'


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"errcode": 0, "errmsg": "ok"}, "quota"),
        ({"errcode": 0, "quota": {"daily_limit": 10, "used": 1}}, "remain"),
        ({"errcode": 0, "quota": {"daily_limit": "many", "used": 1, "remain": 9}}, "daily_limit"),
        ({"errcode": 0, "quota": {"daily_limit": 10, "used": -1, "remain": 11}}, "used"),
        ({"errcode": 0, "quota": [10, 1, 9]}, "quota"),
    ],
)
@respx.mock
async def test_api_quota_malformed_answer_is_one_clear_error(
    client: WeChatClient, answer: dict, named: str
) -> None:
    respx.post(QUOTA_GET).mock(return_value=httpx.Response(200, json=answer))
    with pytest.raises(errors.RequestError) as info:
        await client.get_api_quota(TOKEN)
    message = str(info.value)
    assert message.startswith("/cgi-bin/openapi/quota/get: answer had no usable quota")
    assert named in message and "\n" not in message and TOKEN not in message


@pytest.mark.parametrize(
    ("errcode", "raised"),
    [
        (76021, errors.RequestError),
        (76022, errors.ConfigError),
        (42001, errors.TokenError),
        (-1, errors.RetryableError),
    ],
)
@respx.mock
async def test_api_quota_errcodes_raise_their_class(
    client: WeChatClient, errcode: int, raised: type[errors.WeChatError]
) -> None:
    respx.post(QUOTA_GET).mock(
        return_value=httpx.Response(200, json={"errcode": errcode, "errmsg": "no rid: 1-2-3"})
    )
    with pytest.raises(raised) as info:
        await client.get_api_quota(TOKEN, "/cgi-bin/message/custom/send")
    assert info.value.errcode == errcode
    assert info.value.fix and TOKEN not in str(info.value)
