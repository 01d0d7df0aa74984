"""The push API's bodies and answers (docs/api.md, "Sending messages").

A request body is parsed only after its signature is checked (api/app.py). Every rule a
message can break is checked here, before anything is written or sent: the shape (pydantic)
and WeChat's template-field rules (`wechat.fields.check_field`, the campaigns' own rules),
so a broken field is a 422 naming it, never a 47003 from WeChat.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from wechat.fields import check_field
from wechat.models import MiniProgram

__all__ = [
    "BATCH_MAX",
    "BatchIn",
    "MessageAnswer",
    "MessageIn",
    "MessageView",
    "field_errors",
    "request_hash",
]

MessageKind = Literal["template", "customer_service", "subscribe"]
#: Messages one batch request may carry (the settings may lower it, never raise it).
BATCH_MAX = 1000
#: An idempotency key: 1–255 printable ASCII characters (no spaces at either end).
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))


class MessageIn(BaseModel):
    """One message as a caller sends it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    app: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="The wechat-app block name of the account that sends it.",
    )
    kind: MessageKind = "template"
    openid: str = Field(min_length=1, max_length=128)
    template_id: str | None = Field(None, min_length=1, max_length=128)
    data: dict[str, str] = Field(default_factory=dict)
    url: str | None = Field(None, max_length=1024)
    miniprogram: MiniProgram | None = None
    page: str | None = Field(None, max_length=1024, description="subscribe: the page to open")
    text: str | None = Field(None, max_length=2048, description="customer_service: the text")
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)

    @field_validator("idempotency_key")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and any(ch not in _PRINTABLE for ch in value):
            raise ValueError("must be printable ASCII (space to ~)")
        return value

    @model_validator(mode="after")
    def _by_kind(self) -> MessageIn:
        """What each kind needs, each missing piece named by its own field."""
        problems: list[InitErrorDetails] = []
        if self.kind in ("template", "subscribe"):
            if not self.template_id:
                problems.append(_problem(("template_id",), f"a {self.kind} message needs one"))
            if not self.data:
                problems.append(_problem(("data",), f"a {self.kind} message needs a field"))
            if self.text is not None:
                problems.append(_problem(("text",), "only customer_service messages have text"))
            if self.kind == "template" and self.page is not None:
                problems.append(_problem(("page",), "only subscribe messages have a page"))
            if self.kind == "subscribe" and self.url is not None:
                problems.append(_problem(("url",), "subscribe messages open a page, not a url"))
            for key, value in self.data.items():
                found = check_field(key, value)
                if found is not None:
                    # The rule, not the value: the caller has the value, logs need not.
                    reason = found.reason.split("; got ", 1)[0]
                    problems.append(_problem(("data", key), reason, "field_rule"))
        else:
            if not self.text or not self.text.strip():
                problems.append(_problem(("text",), "a customer_service message needs a text"))
            for name in ("template_id", "url", "miniprogram", "page"):
                if getattr(self, name) is not None:
                    problems.append(_problem((name,), "not used by customer_service messages"))
            if self.data:
                problems.append(_problem(("data",), "not used by customer_service messages"))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def hash(self) -> str:
        """What makes two requests "the same message" for an idempotency key."""
        return request_hash(self)


def _problem(loc: tuple[str, ...], message: str, kind: str = "value_error") -> InitErrorDetails:
    return {
        "type": PydanticCustomError(kind, message),
        "loc": loc,
        "input": None,
    }


def request_hash(message: MessageIn) -> str:
    """SHA-256 of the message's canonical JSON (sorted keys, no idempotency key): a key
    reused with a different message is told apart from a retry of the same one."""
    body = message.model_dump(mode="json", exclude={"idempotency_key"}, exclude_none=True)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class BatchIn(BaseModel):
    """Up to BATCH_MAX messages in one request, each answered on its own."""

    model_config = ConfigDict(extra="forbid")

    messages: list[MessageIn] = Field(min_length=1, max_length=BATCH_MAX)


class MessageAnswer(BaseModel):
    """The answer for one message: `queued` while WeChat has not answered, else final."""

    id: str
    status: str
    msgid: int | None = None
    errcode: int | None = None
    reason: str | None = None


class MessageView(MessageAnswer):
    """GET /v1/messages/{id}: the answer plus what came after (the delivery receipt)."""

    app: str
    kind: str
    openid: str
    client_msg_id: str | None = None
    attempts: int = 0
    created_at: str | None = None
    sent_at: str | None = None
    receipt_status: str | None = None
    receipt_at: str | None = None


def field_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ("body",)) -> list[dict]:
    """FastAPI's 422 detail list for `exc`, each `loc` under `prefix`; never the input."""
    detail: list[dict[str, Any]] = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        msg = str(error["msg"]).removeprefix("Value error, ")
        detail.append({"loc": [*prefix, *error["loc"]], "msg": msg, "type": error["type"]})
    return detail
