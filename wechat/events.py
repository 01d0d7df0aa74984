"""Callback XML: parse pushes safely, classify them, and build them (docs/wechat-protocol.md).

A push is a flat `<xml>` of simple elements. Anything else — a DTD, an entity, an external
reference, nesting, a second root — is refused before we look at a value, because the
receiver faces the internet and WeChat never sends those. `CallbackMessage` then answers
the three questions the receiver has: is it a delivery receipt (and which outcome), does
WeChat count it as a user interaction (the 48 h window), and what key dedupes its retries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal
from xml.etree.ElementTree import ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

from wechat.crypto import (
    CallbackFieldError,
    XMLForbiddenError,
    XMLShapeError,
    XMLSyntaxError,
    XMLTooLargeError,
    cdata,
)

#: Real pushes are a few KB (an encrypted one under 4 KB); anything far larger is refused unread.
MAX_CALLBACK_BYTES = 128 * 1024

ReceiptStatus = Literal["delivered", "user_block", "freq_limited", "system_failed"]
CallbackKind = Literal["receipt", "interaction", "subscribe", "unsubscribe", "other"]

#: User messages (MsgType) that open the 48 h customer-service window.
USER_MESSAGE_TYPES = frozenset(
    {"text", "image", "voice", "video", "shortvideo", "location", "link", "miniprogrampage"}
)

#: Events (lower-cased) WeChat counts as interactions, and the kind word we record for each.
#: Only these grant customer-service quota per the CS doc; VIEW, LOCATION reports, the
#: job-finish events, unsubscribe, subscribe_msg_* and everything unknown do not.
INTERACTION_EVENTS: Mapping[str, str] = MappingProxyType(
    {
        "click": "click_menu",
        "scancode_push": "scancode",
        "scancode_waitmsg": "scancode",
        "subscribe": "subscribe",
        "scan": "scan",
    }
)

TEMPLATE_RECEIPT_EVENT = "templatesendjobfinish"
_REQUIRED = ("ToUserName", "FromUserName", "CreateTime", "MsgType")
_MAX_CREATE_TIME = 253402300799  # 9999-12-31T23:59:59Z: keeps `created_at` from overflowing
#: 2011-01-01T00:00:00Z: WeChat launched in January 2011, so no real push is older.
MIN_CREATE_TIME = 1293840000


def parse_xml(body: bytes, *, max_bytes: int = MAX_CALLBACK_BYTES) -> dict[str, str]:
    """The fields of a flat `<xml>` push; refuses DTDs, entities, nesting and malformed XML.

    Empty elements give "". Values are returned exactly as sent (CDATA unwrapped).
    """
    if len(body) > max_bytes:
        raise XMLTooLargeError(f"callback body is {len(body)} bytes, limit {max_bytes}")
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden as exc:
        raise XMLForbiddenError("callback XML declares a DTD", reason="dtd") from exc
    except defusedxml.EntitiesForbidden as exc:
        raise XMLForbiddenError("callback XML declares an entity", reason="entity") from exc
    except defusedxml.ExternalReferenceForbidden as exc:
        raise XMLForbiddenError(
            "callback XML has an external reference", reason="external"
        ) from exc
    except defusedxml.DefusedXmlException as exc:
        raise XMLForbiddenError("callback XML uses a forbidden construct") from exc
    except (ParseError, ValueError, UnicodeError) as exc:
        raise XMLSyntaxError(f"callback body is not well-formed XML: {_position(exc)}") from exc
    if root.tag != "xml":
        raise XMLShapeError("callback XML root must be <xml>", reason="root")
    if (root.text or "").strip():
        raise XMLShapeError("callback <xml> has text outside its elements", reason="mixed")
    fields: dict[str, str] = {}
    for child in root:
        if not isinstance(child.tag, str):  # pragma: no cover - the parser drops comments/PIs
            continue
        if len(child):
            raise XMLShapeError(f"callback element <{child.tag}> is nested", reason="nested")
        if child.tag in fields:
            raise XMLShapeError(f"callback element <{child.tag}> repeats", reason="duplicate")
        if (child.tail or "").strip():
            raise XMLShapeError("callback <xml> has text outside its elements", reason="mixed")
        fields[child.tag] = child.text or ""
    return fields


def _position(exc: Exception) -> str:
    """Where the parser gave up, without echoing the (possibly secret) body."""
    pos = getattr(exc, "position", None)
    return f"line {pos[0]}, column {pos[1]}" if pos else type(exc).__name__


def encrypted_field(fields: Mapping[str, str]) -> str:
    """The Encrypt value of a safe-mode envelope (`<xml><ToUserName/><Encrypt/></xml>`)."""
    value = fields.get("Encrypt", "").strip()
    if not value:
        raise CallbackFieldError("safe-mode callback has no <Encrypt> value", reason="missing")
    return value


def to_xml(fields: Mapping[str, str | int]) -> bytes:
    """A flat `<xml>` push: strings as CDATA, ints bare — the shape WeChat sends.

    Used by the simulator to build pushes and by tests to build fixtures.
    """
    parts = ["<xml>"]
    for name, value in fields.items():
        if not name.isidentifier() or not name.isascii():
            raise ValueError(f"not a simple XML element name: {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"field {name} must be str or int, not {type(value).__name__}")
        text = str(value) if isinstance(value, int) else cdata(value)
        parts.append(f"<{name}>{text}</{name}>")
    parts.append("</xml>")
    return "".join(parts).encode("utf-8")


def normalise_receipt_status(raw: str | None) -> ReceiptStatus:
    """`success` / `failed:user block` / `failed:freq limit` / `failed: system failed` (any
    spacing or case) → our word.

    `freq_limited` is WeChat holding the message back for sending too often: it says nothing
    about the user, so it is never `user_block`. Anything else, including a missing Status,
    is `system_failed`: not delivered as far as we know, but never `user_block`, which would
    mark the recipient permanently.
    """
    squeezed = "".join((raw or "").split()).lower()
    if squeezed == "success":
        return "delivered"
    if squeezed.startswith("failed") and "userblock" in squeezed:
        return "user_block"
    if squeezed.startswith("failed") and "freqlimit" in squeezed:
        return "freq_limited"
    return "system_failed"


def _int_field(fields: Mapping[str, str], name: str) -> int:
    text = fields[name].strip()
    if not text.isascii() or not text.isdigit():
        raise CallbackFieldError(f"callback {name} is not a non-negative integer", reason="number")
    return int(text)


@dataclass(frozen=True, slots=True)
class CallbackMessage:
    """One push, typed. Derived answers (kind, interaction, dedupe key) are properties.

    `fields` keeps every element as sent (Content, Location_X …) but stays out of repr,
    because user text must not land in logs.
    """

    to_user: str
    openid: str
    create_time: int
    msg_type: str
    event: str | None = None
    msg_id: int | None = None
    event_key: str | None = None
    receipt_status_raw: str | None = None
    fields: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if not MIN_CREATE_TIME <= self.create_time <= _MAX_CREATE_TIME:
            raise CallbackFieldError("callback CreateTime is out of range", reason="number")

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> CallbackMessage:
        """Build from `parse_xml` output; the four fields every push carries are required."""
        missing = [name for name in _REQUIRED if not fields.get(name, "").strip()]
        if missing:
            raise CallbackFieldError(f"callback is missing {', '.join(missing)}", reason="missing")
        id_field = "MsgId" if fields.get("MsgId", "").strip() else "MsgID"
        msg_id = _int_field(fields, id_field) if fields.get(id_field, "").strip() else None
        event = fields.get("Event")
        return cls(
            to_user=fields["ToUserName"],
            openid=fields["FromUserName"],
            create_time=_int_field(fields, "CreateTime"),
            msg_type=fields["MsgType"].strip().lower(),
            event=event.strip() if event is not None else None,
            msg_id=msg_id,
            event_key=fields.get("EventKey"),
            receipt_status_raw=fields.get("Status"),
            fields=MappingProxyType(dict(fields)),
        )

    @property
    def created_at(self) -> datetime:
        """CreateTime as an aware UTC datetime (WeChat sends unix seconds)."""
        return datetime.fromtimestamp(self.create_time, tz=UTC)

    @property
    def event_lower(self) -> str | None:
        """The event lower-cased: WeChat mixes `CLICK`, `subscribe`, `TEMPLATESENDJOBFINISH`."""
        return self.event.lower() if self.event is not None else None

    @property
    def is_event(self) -> bool:
        """True for MsgType=event pushes; False for user messages."""
        return self.msg_type == "event"

    @property
    def receipt_status(self) -> ReceiptStatus | None:
        """The delivery outcome of a TEMPLATESENDJOBFINISH; None for every other push."""
        if self.kind != "receipt":
            return None
        return normalise_receipt_status(self.receipt_status_raw)

    @property
    def interaction_kind(self) -> str | None:
        """`message:<type>`, `click_menu`, `scancode`, `subscribe`, `scan`; None if not counted.

        None means WeChat does not count the push as an interaction (it opens no window).
        """
        if not self.is_event:
            return f"message:{self.msg_type}" if self.msg_type in USER_MESSAGE_TYPES else None
        return INTERACTION_EVENTS.get(self.event_lower or "")

    @property
    def kind(self) -> CallbackKind:
        """What the receiver does with it: record a receipt, an interaction, a (un)subscribe."""
        event = self.event_lower
        if self.is_event and event == TEMPLATE_RECEIPT_EVENT:
            return "receipt"
        if self.is_event and event == "subscribe":
            return "subscribe"
        if self.is_event and event == "unsubscribe":
            return "unsubscribe"
        return "interaction" if self.interaction_kind is not None else "other"

    @property
    def dedupe_key(self) -> str:
        """The key WeChat's retries repeat exactly (it retries up to 3 times on a slow answer).

        `msg:<MsgId>` for user messages; `receipt:<MsgID>` for template receipts (two sends
        to one user in the same second must not collapse); otherwise
        `event:<FromUserName>:<CreateTime>:<event lower-cased>`.
        """
        if not self.is_event:
            if self.msg_id is not None:
                return f"msg:{self.msg_id}"
            return f"msg:{self.openid}:{self.create_time}:{self.msg_type}"
        if self.kind == "receipt" and self.msg_id is not None:
            return f"receipt:{self.msg_id}"
        return f"event:{self.openid}:{self.create_time}:{self.event_lower or ''}"


def parse_message(body: bytes, *, max_bytes: int = MAX_CALLBACK_BYTES) -> CallbackMessage:
    """`parse_xml` then `CallbackMessage.from_fields`: one plaintext push, typed."""
    return CallbackMessage.from_fields(parse_xml(body, max_bytes=max_bytes))
