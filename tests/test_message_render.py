"""The message spec and its renderer: `{column}` only, safe, formatted, validated."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from sending.message import (
    MISSING_COLUMN,
    MessageSpec,
    client_msg_id_for,
    format_value,
    render,
)
from wechat.fields import FieldProblem
from wechat.models import CustomMessage, SubscribeMessage, TemplateMessage

SPEC = MessageSpec(
    template_id="tmpl-1",
    data={
        "thing1": "{nickname}，您的订单已发货",
        "time2": "{shipped_at}",
        "keyword3": "{{VIP}} {level}",
    },
    url="https://shop.example/o/{order_id}",
    miniprogram={"appid": "wxmini", "pagepath": "pages/order?id={order_id}"},
)
ROW = {
    "openid": "o1",
    "nickname": "小明",
    "shipped_at": datetime(2024, 5, 1, 2, 30, tzinfo=UTC),
    "level": 3,
    "order_id": "A17",
}


def test_placeholders_are_filled_and_braces_escaped() -> None:
    message = render(SPEC, ROW, client_msg_id="cmid-1")
    assert isinstance(message, TemplateMessage)
    assert message.payload() == {
        "touser": "o1",
        "template_id": "tmpl-1",
        "data": {
            "thing1": {"value": "小明，您的订单已发货"},
            "time2": {"value": "2024-05-01 10:30"},
            "keyword3": {"value": "{VIP} 3"},
        },
        "url": "https://shop.example/o/A17",
        "miniprogram": {"appid": "wxmini", "pagepath": "pages/order?id=A17"},
        "client_msg_id": "cmid-1",
    }


def test_placeholders_and_missing_columns_for_preflight() -> None:
    assert SPEC.placeholders() == {"nickname", "shipped_at", "level", "order_id"}
    assert SPEC.check_columns(["openid", "nickname", "shipped_at", "level", "order_id"]) == []
    assert SPEC.check_columns(["nickname", "level"]) == ["openid", "order_id", "shipped_at"]
    custom = MessageSpec(kind="customer_service", text="{a}{b}{{c}}")
    assert custom.placeholders() == {"a", "b"}


def test_a_row_missing_a_column_names_the_field_and_the_column() -> None:
    row = {k: v for k, v in ROW.items() if k != "order_id"}
    problems = render(SPEC, row, client_msg_id=None)
    assert isinstance(problems, list)
    assert {(p.key, p.rule) for p in problems} == {
        ("url", MISSING_COLUMN),
        ("miniprogram.pagepath", MISSING_COLUMN),
    }
    assert "no column 'order_id'" in problems[0].reason


@pytest.mark.parametrize(
    "text",
    [
        "{0.__class__}",
        "{nickname.__class__.__mro__}",
        "{nickname[0]}",
        "{nickname!r}",
        "{nickname:>30}",
        "{}",
        "{ nickname }",
        "{nickname",
        "nickname}",
        "{a{b}",
    ],
)
def test_anything_but_a_column_name_is_refused_when_the_spec_is_made(text: str) -> None:
    with pytest.raises(ValidationError, match=r"not a column name|unbalanced"):
        MessageSpec(template_id="t", data={"thing1": text})


def test_attribute_access_cannot_reach_an_object() -> None:
    class Sneaky:
        secret = "s3cr3t"

        def __str__(self) -> str:
            return "harmless"

    spec = MessageSpec(template_id="t", data={"thing1": "{obj}"})
    message = render(spec, {"openid": "o", "obj": Sneaky()}, client_msg_id=None)
    assert isinstance(message, TemplateMessage) and message.data == {"thing1": "harmless"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("文本", "文本"),
        (42, "42"),
        (3.5, "3.5"),
        (Decimal("299.00"), "299.00"),
        (True, "True"),
        (datetime(2024, 12, 31, 16, 5, tzinfo=UTC), "2025-01-01 00:05"),  # China is UTC+8
        (datetime(2024, 12, 31, 16, 5), "2025-01-01 00:05"),  # naive = UTC
        (datetime(2024, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5))), "2024-05-01 22:00"),
        (datetime(2024, 5, 1, 9, 0, 59, 999), "2024-05-01 17:00"),  # seconds dropped
        (date(2024, 2, 29), "2024-02-29"),
        (time(7, 5, 30), "07:05"),
    ],
)
def test_values_become_text(value: object, text: str) -> None:
    assert format_value(value) == text


def test_field_rules_are_checked_after_rendering() -> None:
    row = dict(ROW, nickname="一二三四五六七八九十一二")  # 12 + 8 = 20 characters: fits
    assert isinstance(render(SPEC, row, client_msg_id=None), TemplateMessage)
    row = dict(ROW, nickname="一二三四五六七八九十一二三", shipped_at=None)  # 21 characters
    problems = render(SPEC, row, client_msg_id=None)
    assert isinstance(problems, list)
    assert [(p.key, p.rule) for p in problems] == [("thing1", "thing"), ("time2", "empty")]
    assert str(problems[0]).startswith("data.thing1.value invalid: thing allows at most 20")


def test_a_row_without_openid_is_a_problem() -> None:
    problems = render(SPEC, dict(ROW, openid=None), client_msg_id=None)
    assert isinstance(problems, list) and [p.key for p in problems] == ["openid"]


def test_customer_service_and_subscribe_messages() -> None:
    custom = MessageSpec(kind="customer_service", text="{nickname}，您好")
    message = render(custom, ROW, client_msg_id="ignored")
    assert isinstance(message, CustomMessage)
    assert message.payload() == {
        "touser": "o1",
        "msgtype": "text",
        "text": {"content": "小明，您好"},
    }
    blank = MessageSpec(kind="customer_service", text="{nickname}")
    problems = render(blank, dict(ROW, nickname=None), client_msg_id=None)
    assert problems == [FieldProblem("text", "", "empty", "the rendered text is empty")]
    missing = render(blank, {"openid": "o1"}, client_msg_id=None)
    assert isinstance(missing, list) and missing[0].rule == MISSING_COLUMN

    subscribe = MessageSpec(
        kind="subscribe", template_id="sub-1", data={"thing1": "{nickname}"}, page="p/{order_id}"
    )
    message = render(subscribe, ROW, client_msg_id="ignored")
    assert isinstance(message, SubscribeMessage)
    assert message.payload() == {
        "touser": "o1",
        "template_id": "sub-1",
        "data": {"thing1": {"value": "小明"}},
        "page": "p/A17",
    }


def test_the_spec_checks_what_its_kind_needs() -> None:
    with pytest.raises(ValidationError, match="needs a template_id"):
        MessageSpec(kind="template", data={"thing1": "x"})
    with pytest.raises(ValidationError, match="at least one data field"):
        MessageSpec(kind="subscribe", template_id="t")
    with pytest.raises(ValidationError, match="needs a text"):
        MessageSpec(kind="customer_service")
    with pytest.raises(ValidationError, match="extra"):
        MessageSpec(template_id="t", data={"a": "b"}, colour="red")


def test_client_msg_id_is_deterministic_short_and_distinct() -> None:
    first = client_msg_id_for("cmp-1", "oia2TjuEGTNoeX76QEjQNrcURxG8")
    assert first == client_msg_id_for("cmp-1", "oia2TjuEGTNoeX76QEjQNrcURxG8")
    assert len(first.encode()) <= 64 and first.isascii() and first.isalnum()
    others = {client_msg_id_for(c, o) for c in ("cmp-1", "cmp-2", 7) for o in ("o1", "o2")}
    assert len(others) == 6
    # The separator keeps ("a1", "b") and ("a", "1b") apart.
    assert client_msg_id_for("a1", "b") != client_msg_id_for("a", "1b")


def test_the_forms_flat_miniprogram_fields_are_accepted() -> None:
    flat = MessageSpec(
        template_id="t",
        data={"thing1": "x"},
        miniprogram_appid="wxmini",
        miniprogram_pagepath="pages/o?id={order_id}",
    )
    assert flat.miniprogram is not None and flat.miniprogram.appid == "wxmini"
    assert flat.placeholders() == {"order_id"}
    assert (
        MessageSpec(template_id="t", data={"thing1": "x"}, miniprogram_appid=None).miniprogram
        is None
    )
    with pytest.raises(ValidationError, match="needs miniprogram_appid"):
        MessageSpec(template_id="t", data={"thing1": "x"}, miniprogram_pagepath="p")


def test_a_copy_with_changes_is_compiled_again() -> None:
    changed = SPEC.model_copy(update={"data": {"thing1": "{city}"}})
    assert changed.placeholders() == {"city", "order_id"}
    message = render(changed, dict(ROW, city="杭州"), client_msg_id=None)
    assert isinstance(message, TemplateMessage) and message.data == {"thing1": "杭州"}
    with pytest.raises(ValidationError, match="not a column name"):
        SPEC.model_copy(update={"url": "{a.b}"})
    assert SPEC.model_copy().placeholders() == SPEC.placeholders()
