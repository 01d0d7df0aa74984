"""The WeChat protocol layer: client, errcode classes, field rules, models (no Prefect, no SQL)."""

from wechat.client import DEFAULT_BASE_URL, WeChatClient
from wechat.errors import (
    ConfigError,
    ErrorClass,
    QuotaError,
    RecipientError,
    RequestError,
    RetryableError,
    TokenError,
    TransportError,
    WeChatError,
    classify,
    lookup,
)
from wechat.fields import FieldProblem, TemplateDataError, check_field, validate_template_data
from wechat.models import (
    AccessToken,
    CustomMessage,
    MiniProgram,
    SendResult,
    SubscribeMessage,
    TemplateMessage,
    TemplateValue,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "AccessToken",
    "ConfigError",
    "CustomMessage",
    "ErrorClass",
    "FieldProblem",
    "MiniProgram",
    "QuotaError",
    "RecipientError",
    "RequestError",
    "RetryableError",
    "SendResult",
    "SubscribeMessage",
    "TemplateDataError",
    "TemplateMessage",
    "TemplateValue",
    "TokenError",
    "TransportError",
    "WeChatClient",
    "WeChatError",
    "check_field",
    "classify",
    "lookup",
    "validate_template_data",
]
