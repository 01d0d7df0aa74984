"""WeChat template field rules (wechat/fields.py): what passes, what fails, and the exact words."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from wechat.fields import (
    FieldProblem,
    TemplateDataError,
    check_field,
    field_type,
    validate_template_data,
)

ALL_TYPES = [
    "thing",
    "short_thing",
    "number",
    "letter",
    "symbol",
    "character_string",
    "time",
    "date",
    "amount",
    "phone_number",
    "car_number",
    "name",
    "phrase",
    "const",
    "enum",
]


# --- field_type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("thing01", "thing"),
        ("thing11", "thing"),
        ("character_string12", "character_string"),
        ("short_thing3", "short_thing"),  # not "thing": the whole prefix decides
        ("phone_number1", "phone_number"),
        ("car_number20", "car_number"),
        ("amount5", "amount"),
        ("keyword3", None),
        ("first", None),
        ("remark", None),
        ("thingx", None),
        ("thing", None),  # a prefix without digits is not a category key
        ("Thing1", None),  # keys are case-sensitive
        ("thing1 ", None),
        ("1thing", None),
        ("thing１", None),  # full-width digit
        ("colour7", None),  # unknown prefix
        ("", None),
    ],
)
def test_field_type_parses_prefix_and_digits(key: str, expected: str | None) -> None:
    assert field_type(key) == expected


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_every_documented_type_is_known(kind: str) -> None:
    assert field_type(f"{kind}1") == kind


# --- values WeChat accepts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("thing1", "订单支付成功"),
        ("thing1", "Order #42 已发货, 请查收!"),
        ("thing1", "字" * 20),
        ("thing1", "😀" * 20),  # characters are code points, even outside the BMP
        ("short_thing1", "配送中"),
        ("short_thing1", "D-3"),
        ("short_thing1", "见换班岗位"),
        ("number1", "339208499"),
        ("number1", "3.14"),
        ("number1", "007"),
        ("number1", "9" * 32),
        ("number1", "1" * 30 + ".5"),
        ("letter1", "ABCxyz"),
        ("letter1", "a" * 32),
        ("symbol1", "!"),
        ("symbol1", "+-*/%"),
        ("symbol1", "，。！？…"),
        ("character_string1", "A123"),
        ("character_string1", "SF1234567890"),
        ("character_string1", "https://x.cn/a?b=1"),
        ("character_string1", "----"),
        ("character_string1", "A" * 32),
        ("time1", "15:01"),
        ("time1", "00:00"),
        ("time1", "23:59:59"),
        ("time1", "15:01:30"),
        ("time1", "2019-10-01 15:01"),
        ("time1", "2019/10/01 15:01:30"),
        ("time1", "2019.10.01 15:01"),
        ("time1", "2019年10月1日 15:01"),
        ("time1", "2019年08月13日 15:00"),
        ("time1", "10月1日 15:01"),
        ("time1", "15:01~16:00"),
        ("time1", "2019-10-01 15:01~2019-10-01 16:00"),
        ("time1", "2019-10-01 15:01~16:00"),
        ("date1", "2019-10-01"),
        ("date1", "2019/10/01"),
        ("date1", "2019.10.01"),
        ("date1", "2019年10月1日"),
        ("date1", "2015年01月05日"),
        ("date1", "2019年10月"),
        ("date1", "10月1日"),
        ("date1", "2018-01"),
        ("date1", "01-01"),
        ("date1", "2020-02-29"),
        ("date1", "02-29"),  # no year: a leap day may exist
        ("date1", "2019-10-01 15:01"),
        ("date1", "2019年10月1日 15:01"),
        ("date1", "2019-10-01~2019-10-07"),
        ("date1", "2026-09-07~2026-09-20"),
        ("date1", "2019-10-01 09:00~2019-10-01 18:00"),
        ("amount1", "¥12.50"),
        ("amount1", "￥100元"),
        ("amount1", "$3"),
        ("amount1", "€0.99"),
        ("amount1", "£1"),
        ("amount1", "¥1234567890"),
        ("amount1", "¥12345678.90元"),
        ("phone_number1", "+86-0766-66888866"),
        ("phone_number1", "13800138000"),
        ("phone_number1", "(010)12345678#8"),
        ("phone_number1", "1" * 17),
        ("car_number1", "粤A8Z888挂"),
        ("car_number1", "京A12345"),
        ("car_number1", "粤AD12345"),
        ("car_number1", "A12345"),
        ("name1", "张三"),
        ("name1", "阿卜杜·热合曼"),
        ("name1", "字" * 10),
        ("name1", "John Smith"),
        ("name1", "O'Brien-Smith"),
        ("name1", "a" * 20),
        ("name1", "张三Tom"),
        ("phrase1", "配送中"),
        ("phrase1", "字" * 5),
        ("const1", "已支付"),
        ("const1", "c" * 20),
        ("enum1", "To be paid"),
        # old-style and unknown keys: any non-blank content, any length
        ("first", "付款成功通知" * 20),
        ("keyword1", "x" * 500),
        ("remark", "line one\nline two"),
        ("colour7", "anything at all"),
    ],
)
def test_accepts_valid_values(key: str, value: str) -> None:
    assert check_field(key, value) is None


# --- values WeChat refuses, with the exact reason -------------------------------------------

_TIME_RULE = (
    "time must be a 24-hour time (15:01 or 15:01:30), optionally after a date and a space "
    "(2019-10-01 15:01, 2019年10月1日 15:01), or two of those joined by ~ (15:01~16:00); got "
)
_DATE_RULE = (
    "date must be a date (2019-10-01, 2019/10/01, 2019.10.01, 2019年10月1日, 2019-10, 10-01), "
    "optionally followed by a space and a 24-hour time, or two of those joined by ~; got "
)
_PRINTABLE = "does not allow line breaks, tabs or other control or invisible characters"
_NUMBER_CHARS = "allows only digits and a decimal point (no sign, no thousands separators)"
_STRING_CHARS = "allows only digits, letters and symbols, no Chinese and no spaces"
_AMOUNT_SHAPE = (
    "amount must be one currency symbol, then digits with an optional decimal part and an "
    "optional trailing 元 (e.g. ¥12.50 or ¥12.50元); got "
)
_AMOUNT_SYMBOL = "amount must start with one currency symbol such as ¥ or $ (e.g. ¥12.50); got "
_CAR_SHAPE = (
    "car_number may have a Chinese character only first and last, with letters and digits "
    "between (e.g. 粤A8Z888挂); got "
)


@pytest.mark.parametrize(
    ("key", "value", "rule", "reason"),
    [
        # thing / short_thing / const: length, and no control characters
        ("thing11", "字" * 21, "thing", "thing allows at most 20 characters; got 21"),
        ("thing11", "x" * 23, "thing", "thing allows at most 20 characters; got 23"),
        ("thing11", "😀" * 21, "thing", "thing allows at most 20 characters; got 21"),
        ("thing11", " " + "字" * 20, "thing", "thing allows at most 20 characters; got 21"),
        ("thing1", "ab\ncd", "thing", f"thing {_PRINTABLE}; got '\\n' at position 3"),
        ("thing1", "a\tb", "thing", f"thing {_PRINTABLE}; got '\\t' at position 2"),
        ("thing1", "ab\u200b", "thing", f"thing {_PRINTABLE}; got '\\u200b' at position 3"),
        (
            "short_thing1",
            "六个汉字姓名",
            "short_thing",
            "short_thing allows at most 5 characters; got 6",
        ),
        ("const3", "c" * 21, "const", "const allows at most 20 characters; got 21"),
        ("enum1", "a\rb", "enum", f"enum {_PRINTABLE}; got '\\r' at position 2"),
        # number: digits and one decimal point, nothing else
        ("number4", "9" * 33, "number", "number allows at most 32 characters; got 33"),
        ("number4", "1" * 31 + ".5", "number", "number allows at most 32 characters; got 33"),
        ("number4", "-5", "number", f"number {_NUMBER_CHARS}; got '-' at position 1"),
        ("number4", "+5", "number", f"number {_NUMBER_CHARS}; got '+' at position 1"),
        ("number4", "12a", "number", f"number {_NUMBER_CHARS}; got 'a' at position 3"),
        ("number4", "1,000", "number", f"number {_NUMBER_CHARS}; got ',' at position 2"),
        ("number4", "１２", "number", f"number {_NUMBER_CHARS}; got '１' at position 1"),
        (
            "number4",
            "1.2.3",
            "number",
            "number must be digits with an optional decimal part, e.g. 42 or 3.14; got '1.2.3'",
        ),
        (
            "number4",
            ".5",
            "number",
            "number must be digits with an optional decimal part, e.g. 42 or 3.14; got '.5'",
        ),
        (
            "number4",
            "5.",
            "number",
            "number must be digits with an optional decimal part, e.g. 42 or 3.14; got '5.'",
        ),
        # letter
        ("letter1", "a" * 33, "letter", "letter allows at most 32 characters; got 33"),
        (
            "letter1",
            "abc1",
            "letter",
            "letter allows only letters A-Z and a-z; got '1' at position 4",
        ),
        (
            "letter1",
            "café",
            "letter",
            "letter allows only letters A-Z and a-z; got 'é' at position 4",
        ),
        (
            "letter1",
            "ab c",
            "letter",
            "letter allows only letters A-Z and a-z; got ' ' at position 3",
        ),
        # symbol
        ("symbol1", "!!!!!!", "symbol", "symbol allows at most 5 characters; got 6"),
        (
            "symbol1",
            "!a",
            "symbol",
            "symbol allows only symbols such as ! ? - / # ， 。 (no spaces); got 'a' at position 2",
        ),
        (
            "symbol1",
            "! ?",
            "symbol",
            "symbol allows only symbols such as ! ? - / # ， 。 (no spaces); got ' ' at position 2",
        ),
        # character_string: no Chinese, no spaces
        (
            "character_string2",
            "A" * 33,
            "character_string",
            "character_string allows at most 32 characters; got 33",
        ),
        (
            "character_string21",
            "测试单号",
            "character_string",
            f"character_string {_STRING_CHARS}; got '测' at position 1",
        ),
        (
            "character_string1",
            "No.锋创",
            "character_string",
            f"character_string {_STRING_CHARS}; got '锋' at position 4",
        ),
        (
            "character_string1",
            "AB 12",
            "character_string",
            f"character_string {_STRING_CHARS}; got ' ' at position 3",
        ),
        # time
        ("time2", "24:00", "time", _TIME_RULE + "'24:00'"),
        ("time2", "15:60", "time", _TIME_RULE + "'15:60'"),
        ("time2", "9:05", "time", _TIME_RULE + "'9:05'"),
        ("time2", "3pm", "time", _TIME_RULE + "'3pm'"),
        ("time2", "啊啊啊啊啊啊啊", "time", _TIME_RULE + "'啊啊啊啊啊啊啊'"),
        ("time2", "2019-10-01", "time", _TIME_RULE + "'2019-10-01'"),
        ("time2", "2019-10-0115:01", "time", _TIME_RULE + "'2019-10-0115:01'"),
        ("time2", "15:01 ~ 16:00", "time", _TIME_RULE + "'15:01 ~ 16:00'"),
        ("time2", "15:01~16:00~17:00", "time", _TIME_RULE + "'15:01~16:00~17:00'"),
        ("time2", "15:01~", "time", _TIME_RULE + "'15:01~'"),
        ("time2", "2019-13-01 15:01", "time", _TIME_RULE + "'2019-13-01 15:01'"),
        # date
        ("date3", "2019-02-30", "date", _DATE_RULE + "'2019-02-30'"),
        ("date3", "2019-02-29", "date", _DATE_RULE + "'2019-02-29'"),
        ("date3", "2019-13", "date", _DATE_RULE + "'2019-13'"),
        ("date3", "2019-10/01", "date", _DATE_RULE + "'2019-10/01'"),
        ("date3", "2019-1-1", "date", _DATE_RULE + "'2019-1-1'"),
        ("date3", "15:01", "date", _DATE_RULE + "'15:01'"),
        ("date3", "yesterday", "date", _DATE_RULE + "'yesterday'"),
        ("date3", "2019-10-01T15:01", "date", _DATE_RULE + "'2019-10-01T15:01'"),
        ("date3", "2019-10-01 25:00", "date", _DATE_RULE + "'2019-10-01 25:00'"),
        # amount
        ("amount3", "3.00", "amount", _AMOUNT_SYMBOL + "'3.00'"),
        ("amount3", "3.00元", "amount", _AMOUNT_SYMBOL + "'3.00元'"),
        ("amount3", "-¥5", "amount", _AMOUNT_SYMBOL + "'-¥5'"),
        ("amount3", "¥-5", "amount", _AMOUNT_SHAPE + "'¥-5'"),
        ("amount3", "¥1,000", "amount", _AMOUNT_SHAPE + "'¥1,000'"),
        ("amount3", "¥ 12", "amount", _AMOUNT_SHAPE + "'¥ 12'"),
        ("amount3", "¥$12", "amount", _AMOUNT_SHAPE + "'¥$12'"),
        ("amount3", "¥12.", "amount", _AMOUNT_SHAPE + "'¥12.'"),
        ("amount3", "¥12元整", "amount", _AMOUNT_SHAPE + "'¥12元整'"),
        ("amount3", "¥12345678901", "amount", "amount allows at most 10 digits; got 11"),
        ("amount3", "¥12345678.901", "amount", "amount allows at most 10 digits; got 11"),
        # phone_number
        (
            "phone_number5",
            "1" * 18,
            "phone_number",
            "phone_number allows at most 17 characters; got 18",
        ),
        (
            "phone_number5",
            "+86 10 1234",
            "phone_number",
            "phone_number allows only digits and symbols such as + - ( ) (no spaces); "
            "got ' ' at position 4",
        ),
        (
            "phone_number5",
            "ext12",
            "phone_number",
            "phone_number allows only digits and symbols such as + - ( ) (no spaces); "
            "got 'e' at position 1",
        ),
        # car_number
        (
            "car_number6",
            "粤A8Z8888挂",
            "car_number",
            "car_number allows at most 8 characters; got 9",
        ),
        ("car_number6", "A粤1", "car_number", _CAR_SHAPE + "'A粤1'"),
        ("car_number6", "粤挂", "car_number", _CAR_SHAPE + "'粤挂'"),
        (
            "car_number6",
            "粤A-8Z888",
            "car_number",
            "car_number allows only Chinese characters, letters and digits; got '-' at position 3",
        ),
        # name: Chinese (or mixed) at most 10, otherwise at most 20; no digits
        (
            "name7",
            "字" * 11,
            "name",
            "name allows at most 10 characters when it contains Chinese; got 11",
        ),
        (
            "name7",
            "张三John Smith",
            "name",
            "name allows at most 10 characters when it contains Chinese; got 12",
        ),
        ("name7", "a" * 21, "name", "name allows at most 20 characters; got 21"),
        (
            "name7",
            "Agent 47",
            "name",
            "name allows only Chinese characters, letters, spaces and symbols such as ·; "
            "got '4' at position 7",
        ),
        # phrase: Chinese only
        ("phrase8", "字" * 6, "phrase", "phrase allows at most 5 characters; got 6"),
        ("phrase8", "ok", "phrase", "phrase allows only Chinese characters; got 'o' at position 1"),
        (
            "phrase8",
            "配送中!",
            "phrase",
            "phrase allows only Chinese characters; got '!' at position 4",
        ),
        (
            "phrase8",
            "配送 中",
            "phrase",
            "phrase allows only Chinese characters; got ' ' at position 3",
        ),
    ],
)
def test_rejects_with_precise_reason(key: str, value: str, rule: str, reason: str) -> None:
    assert check_field(key, value) == FieldProblem(key=key, value=value, rule=rule, reason=reason)


@pytest.mark.parametrize(
    ("kind", "limit", "unit"),
    [
        ("thing", 20, "字"),
        ("short_thing", 5, "字"),
        ("number", 32, "9"),
        ("letter", 32, "a"),
        ("symbol", 5, "!"),
        ("character_string", 32, "A"),
        ("phone_number", 17, "1"),
        ("phrase", 5, "字"),
        ("const", 20, "c"),
        ("name", 20, "a"),
    ],
)
def test_length_boundary(kind: str, limit: int, unit: str) -> None:
    key = f"{kind}1"
    assert check_field(key, unit * limit) is None
    problem = check_field(key, unit * (limit + 1))
    assert problem is not None
    assert problem.rule == kind
    assert problem.reason == f"{kind} allows at most {limit} characters; got {limit + 1}"


def test_name_boundary_with_chinese_is_ten() -> None:
    assert check_field("name1", "张" + "a" * 9) is None
    problem = check_field("name1", "张" + "a" * 10)
    assert problem is not None and problem.reason.endswith("when it contains Chinese; got 11")


def test_car_number_boundary_is_eight() -> None:
    assert check_field("car_number1", "粤A12345挂") is None  # 8
    assert check_field("car_number1", "ABCD1234") is None  # 8
    problem = check_field("car_number1", "ABCD12345")
    assert problem is not None and problem.reason == "car_number allows at most 8 characters; got 9"


def test_amount_boundary_is_ten_digits_counting_decimals() -> None:
    assert check_field("amount1", "¥12345678.90") is None
    problem = check_field("amount1", "¥123456789.01")
    assert problem is not None and problem.reason == "amount allows at most 10 digits; got 11"


# --- empty values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", [f"{kind}3" for kind in ALL_TYPES] + ["first", "keyword1", "remark"]
)
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "value is empty"),
        (" ", "value is whitespace only"),
        ("\t\n", "value is whitespace only"),
        ("\u3000", "value is whitespace only"),  # ideographic space
    ],
)
def test_empty_or_blank_is_rejected_for_every_key(key: str, value: str, reason: str) -> None:
    problem = check_field(key, value)
    assert problem == FieldProblem(key=key, value=value, rule="empty", reason=reason)


def test_empty_problem_str_and_wechat_wording() -> None:
    problem = check_field("thing3", "")
    assert problem is not None
    assert str(problem) == "data.thing3.value invalid: value is empty"
    assert problem.wechat_detail == "data.thing3.value is emtpy"  # WeChat's own spelling


# --- FieldProblem, validate_template_data, TemplateDataError --------------------------------


def test_problem_str_names_the_field() -> None:
    problem = check_field("thing11", "x" * 23)
    assert problem is not None
    assert str(problem) == "data.thing11.value invalid: thing allows at most 20 characters; got 23"
    assert problem.wechat_detail == "data.thing11.value invalid"
    assert problem.value == "x" * 23


def test_problem_is_frozen() -> None:
    problem = FieldProblem(key="thing1", value="v", rule="thing", reason="r")
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.key = "thing2"  # type: ignore[misc]


def test_long_values_are_shortened_in_reasons() -> None:
    problem = check_field("time1", "x" * 100)
    assert problem is not None
    assert problem.reason.endswith("got '" + "x" * 39 + "…'")
    assert problem.value == "x" * 100  # the full value is still carried


def test_validate_returns_every_problem_in_key_order() -> None:
    data = {
        "time9": "soon",
        "thing1": "订单支付成功",
        "character_string2": "测试",
        "first": "",
        "amount3": "¥3.00",
    }
    problems = validate_template_data(data)
    assert [(p.key, p.rule) for p in problems] == [
        ("time9", "time"),
        ("character_string2", "character_string"),
        ("first", "empty"),
    ]


def test_validate_clean_data_returns_nothing() -> None:
    assert validate_template_data({}) == []
    assert validate_template_data({"thing1": "订单支付成功", "character_string2": "A123"}) == []


def test_template_data_error_lists_every_problem() -> None:
    problems = validate_template_data({"thing1": "", "number2": "-1"})
    error = TemplateDataError(problems)
    assert isinstance(error, ValueError)
    assert error.problems == problems
    assert str(error) == (
        "2 template fields invalid: data.thing1.value invalid: value is empty; "
        f"data.number2.value invalid: number {_NUMBER_CHARS}; got '-' at position 1"
    )


def test_template_data_error_singular() -> None:
    error = TemplateDataError([FieldProblem("thing1", "", "empty", "value is empty")])
    assert str(error) == "1 template field invalid: data.thing1.value invalid: value is empty"


def test_template_data_error_needs_problems() -> None:
    with pytest.raises(ValueError, match="at least one FieldProblem"):
        TemplateDataError([])


def test_template_data_error_survives_pickling() -> None:
    error = TemplateDataError(validate_template_data({"thing1": "x" * 21}))
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is TemplateDataError
    assert clone.problems == error.problems
    assert str(clone) == str(error)


