"""The async WeChat API client: one shared connection pool, typed calls, typed errors.

One `WeChatClient` per event loop (a batch task, a flow, a benchmark): it owns one httpx
transport, `httpx-aiohttp`'s by default, because httpx's own async pool slows down as requests
in flight grow (docs/performance.md; encode/httpx#3215). Requests are `httpx.Request`s handed
straight to the transport, with the timeout in `extensions` as `httpx.AsyncClient` puts it:
the client's redirect, auth, cookie and hook machinery cost ~60 µs of CPU per send and a
WeChat call needs none of it. Every foreign exception is translated to `wechat.errors` here,
and nothing it raises or logs carries a token or secret.
"""

from __future__ import annotations

import functools
import logging
import ssl
from typing import Any, Literal, Self

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr, ValidationError

from wechat.errors import (
    AccountKind,
    ErrorClass,
    RequestError,
    TransportError,
    api_error,
)
from wechat.models import (
    AccessToken,
    ApiQuota,
    CustomMessage,
    Message,
    SendResult,
    SubscribeMessage,
    TemplateMessage,
)
from wechat.redact import install_log_redaction, redact

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=30.0)
TransportChoice = Literal["aiohttp", "httpx"]
TEMPLATE_SEND_PATH = "/cgi-bin/message/template/send"
QUOTA_GET_PATH = "/cgi-bin/openapi/quota/get"
# httpx.AsyncClient's default headers with our user-agent, built once.
_HEADERS = httpx.Headers(
    {
        "accept": "*/*",
        "accept-encoding": "gzip, deflate",
        "connection": "keep-alive",
        "user-agent": "wxpush",
    }
)
_JSON_HEADERS = httpx.Headers({**_HEADERS, "content-type": "application/json; charset=utf-8"})

