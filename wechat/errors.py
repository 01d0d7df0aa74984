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
    """One row of the errcode table: what the code means, what the sender does, and what an
    operator should do. `known` is False for a code the table does not have."""

    errcode: int
    meaning: str
    error_class: ErrorClass
    fix: str
    known: bool = True


#: The operator's fix for a class, where a row has nothing more specific (and for unknown
#: codes and answers without an errcode).
CLASS_FIX: dict[ErrorClass, str] = {
    ErrorClass.RETRY: "nothing to do at once: wxpush retries; if it persists, check WeChat",
    ErrorClass.REFRESH: "nothing to do at once: wxpush refreshes the access_token once",
    ErrorClass.RECIPIENT: "this user cannot get the message: try another OpenID",
    ErrorClass.REQUEST: "WeChat refused the request itself: read the errmsg and fix the message",
    ErrorClass.CONFIG: "fix the app's settings: `wxpush setup`, or the wechat-app block in the UI",
    ErrorClass.QUOTA: "a quota is used up: wait until it resets",
}


def _table(rows: list[tuple[int, ErrorClass, str, str | None]]) -> dict[int, Errcode]:
    return {
        code: Errcode(code, meaning, cls, fix or CLASS_FIX[cls]) for code, cls, meaning, fix in rows
    }


R, F, P, Q, Q_, C = (
    ErrorClass.RETRY,
    ErrorClass.REFRESH,
    ErrorClass.RECIPIENT,
    ErrorClass.REQUEST,
    ErrorClass.QUOTA,
    ErrorClass.CONFIG,
)
_MP = "the MP console"
_BLOCK = "the wechat-app block (`wxpush setup`, or the UI)"
_IP_WHITELIST = "add this machine's egress IP to the account's API IP whitelist"
_FOLLOW = "this user must follow the account first"
_PAGE = "check the mini-program page path"
_CONFIRM_IP = f"an administrator must confirm this IP in {_MP}"

#: Official Account errcodes; meanings and sources: docs/wechat-protocol.md. The last column
#: is the operator's fix (None: the class's, CLASS_FIX). A recipient's refusal never stops a
#: campaign; its fix says what a test send can change.
OFFICIAL_ACCOUNT: dict[int, Errcode] = _table(
    [
        (-1, R, "system busy, retry later", None),
        (-1000, R, "system error (semantics unconfirmed; retried with the -1 limits)", None),
        (45011, R, "per-minute API quota reached; retry after a minute", None),
        (
            40001,
            F,
            "access_token invalid or not the latest (on a token fetch: wrong AppSecret)",
            f"wxpush refreshes the token once; on a token fetch, check the AppSecret in {_BLOCK}",
        ),
        (40014, F, "invalid access_token", None),
        (42001, F, "access_token expired", None),
        (43004, P, "recipient does not follow (or has unfollowed) the account", _FOLLOW),
        (
            40003,
            P,
            "invalid openid: not a follower, or an openid of another AppID",
            "use the OpenID of a follower of this account (OpenIDs differ per AppID)",
        ),
        (
            43019,
            P,
            "recipient is in the account's blacklist",
            f"this user is in the account's blacklist: remove them in {_MP}",
        ),
        (
            48002,
            P,
            "user turned off messages from this account",
            "this user turned off messages from the account; only they can turn them back on",
        ),
        (
            43101,
            P,
            "user refuses this message (no subscription authorization left)",
            "this user has no subscription authorization left for the template",
        ),
        (46004, P, "user does not exist", "check the OpenID: no such user"),
        (50005, P, "user has not followed the account", _FOLLOW),
        (
            45015,
            P,
            "outside the 48-hour customer-service window since the last interaction",
            "the user must write to the account first (48-hour window)",
        ),
        (
            45047,
            P,
            "customer-service send count for this user's window exhausted",
            "wait until the user writes to the account again",
        ),
        (
            40037,
            Q,
            "invalid template_id (deleted, or not in this account)",
            "template_id not found in this account: check the template ID",
        ),
        (
            40036,
            Q,
            "invalid template_id length",
            "check the template ID: it must be a template of this account",
        ),
        (
            47003,
            Q,
            "template argument invalid (the errmsg names the field)",
            "a template value breaks WeChat's rules: check the field errmsg names",
        ),
        (
            47001,
            Q,
            "JSON/XML parse error",
            "wxpush sent a body WeChat could not parse: report it with the errmsg",
        ),
        (
            40033,
            Q,
            "illegal \\uxxxx characters in the request",
            "wxpush sent escaped characters: report it with the errmsg",
        ),
        (41030, Q, "invalid mini-program page path", _PAGE),
        (40165, Q, "invalid mini-program page path", _PAGE),
        (44002, Q, "empty POST body", "wxpush sent an empty body: report it with the errmsg"),
        (
            41001,
            Q,
            "access_token parameter missing (a bug in the caller)",
            "the request had no access_token: report it",
        ),
        (
            76021,
            Q,
            "cgi_path not found (the quota query does not know that API path)",
            "wxpush asked the quota of an API path WeChat does not know: report it",
        ),
        (
            45009,
            Q_,
            "daily API quota reached",
            "the daily quota is used up: resume after Beijing midnight (or after clear_quota)",
        ),
        (
            48006,
            Q_,
            "clear_quota limit reached",
            "clear_quota was used too often this month: resume after Beijing midnight",
        ),
        (40002, C, "invalid grant_type", "wxpush asked for a token the wrong way: report it"),
        (40013, C, "invalid AppID", f"check the AppID in {_BLOCK}"),
        (40125, C, "invalid AppSecret", f"check the AppSecret in {_BLOCK}"),
        (40164, C, "caller IP not in the API IP whitelist", _IP_WHITELIST),
        (61004, C, "caller IP not in the whitelist for token APIs", _IP_WHITELIST),
        (
            40243,
            C,
            "AppSecret frozen",
            f"the AppSecret is frozen: unfreeze or reset it in {_MP}",
        ),
        (89501, C, "IP call waiting for administrator confirmation", _CONFIRM_IP),
        (89503, C, "this call needs administrator confirmation", _CONFIRM_IP),
        (
            89506,
            C,
            "administrator rejected this IP; retry after 24 h",
            "an administrator rejected this IP: retry after 24 h",
        ),
        (
            89507,
            C,
            "administrator rejected this IP; retry after 1 h",
            "an administrator rejected this IP: retry after 1 h",
        ),
        (
            48001,
            C,
            "API unauthorized for this account (no permission or wrong token type)",
            f"this account may not call this API (permission or token type): check {_MP}",
        ),
        (
            76022,
            C,
            "could not use this cgi_path: the token's account does not own that API",
            f"the quota query needs this account's own access_token: check the AppID in {_BLOCK}",
        ),
        (
            48004,
            C,
            "API banned for this account",
            f"this API is banned for the account: see {_MP}",
        ),
        (
            50002,
            C,
            "account limited: frozen, deregistered or punished",
            f"the account is limited (frozen, deregistered or punished): see {_MP}",
        ),
    ]
)

