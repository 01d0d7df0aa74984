"""The errcode table: classes as docs/wechat-protocol.md gives them, and the exception tree."""

from __future__ import annotations

import pytest

from wechat import errors
from wechat.errors import ErrorClass, api_error, classify, lookup, parse_rid


@pytest.mark.parametrize(
    ("errcode", "expected"),
    [
        (-1, ErrorClass.RETRY),
        (45011, ErrorClass.RETRY),
        (40001, ErrorClass.REFRESH),
        (40014, ErrorClass.REFRESH),
        (42001, ErrorClass.REFRESH),
        *[(c, ErrorClass.RECIPIENT) for c in (43004, 40003, 43019, 48002, 43101, 46004, 50005)],
        (45015, ErrorClass.RECIPIENT),
        (45047, ErrorClass.RECIPIENT),
        (40037, ErrorClass.REQUEST),
        (47003, ErrorClass.REQUEST),
        (41001, ErrorClass.REQUEST),
        (76021, ErrorClass.REQUEST),  # the quota query: cgi_path not found
        (76022, ErrorClass.CONFIG),  # the quota query: another account's (type of) token
        (45009, ErrorClass.QUOTA),
        *[(c, ErrorClass.CONFIG) for c in (40013, 40125, 40164, 61004, 48001, 40243, 50002)],
    ],
)
def test_official_account_classes(errcode: int, expected: ErrorClass) -> None:
    assert classify(errcode) is expected


def test_wecom_meanings_differ_where_documented() -> None:
    assert classify(40001, "wecom") is ErrorClass.CONFIG
    assert classify(48002, "wecom") is ErrorClass.CONFIG
    assert classify(42001, "wecom") is ErrorClass.REFRESH
    assert classify(45033, "wecom") is ErrorClass.RETRY


def test_unknown_errcode_is_conservative() -> None:
    row = lookup(99999)
    assert row.error_class is errors.UNKNOWN_CLASS is ErrorClass.REQUEST
    assert row.known is False and row.meaning == errors.UNKNOWN_MEANING
    assert row.fix == errors.CLASS_FIX[ErrorClass.REQUEST]
    tables = (errors.OFFICIAL_ACCOUNT, errors.WECOM_OVERRIDES)
    assert all(row.known for table in tables for row in table.values())


@pytest.mark.parametrize("kind", ["official_account", "wecom"])
def test_every_errcode_has_a_fix_for_the_operator(kind: errors.AccountKind) -> None:
    """The fix is a column of the one table: every row has one, and it is the hint
    `fix_hint` gives and an `api_error` carries, for the account kind's own meaning."""
    codes = {*errors.OFFICIAL_ACCOUNT, *(errors.WECOM_OVERRIDES if kind == "wecom" else ())}
    for code in codes:
        row = lookup(code, kind)
        assert row.fix.strip(), code
        assert errors.fix_hint(code, row.error_class, kind) == row.fix
        assert api_error(code, "x", endpoint="e", kind=kind).fix == row.fix


def test_the_fix_follows_the_account_kind() -> None:
    """48002 is a user's choice on an Official Account, a missing permission on WeCom."""
    assert "turn them back on" in errors.fix_hint(48002, ErrorClass.RECIPIENT)
    assert "admin console" in errors.fix_hint(48002, ErrorClass.CONFIG, "wecom")
    assert errors.fix_hint(40002, ErrorClass.CONFIG) != errors.CLASS_FIX[ErrorClass.CONFIG]


def test_without_a_known_errcode_the_class_says_what_to_do() -> None:
    for cls in ErrorClass:
        assert errors.fix_hint(None, cls) == errors.CLASS_FIX[cls]
        assert errors.fix_hint(99999, cls) == errors.CLASS_FIX[cls]
    assert errors.TransportError("timed out").fix == errors.CLASS_FIX[ErrorClass.RETRY]


def test_every_class_has_its_exception() -> None:
    for cls in ErrorClass:
        assert errors._BY_CLASS[cls].error_class is cls


def test_api_error_carries_context() -> None:
    msg = "argument invalid! data.thing1.value invalid rid: 6512ab3c-0f1e2d3c-4b5a6978"
    exc = api_error(47003, msg, endpoint="/cgi-bin/message/template/send")
    assert isinstance(exc, errors.RequestError)
    assert exc.errcode == 47003
    assert exc.errmsg == msg
    assert exc.rid == "6512ab3c-0f1e2d3c-4b5a6978"
    assert exc.error_class is ErrorClass.REQUEST
    assert "47003" in str(exc) and "template argument invalid" in str(exc)


def test_class_override_for_token_fetch() -> None:
    exc = api_error(
        40001, "invalid credential", endpoint="/cgi-bin/token", error_class=ErrorClass.CONFIG
    )
    assert isinstance(exc, errors.ConfigError)
    assert exc.errcode == 40001


def test_transport_error_is_retryable() -> None:
    exc = errors.TransportError("timeout", endpoint="/x")
    assert isinstance(exc, errors.RetryableError)
    assert exc.error_class is ErrorClass.RETRY
    assert exc.errcode is None


@pytest.mark.parametrize(
    ("errmsg", "rid"),
    [
        ("system error rid: 65f1c2a3-1b2c3d4e-5f6a7b8c", "65f1c2a3-1b2c3d4e-5f6a7b8c"),
        ("invalid appid hint: [abc]", None),
    ],
)
def test_parse_rid(errmsg: str, rid: str | None) -> None:
    assert parse_rid(errmsg) == rid
