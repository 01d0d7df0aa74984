"""Typed request and response models for the WeChat endpoints wxpush calls.

Requests know how to turn themselves into WeChat's JSON; responses are parsed from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class AccessToken(BaseModel):
    """A token as WeChat issued it; the value stays a SecretStr everywhere."""

    model_config = ConfigDict(frozen=True)

    access_token: SecretStr
    expires_in: int = Field(ge=0, description="Seconds of life WeChat granted at fetch time.")
    fetched_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def expires_at(self) -> datetime:
        """When the token stops working, by the fetching machine's clock."""
        return self.fetched_at + timedelta(seconds=self.expires_in)


class MiniProgram(BaseModel):
    """The mini-program a message opens (wins over `url` when both are set)."""

    appid: str
    pagepath: str = ""


class TemplateValue(BaseModel):
    """One `data` field of a template message."""

    value: str
    color: str | None = None


DataInput = Mapping[str, "str | TemplateValue"]


def _data_payload(data: Mapping[str, str | TemplateValue]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, item in data.items():
        if isinstance(item, TemplateValue):
            out[key] = item.model_dump(exclude_none=True)
        else:
            out[key] = {"value": item}
    return out


class TemplateMessage(BaseModel):
    """`POST /cgi-bin/message/template/send`."""

    touser: str = Field(min_length=1)
    template_id: str = Field(min_length=1)
    data: dict[str, str | TemplateValue]
    url: str | None = None
    miniprogram: MiniProgram | None = None
    client_msg_id: str | None = Field(default=None, max_length=64)

    def payload(self) -> dict[str, Any]:
        """The JSON body WeChat expects."""
        body: dict[str, Any] = {
            "touser": self.touser,
            "template_id": self.template_id,
            "data": _data_payload(self.data),
        }
        if self.url:
            body["url"] = self.url
        if self.miniprogram is not None:
            body["miniprogram"] = self.miniprogram.model_dump()
        if self.client_msg_id:
            body["client_msg_id"] = self.client_msg_id
        return body


class CustomMessage(BaseModel):
    """`POST /cgi-bin/message/custom/send` (customer-service; 48-hour window)."""

    touser: str = Field(min_length=1)
    msgtype: Literal[
        "text", "image", "voice", "video", "music", "news", "mpnews", "msgmenu", "miniprogrampage"
    ] = "text"
    content: dict[str, Any] = Field(
        description="The body under the msgtype key, e.g. {'content': 'hello'} for text."
    )

    def payload(self) -> dict[str, Any]:
        """The JSON body WeChat expects."""
        return {"touser": self.touser, "msgtype": self.msgtype, self.msgtype: self.content}


class SubscribeMessage(BaseModel):
    """`POST /cgi-bin/message/subscribe/bizsend` (needs the user's authorization)."""

    touser: str = Field(min_length=1)
    template_id: str = Field(min_length=1)
    data: dict[str, str | TemplateValue]
    page: str | None = None
    miniprogram: MiniProgram | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON body WeChat expects."""
        body: dict[str, Any] = {
            "touser": self.touser,
            "template_id": self.template_id,
            "data": _data_payload(self.data),
        }
        if self.page:
            body["page"] = self.page
        if self.miniprogram is not None:
            body["miniprogram"] = self.miniprogram.model_dump()
        return body


Message = TemplateMessage | CustomMessage | SubscribeMessage


class SendResult(BaseModel):
    """WeChat accepted the message; delivery is reported later by callback."""

    msgid: int | None = Field(
        default=None, description="64-bit: keep as int/BIGINT or text, never a float."
    )
    errmsg: str = "ok"


class ApiQuota(BaseModel):
    """`POST /cgi-bin/openapi/quota/get`'s `quota`: one API's calls allowed, made and left
    today (WeChat's day, Beijing time). Counts are never negative."""

    model_config = ConfigDict(frozen=True)

    daily_limit: int = Field(ge=0)
    used: int = Field(ge=0)
    remain: int = Field(ge=0)
