"""WeChat errcodes: the one table, their classes, and the exception tree built on them.

Every decision the send path makes is taken from an errcode's class, never from the
number itself (docs/architecture.md, decision 4). The exceptions are grouped by who should react:

    WeChatError                     anything the WeChat API layer raises
     ├── RetryableError   RETRY     transient: back off with jitter and try again
     │    └── TransportError        no usable answer: timeout, connection error, HTTP 5xx
     ├── TokenError       REFRESH   the access_token is invalid/expired: refresh once
     ├── RecipientError   RECIPIENT permanent for this openid: record it and move on
     ├── RequestError     REQUEST   the payload/template is wrong: stop before burning quota
     ├── QuotaError       QUOTA     daily quota reached: pause, resumable tomorrow
     └── ConfigError      CONFIG    the account or its setup is wrong: stop, tell an operator

Unknown errcodes are classed REQUEST: the campaign stops and says so, and nothing is
marked as a permanent failure for any recipient, so a resume after a human looked loses
nothing. Retrying an unknown code blindly could burn quota; failing recipients for it
could drop people who would have received the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

AccountKind = Literal["official_account", "wecom"]


class ErrorClass(StrEnum):
    """What the sender does about an error."""

    RETRY = "RETRY"
    REFRESH = "REFRESH"
    RECIPIENT = "RECIPIENT"
    REQUEST = "REQUEST"
    QUOTA = "QUOTA"
    CONFIG = "CONFIG"


@dataclass(frozen=True)
class Errcode:
    """One row of the errcode table."""

    errcode: int
    meaning: str
    error_class: ErrorClass


def _table(rows: list[tuple[int, ErrorClass, str]]) -> dict[int, Errcode]:
    return {code: Errcode(code, meaning, cls) for code, cls, meaning in rows}


R, F, P, Q, Q_, C = (
    ErrorClass.RETRY,
    ErrorClass.REFRESH,
    ErrorClass.RECIPIENT,
    ErrorClass.REQUEST,
    ErrorClass.QUOTA,
    ErrorClass.CONFIG,
)

#: Official Account errcodes; meanings and sources: docs/wechat-protocol.md.
OFFICIAL_ACCOUNT: dict[int, Errcode] = _table(
    [
        (-1, R, "system busy, retry later"),
        (-1000, R, "system error (semantics unconfirmed; retried with the -1 limits)"),
        (45011, R, "per-minute API quota reached; retry after a minute"),
        (40001, F, "access_token invalid or not the latest (on a token fetch: wrong AppSecret)"),
        (40014, F, "invalid access_token"),
        (42001, F, "access_token expired"),
        (43004, P, "recipient does not follow (or has unfollowed) the account"),
        (40003, P, "invalid openid: not a follower, or an openid of another AppID"),
        (43019, P, "recipient is in the account's blacklist"),
        (48002, P, "user turned off messages from this account"),
        (43101, P, "user refuses this message (no subscription authorization left)"),
        (46004, P, "user does not exist"),
        (50005, P, "user has not followed the account"),
        (45015, P, "outside the 48-hour customer-service window since the last interaction"),
        (45047, P, "customer-service send count for this user's window exhausted"),
        (40037, Q, "invalid template_id (deleted, or not in this account)"),
        (40036, Q, "invalid template_id length"),
        (47003, Q, "template argument invalid (the errmsg names the field)"),
        (47001, Q, "JSON/XML parse error"),
        (40033, Q, "illegal \\uxxxx characters in the request"),
        (41030, Q, "invalid mini-program page path"),
        (40165, Q, "invalid mini-program page path"),
        (44002, Q, "empty POST body"),
        (41001, Q, "access_token parameter missing (a bug in the caller)"),
        (45009, Q_, "daily API quota reached"),
        (48006, Q_, "clear_quota limit reached"),
        (40002, C, "invalid grant_type"),
        (40013, C, "invalid AppID"),
        (40125, C, "invalid AppSecret"),
        (40164, C, "caller IP not in the API IP whitelist"),
        (61004, C, "caller IP not in the whitelist for token APIs"),
        (40243, C, "AppSecret frozen"),
        (89501, C, "IP call waiting for administrator confirmation"),
        (89503, C, "this call needs administrator confirmation"),
        (89506, C, "administrator rejected this IP; retry after 24 h"),
        (89507, C, "administrator rejected this IP; retry after 1 h"),
        (48001, C, "API unauthorized for this account (no permission or wrong token type)"),
        (48004, C, "API banned for this account"),
        (50002, C, "account limited: frozen, deregistered or punished"),
    ]
)

#: WeCom codes whose meaning differs from the Official Account's (docs/wechat-protocol.md).
WECOM_OVERRIDES: dict[int, Errcode] = _table(
    [
        (40001, C, "invalid secret"),
        (40091, C, "invalid secret"),
        (48002, C, "API forbidden (no permission)"),
        (60020, C, "IP not in the app's trusted IP list"),
        (40056, C, "invalid agentid"),
        (301002, C, "no permission on that app"),
        (81013, Q, "every user/party/tag invalid or without permission"),
        (60111, P, "userid does not exist"),
        (45033, R, "concurrent-call limit exceeded"),
    ]
)

UNKNOWN_CLASS = ErrorClass.REQUEST
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})


def lookup(errcode: int, kind: AccountKind = "official_account") -> Errcode:
    """The table row for `errcode`; unknown codes get the conservative REQUEST class."""
    if kind == "wecom" and errcode in WECOM_OVERRIDES:
        return WECOM_OVERRIDES[errcode]
    known = OFFICIAL_ACCOUNT.get(errcode)
    if known is not None:
        return known
    return Errcode(errcode, "unknown errcode", UNKNOWN_CLASS)


def classify(errcode: int, kind: AccountKind = "official_account") -> ErrorClass:
    """The class that decides what the sender does about `errcode`."""
    return lookup(errcode, kind).error_class


_RID = re.compile(r"rid:\s*([0-9A-Za-z-]+)")


def parse_rid(errmsg: str) -> str | None:
    """The request id WeChat appends to errmsg (` rid: xxxxxxxx-xxxxxxxx-xxxxxxxx`)."""
    match = _RID.search(errmsg)
    return match.group(1) if match else None


class WeChatError(Exception):
    """Base of everything the WeChat layer raises; carries the errcode's context."""

    error_class: ErrorClass = UNKNOWN_CLASS

    def __init__(
        self,
        message: str,
        *,
        errcode: int | None = None,
        errmsg: str = "",
        rid: str | None = None,
        endpoint: str = "",
        meaning: str = "",
    ) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.errmsg = errmsg
        self.rid = rid
        self.endpoint = endpoint
        self.meaning = meaning or message


