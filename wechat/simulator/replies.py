"""What the simulated server says: errcodes with the errmsg texts seen from the real API, each
error ending in ` rid: xxxxxxxx-xxxxxxxx-xxxxxxxx` as real errors do. These are the server's
words; how a client classifies a code lives in `wechat/errors.py`, not here."""

from __future__ import annotations

import random
from typing import Any, Final

Reply = dict[str, Any]

SYSTEM_ERROR: Final = -1
INVALID_CREDENTIAL: Final = 40001
INVALID_GRANT_TYPE: Final = 40002
INVALID_OPENID: Final = 40003
INVALID_MESSAGE_TYPE: Final = 40008
INVALID_APPID: Final = 40013
INVALID_TEMPLATE_ID_SIZE: Final = 40036
INVALID_TEMPLATE_ID: Final = 40037
INVALID_APPSECRET: Final = 40125
ACCESS_TOKEN_MISSING: Final = 41001
APPID_MISSING: Final = 41002
APPSECRET_MISSING: Final = 41004
ACCESS_TOKEN_EXPIRED: Final = 42001
REQUIRE_SUBSCRIBE: Final = 43004
REQUIRE_REMOVE_BLACKLIST: Final = 43019
USER_REFUSE: Final = 43101
EMPTY_POST_DATA: Final = 44002
DAILY_QUOTA: Final = 45009
MINUTE_QUOTA: Final = 45011
OUT_OF_WINDOW: Final = 45015
OUT_OF_RESPONSE_COUNT: Final = 45047
DATA_FORMAT_ERROR: Final = 47001
ARGUMENT_INVALID: Final = 47003
USER_BLOCKED_MESSAGES: Final = 48002
CGI_PATH_NOT_FOUND: Final = 76021

ERRMSG: Final[dict[int, str]] = {
    SYSTEM_ERROR: "system error",
    INVALID_CREDENTIAL: (
        "invalid credential, access_token is invalid or not latest, could get access_token by "
        "getStableAccessToken, more details at https://mmbizurl.cn/s/JtxxFh33r"
    ),
    INVALID_GRANT_TYPE: "invalid grant_type",
    INVALID_OPENID: "invalid openid",
    INVALID_MESSAGE_TYPE: "invalid message type",
    INVALID_APPID: "invalid appid",
    INVALID_TEMPLATE_ID_SIZE: "invalid template_id size",
    INVALID_TEMPLATE_ID: "invalid template_id",
    INVALID_APPSECRET: "invalid appsecret",
    ACCESS_TOKEN_MISSING: "access_token missing",
    APPID_MISSING: "appid missing",
    APPSECRET_MISSING: "appsecret missing",
    ACCESS_TOKEN_EXPIRED: "access_token expired",
    REQUIRE_SUBSCRIBE: "require subscribe",
    REQUIRE_REMOVE_BLACKLIST: "require remove blacklist",
    USER_REFUSE: "user refuse to accept the msg",
    EMPTY_POST_DATA: "empty post data",
    DAILY_QUOTA: "reach max api daily quota limit",
    MINUTE_QUOTA: "api minute-quota reach limit mustslower retry next minute",
    OUT_OF_WINDOW: "response out of time limit or subscription is canceled",
    OUT_OF_RESPONSE_COUNT: "out of response count limit",
    DATA_FORMAT_ERROR: "data format error",
    ARGUMENT_INVALID: "argument invalid!",
    USER_BLOCKED_MESSAGES: "api forbidden for policy reason",
    CGI_PATH_NOT_FOUND: "cgi_path not found, please check",
}

# On the classic endpoint a wrong secret is answered 40001 with this older text.
CLASSIC_BAD_SECRET_ERRMSG: Final = "invalid credential, access_token is invalid or not latest"

_rid_random = random.Random()


def rid(now: float) -> str:
    """A request id shaped like WeChat's: hex unix time, then two random 32-bit hex words."""
    bits = _rid_random.getrandbits(64)
    return f"{int(now) & 0xFFFFFFFF:08x}-{bits >> 32:08x}-{bits & 0xFFFFFFFF:08x}"


def error(code: int, now: float, detail: str | None = None) -> Reply:
    """The error body for `code`; `detail` replaces the standard text (e.g. naming a field)."""
    text = ERRMSG[code] if detail is None else detail
    return {"errcode": code, "errmsg": f"{text} rid: {rid(now)}"}
