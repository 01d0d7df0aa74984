"""The two Prefect Blocks wxpush keeps its WeChat credentials in.

`WeChatApp` holds what an operator types in once (AppID, AppSecret, the account's rate limit
and daily quota, callback keys); `WeChatAccessToken` holds what the refresh flow writes every
couple of hours. Both use the same document name (`wechat-app/default` ↔
`wechat-access-token/default`), so one name picks an account everywhere. Every secret is a
`SecretStr` (docs/architecture.md, decision 8): masked in `repr`, in the UI and in the API
unless a client asks for secrets explicitly.

In async code use `await WeChatApp.aload(name)` / `await block.asave(...)`: the plain
`load`/`save` return coroutines there (async_dispatch: docs/tokens.md, "Prefect facts").
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from sending.quiet_hours import QuietHours, QuietHoursError
from tasks.params import MIN_RATE_PER_SECOND
from wechat.errors import AccountKind
from wechat.identifiers import callback_token_form, check_app_id, encoding_aes_key_form
from wechat.models import AccessToken

__all__ = ["APP_NAME_PATTERN", "AccountKind", "TokenMode", "WeChatAccessToken", "WeChatApp"]

TokenMode = Literal["stable", "classic"]

DEFAULT_API_BASE_URL = "https://api.weixin.qq.com"
#: Prefect block document names: lowercase letters, digits and dashes.
APP_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
#: WeChat's default daily quota of template messages for an account (it grows with followers).
DEFAULT_DAILY_QUOTA = 100_000


def _one_box(schema: dict[str, Any]) -> None:
    """One number box in the block's form, empty = unlimited: Prefect's form draws
    `float | None` as a switch whose "None" side has no box (tasks/params.py, `plain_input`,
    does the same for the campaign form, and sets a position, which Prefect's block schema
    assigns itself in declaration order)."""
    branches = schema.pop("anyOf", [])
    kept = [branch for branch in branches if branch.get("type") != "null"]
    schema.update(kept[0] if len(kept) == 1 else {"anyOf": branches})
    if schema.get("default", 0) is None:
        del schema["default"]


class WeChatApp(Block):
    """A WeChat Official Account (or WeCom app) that wxpush sends as.

    Create one per account in the Prefect UI (Blocks → WeChat App) or with `wxpush setup`.
    The block's name (e.g. `default`) is the `app` parameter of every wxpush flow.
    """

    # A refused value is a secret as often as not: keep it out of the error's text.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name: ClassVar[str] = "WeChat App"
    _block_type_slug: ClassVar[str] = "wechat-app"
    _description: ClassVar[str] = (
        "The WeChat Official Account (or WeCom app) wxpush sends as: AppID, AppSecret, the "
        "account's rate limit and daily quota, and the callback keys. The block name is the "
        "`app` parameter of wxpush flows."
    )

    app_id: str = Field(
        title="AppID",
        min_length=1,
        description=(
            "The account's AppID (WeChat admin console → Settings and Development → Basic "
            "configuration). For WeCom, the CorpID."
        ),
    )
    app_secret: SecretStr = Field(
        title="AppSecret",
        description=(
            "The AppSecret from the same page (WeCom: the app's Secret). Stored encrypted; "
            "never shown again, never logged."
        ),
    )
    api_base_url: str = Field(
        default=DEFAULT_API_BASE_URL,
        title="API base URL",
        description=(
            "Where the WeChat server API lives. Leave the default in production; point it at "
            "the wxpush simulator (e.g. http://127.0.0.1:8090) for tests and demos."
        ),
    )
    kind: AccountKind = Field(
        default="official_account",
        title="Account kind",
        description="official_account (公众号/服务号) or wecom (企业微信).",
    )
    token_mode: TokenMode = Field(
        default="stable",
        title="Token mode",
        description=(
            "stable (recommended): /cgi-bin/stable_token, the same token for every caller, "
            "so several refreshers never knock each other out. classic: /cgi-bin/token, "
            "every fetch invalidates the previous token after 5 minutes and counts against "
            "the 2000/day quota."
        ),
    )
    rate_per_second: float | None = Field(
        default=None,
        ge=MIN_RATE_PER_SECOND,
        allow_inf_nan=False,  # "inf" is no limit: that is the empty box
        title="Account rate limit",
        description=(
            "At most this many messages per second for the whole account, shared by every "
            "campaign that sends as it; 0.1 or more (one message every 10 s). Empty = "
            "unlimited: as fast as WeChat answers. WeChat publishes no per-second figure: set "
            "one if the account's API quota page (or WeChat) names one, or to spread the daily "
            "quota over the day. A campaign's own rate limit still caps that campaign."
        ),
        json_schema_extra=_one_box,
    )
    daily_quota: int = Field(
        default=DEFAULT_DAILY_QUOTA,
        ge=1,
        title="Daily template quota",
        description=(
            "Template messages WeChat lets this account send per day; beyond it WeChat answers "
            "45009 until midnight, Beijing time. 100,000 is WeChat's default; it grows with the "
            "follower count. Look it up in the admin console (Settings and Development → API "
            "quota, 接口权限) or with POST /cgi-bin/openapi/quota/get "
            '{"cgi_path": "/cgi-bin/message/template/send"}.'
        ),
    )
    frequency_cap: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        title="Messages per follower (frequency cap)",
        description=(
            "At most this many messages to one follower within the window below, counting "
            "every campaign of this account; a follower at the cap is skipped and recorded "
            "as frequency_cap. Empty = no cap. E.g. 1 with 24 hours for marketing. A "
            "campaign can use its own cap or none (transactional messages); digests are "
            "never capped but do count."
        ),
        json_schema_extra=_one_box,
    )
    frequency_cap_hours: int = Field(
        default=24,
        ge=1,
        le=24 * 30,
        title="Frequency cap window (hours)",
        description=(
            "The rolling window of the cap above: messages sent within the last this many "
            "hours count. Only used when the cap is set."
        ),
    )
    quiet_hours: str | None = Field(
        default=None,
        title="Quiet hours",
        description=(
            "No campaign of this account sends inside this daily window, e.g. 22:00-08:00 "
            "(24-hour clock; an end before the start runs past midnight). A campaign started "
            "inside it waits, one running into it pauses, and both resume by themselves when "
            "it ends. Empty = off."
        ),
        json_schema_extra=_one_box,
    )
    quiet_hours_zone: str = Field(
        default="Asia/Shanghai",
        title="Quiet hours time zone",
        description="The IANA time zone of the quiet hours, e.g. Asia/Shanghai.",
    )
    api_follows_guardrails: bool = Field(
        default=False,
        title="Push API follows quiet hours and the frequency cap",
        description=(
            "Off (the default): messages sent through the push API (`wxpush api`) are "
            "transactional and go at once, inside quiet hours too and whatever the frequency "
            "cap. On: the API holds them through the quiet hours above and fails a message to "
            "a follower at the cap (reason frequency_cap). The account's rate and daily quota "
            "apply either way."
        ),
    )
    callback_token: SecretStr | None = Field(
        default=None,
        title="Callback Token",
        description=(
            "The Token from the server configuration (服务器配置) page, used to check the "
            "signature of WeChat's callbacks. Only needed by the callback receiver."
        ),
    )
    encoding_aes_key: SecretStr | None = Field(
        default=None,
        title="EncodingAESKey",
        description=(
            "The 43-character EncodingAESKey from the same page, for encrypted (safe mode) "
            "callbacks. Only needed by the callback receiver."
        ),
    )
    previous_encoding_aes_key: SecretStr | None = Field(
        default=None,
        title="Previous EncodingAESKey",
        description=(
            "After changing the EncodingAESKey in WeChat's console, put the old one here for "
            "a while: callbacks still encrypted with it are accepted."
        ),
    )

    # The forms of wechat/identifiers.py, so a typo is refused when the block is saved, with
    # its reason, not discovered by the first token fetch or the first callback.
    _token_form = field_validator("callback_token")(callback_token_form)
    _key_form = field_validator("encoding_aes_key", "previous_encoding_aes_key")(
        encoding_aes_key_form
    )

    @model_validator(mode="after")
    def _app_id_form(self) -> WeChatApp:
        check_app_id(self.app_id, self.kind)
        return self

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _blank_is_off(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _quiet_hours_form(self) -> WeChatApp:
        self.quiet_window()  # a malformed window or zone is refused when the block is saved
        return self

    def quiet_window(self) -> QuietHours | None:
        """The account's quiet hours, or None when they are off."""
        if self.quiet_hours is None:
            return None
        try:
            return QuietHours.parse(self.quiet_hours, self.quiet_hours_zone)
        except QuietHoursError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("api_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("api_base_url must start with http:// or https://")
        return value


class WeChatAccessToken(Block):
    """The current access_token of one WeChat App, kept fresh by `refresh_access_token`.

    Senders read it, never fetch a token themselves on the hot path (docs/tokens.md).
    """

    _block_type_name: ClassVar[str] = "WeChat Access Token"
    _block_type_slug: ClassVar[str] = "wechat-access-token"
    _description: ClassVar[str] = (
        "The current access_token of the WeChat App with the same block name. Written by "
        "the refresh-access-token flow; there is no need to edit it by hand."
    )

    access_token: SecretStr = Field(
        title="Access token", description="The token itself. Never logged, never shown."
    )
    expires_at: datetime = Field(
        title="Expires at (UTC)",
        description="When WeChat stops accepting the token, by the fetching machine's clock.",
    )
    fetched_at: datetime = Field(
        title="Fetched at (UTC)", description="When wxpush obtained this token from WeChat."
    )

    @field_validator("expires_at", "fetched_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # Naive datetimes are taken as UTC: Prefect's API hands back aware ones anyway.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @classmethod
    def from_token(cls, token: AccessToken) -> WeChatAccessToken:
        """The block document for a token WeChat just issued."""
        return cls(
            access_token=token.access_token,
            expires_at=token.expires_at,
            fetched_at=token.fetched_at,
        )

    def remaining(self, now: datetime | None = None) -> timedelta:
        """Time left before the token expires (negative once it has)."""
        return self.expires_at - (now or datetime.now(UTC))

    def usable(self, margin_seconds: float = 0.0, now: datetime | None = None) -> bool:
        """True if more than `margin_seconds` of life remain."""
        return self.remaining(now).total_seconds() > margin_seconds

    def same_token(self, other: SecretStr | str | None) -> bool:
        """True if `other` is this very token (compared without exposing either)."""
        if other is None:
            return False
        value = other.get_secret_value() if isinstance(other, SecretStr) else other
        return hmac.compare_digest(value.encode(), self.access_token.get_secret_value().encode())