class RetryableError(WeChatError):
    """Transient: retry with exponential backoff and jitter, up to a limit."""

    error_class = ErrorClass.RETRY


class TransportError(RetryableError):
    """No usable answer: timeout, connection error, dropped connection or HTTP 5xx."""

    def __init__(self, message: str, *, endpoint: str = "", status_code: int | None = None):
        super().__init__(message, endpoint=endpoint)
        self.status_code = status_code


class TokenError(WeChatError):
    """The access_token was refused: refresh it (compare-and-expire) and retry once."""

    error_class = ErrorClass.REFRESH


class RecipientError(WeChatError):
    """Permanent for this recipient: record the failure and move on."""

    error_class = ErrorClass.RECIPIENT


class RequestError(WeChatError):
    """The payload or template is wrong: stop the campaign before it burns quota."""

    error_class = ErrorClass.REQUEST


class QuotaError(WeChatError):
    """A quota is exhausted: pause; a later resume finishes the work."""

    error_class = ErrorClass.QUOTA


class ConfigError(WeChatError):
    """The account or its configuration is wrong: stop and tell an operator what to fix."""

    error_class = ErrorClass.CONFIG


_BY_CLASS: dict[ErrorClass, type[WeChatError]] = {
    ErrorClass.RETRY: RetryableError,
    ErrorClass.REFRESH: TokenError,
    ErrorClass.RECIPIENT: RecipientError,
    ErrorClass.REQUEST: RequestError,
    ErrorClass.QUOTA: QuotaError,
    ErrorClass.CONFIG: ConfigError,
}


def api_error(
    errcode: int,
    errmsg: str,
    *,
    endpoint: str,
    kind: AccountKind = "official_account",
    error_class: ErrorClass | None = None,
) -> WeChatError:
    """The most specific exception for an errcode answer (never includes the token)."""
    row = lookup(errcode, kind)
    cls = _BY_CLASS[error_class or row.error_class]
    rid = parse_rid(errmsg)
    message = f"{endpoint}: errcode {errcode} ({cls.error_class}: {row.meaning}): {errmsg}"
    return cls(
        message, errcode=errcode, errmsg=errmsg, rid=rid, endpoint=endpoint, meaning=row.meaning
    )