_log = logging.getLogger(__name__)
install_log_redaction("httpx", "httpcore", __name__)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (~20 ms), and a
    campaign opens a client per batch."""
    return httpx.create_ssl_context()


def _secret(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


_TIMEOUTS = (httpx.TimeoutException, aiohttp.ServerTimeoutError, TimeoutError)


_TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError, OSError, TimeoutError)


def _transport_error(endpoint: str, exc: BaseException) -> TransportError:
    """The `TransportError` (RETRY) for a transport-level failure, token-free.

    httpx-aiohttp maps some aiohttp errors to misleading httpx classes (a refused
    connection arrives as ConnectTimeout), so the aiohttp cause, when there is one, names it.
    """
    cause = exc.__cause__
    root = cause if isinstance(cause, aiohttp.ClientError | OSError) else exc
    what = "timeout" if isinstance(root, _TIMEOUTS) else "connection failed"
    detail = redact(str(root)) or "no detail"
    return TransportError(
        f"{endpoint}: {what} ({type(root).__name__}: {detail})", endpoint=endpoint
    )


class WeChatClient:
    """Calls the WeChat server API (or the local simulator at another base URL)."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        kind: AccountKind = "official_account",
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_connections: int = 100,
        transport: TransportChoice | httpx.AsyncBaseTransport = "aiohttp",
    ) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        chosen: httpx.AsyncBaseTransport
        if transport == "aiohttp":
            chosen = AiohttpTransport(verify=_tls_context(), limits=limits)
        elif transport == "httpx":
            chosen = httpx.AsyncHTTPTransport(verify=_tls_context(), limits=limits)
        else:
            chosen = transport
        self.kind: AccountKind = kind
        self.base_url = base_url.rstrip("/")
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._transport = chosen
        timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        # What httpx.AsyncClient.build_request would put on every request, computed once.
        self._extensions = {"timeout": timeout.as_dict()}
        self._json_headers = [(b"Host", httpx.URL(self.base_url).netloc), *_JSON_HEADERS.raw]
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool; call once when the loop that used it is done."""
        if not self._closed:
            self._closed = True
            await self._transport.aclose()

    # -- tokens -------------------------------------------------------------------------

    async def stable_token(
        self, app_id: str, app_secret: SecretStr | str, *, force_refresh: bool = False
    ) -> AccessToken:
        """`POST /cgi-bin/stable_token`: the same token for every caller while it is valid."""
        body = {
            "grant_type": "client_credential",
            "appid": app_id,
            "secret": _secret(app_secret),
            "force_refresh": force_refresh,
        }
        data = await self._call("POST", "/cgi-bin/stable_token", json_body=body, token_fetch=True)
        return self._token(data, "/cgi-bin/stable_token")

    async def classic_token(self, app_id: str, app_secret: SecretStr | str) -> AccessToken:
        """`GET /cgi-bin/token`: every call invalidates the previous token after an overlap."""
        params = {"grant_type": "client_credential", "appid": app_id, "secret": _secret(app_secret)}
        data = await self._call("GET", "/cgi-bin/token", params=params, token_fetch=True)
        return self._token(data, "/cgi-bin/token")

    async def check_token(self, access_token: SecretStr | str) -> None:
        """A cheap authenticated call (`getcallbackip`): raises `TokenError` if refused."""
        await self._call("GET", "/cgi-bin/getcallbackip", token=access_token)

    async def get_api_quota(
        self, access_token: SecretStr | str, cgi_path: str = TEMPLATE_SEND_PATH
    ) -> ApiQuota:
        """`POST /cgi-bin/openapi/quota/get`: the daily limit, use and rest of one API
        (template/send by default), so a campaign can be sized before it burns quota."""
        data = await self._call(
            "POST", QUOTA_GET_PATH, token=access_token, json_body={"cgi_path": cgi_path}
        )
        try:
            return ApiQuota.model_validate(data.get("quota"))
        except ValidationError as exc:
            fields = ", ".join(str(e["loc"][0]) if e["loc"] else "quota" for e in exc.errors())
            raise RequestError(
                f"{QUOTA_GET_PATH}: answer had no usable quota ({fields} missing or invalid)",
                endpoint=QUOTA_GET_PATH,
            ) from None

    # -- messages -----------------------------------------------------------------------

    async def send_template(
        self, access_token: SecretStr | str, message: TemplateMessage
    ) -> SendResult:
        """Template message; `client_msg_id` makes a retry within 10 minutes a no-op."""
        return await self._send(TEMPLATE_SEND_PATH, access_token, message)

    async def send_custom(
        self, access_token: SecretStr | str, message: CustomMessage
    ) -> SendResult:
        """Customer-service message; WeChat refuses it outside the 48-hour window (45015)."""
        return await self._send("/cgi-bin/message/custom/send", access_token, message)

    async def send_subscribe(
        self, access_token: SecretStr | str, message: SubscribeMessage
    ) -> SendResult:
        """Subscription notification (`bizsend`); needs the user's authorization (43101)."""
        return await self._send("/cgi-bin/message/subscribe/bizsend", access_token, message)

    async def send(self, access_token: SecretStr | str, message: Message) -> SendResult:
        """Send any message kind to its endpoint."""
        if isinstance(message, TemplateMessage):
            return await self.send_template(access_token, message)
        if isinstance(message, CustomMessage):
            return await self.send_custom(access_token, message)
        return await self.send_subscribe(access_token, message)

    # -- plumbing -----------------------------------------------------------------------

    async def _send(self, path: str, access_token: SecretStr | str, message: Message) -> SendResult:
        data = await self._call("POST", path, token=access_token, json_body=message.payload())
        msgid = data.get("msgid")
        return SendResult(
            msgid=int(msgid) if msgid is not None else None, errmsg=str(data.get("errmsg", "ok"))
        )

    def _token(self, data: dict[str, Any], endpoint: str) -> AccessToken:
        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            raise RequestError(f"{endpoint}: answer carried no access_token", endpoint=endpoint)
        return AccessToken(access_token=SecretStr(value), expires_in=int(data.get("expires_in", 0)))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        token: SecretStr | str | None = None,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        token_fetch: bool = False,
    ) -> dict[str, Any]:
        """One request; returns the JSON body or raises the errcode's exception."""
        if token is not None and not params:
            url = self._token_url(path, _secret(token))
        else:
            query = dict(params or {})
            if token is not None:
                query["access_token"] = _secret(token)
            url = httpx.URL(self.base_url + path, params=query or None)
        if json_body is not None:
            # Raw UTF-8, not \\uXXXX escapes: WeChat answers 40033 to escaped Chinese.
            request = self._json_request(method, url, orjson.dumps(json_body))
        else:
            request = httpx.Request(method, url, headers=_HEADERS, extensions=self._extensions)
        try:
            response = await self._transport.handle_async_request(request)
            try:
                if response.is_stream_consumed or "content-encoding" in response.headers:
                    # Read already (a wrapping transport), or encoded (gzip from a proxy).
                    raw = await response.aread()
                else:  # the stream as is: aread's decoder and chunkers cost ~6 µs
                    raw = b"".join([chunk async for chunk in response.stream])
            finally:
                await response.aclose()
        except _TRANSPORT_ERRORS as exc:
            raise _transport_error(path, exc) from exc
        status = response.status_code
        if _log.isEnabledFor(logging.DEBUG):  # the line httpx.AsyncClient logged, redacted
            _log.debug("HTTP Request: %s %s %d", method, url, status)
        return self._parse(path, status, raw, token_fetch=token_fetch)

    def _json_request(self, method: str, url: httpx.URL, body: bytes) -> httpx.Request:
        """What `httpx.Request(method, url, content=body, headers=...)` builds, from headers
        prepared once: ~3 µs instead of ~11 µs per send."""
        headers = httpx.Headers([*self._json_headers, (b"Content-Length", str(len(body)).encode())])
        request = httpx.Request(
            method, url, headers=headers, stream=httpx.ByteStream(body), extensions=self._extensions
        )
        request.read()  # sets .content, so transports send plain bytes and respx sees them
        return request

    def _token_url(self, path: str, token: str) -> httpx.URL:
        """The URL of `path` with the token, built once per token: parsing a ~140-character
        token URL on every send cost ~70 µs, the client's largest per-send cost."""
        key = (path, token)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= 64:  # tokens change every two hours; keep it small
                self._urls.clear()
            url = self._urls[key] = httpx.URL(self.base_url + path, params={"access_token": token})
        return url

    def _parse(self, path: str, status: int, raw: bytes, *, token_fetch: bool) -> dict[str, Any]:
        if status >= 500 or status == 429:
            raise TransportError(f"{path}: HTTP {status}", endpoint=path, status_code=status)
        if status >= 400:
            raise RequestError(f"{path}: HTTP {status}", endpoint=path)
        try:
            data = orjson.loads(raw)
        except ValueError as exc:
            raise TransportError(
                f"{path}: HTTP {status} with a body that is not JSON",
                endpoint=path,
                status_code=status,
            ) from exc
        if not isinstance(data, dict):
            raise TransportError(f"{path}: unexpected JSON answer", endpoint=path)
        errcode = int(float(data.get("errcode", 0) or 0))
        if errcode == 0:
            return data
        errmsg = redact(str(data.get("errmsg", "")))
        # On a token fetch 40001 means a wrong AppSecret, not a stale token.
        override = ErrorClass.CONFIG if token_fetch and errcode == 40001 else None
        raise api_error(errcode, errmsg, endpoint=path, kind=self.kind, error_class=override)