_WECOM_ADMIN = "the WeCom admin console"

#: WeCom codes whose meaning differs from the Official Account's (docs/wechat-protocol.md).
WECOM_OVERRIDES: dict[int, Errcode] = _table(
    [
        (40001, C, "invalid secret", f"check the app's secret in {_BLOCK}"),
        (40091, C, "invalid secret", f"check the app's secret in {_BLOCK}"),
        (48002, C, "API forbidden (no permission)", f"grant the app this API in {_WECOM_ADMIN}"),
        (
            60020,
            C,
            "IP not in the app's trusted IP list",
            f"add this machine's egress IP to the app's trusted IPs in {_WECOM_ADMIN}",
        ),
        (40056, C, "invalid agentid", f"check the agentid in {_BLOCK}"),
        (301002, C, "no permission on that app", f"check the app's permissions in {_WECOM_ADMIN}"),
        (
            81013,
            Q,
            "every user/party/tag invalid or without permission",
            "check the recipients: every user, party or tag was invalid or out of the app's scope",
        ),
        (60111, P, "userid does not exist", "check the userid: no such member"),
        (45033, R, "concurrent-call limit exceeded", None),
    ]
)

UNKNOWN_CLASS = ErrorClass.REQUEST
UNKNOWN_MEANING = "unknown errcode"
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})


def lookup(errcode: int, kind: AccountKind = "official_account") -> Errcode:
    """The table row for `errcode`; unknown codes get the conservative REQUEST class."""
    if kind == "wecom" and errcode in WECOM_OVERRIDES:
        return WECOM_OVERRIDES[errcode]
    known = OFFICIAL_ACCOUNT.get(errcode)
    if known is not None:
        return known
    return Errcode(errcode, UNKNOWN_MEANING, UNKNOWN_CLASS, CLASS_FIX[UNKNOWN_CLASS], known=False)


def fix_hint(
    errcode: int | None, error_class: ErrorClass, kind: AccountKind = "official_account"
) -> str:
    """What an operator should do: the errcode's row, else (unknown code, or an answer
    without one) what `error_class` calls for."""
    row = lookup(errcode, kind) if errcode is not None else None
    return row.fix if row is not None and row.known else CLASS_FIX[error_class]


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
        fix: str = "",
    ) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.errmsg = errmsg
        self.rid = rid
        self.endpoint = endpoint
        self.meaning = meaning or message
        #: What an operator should do about it (the errcode table's fix column).
        self.fix = fix or CLASS_FIX[self.error_class]


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
        message,
        errcode=errcode,
        errmsg=errmsg,
        rid=rid,
        endpoint=endpoint,
        meaning=row.meaning,
        fix=fix_hint(errcode, cls.error_class, kind),
    )
