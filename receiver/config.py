"""What the callback receiver needs to know: the account, its callback secrets, its limits.

Built from the settings (`WXPUSH_APP_ID`, `WXPUSH_CALLBACK_TOKEN`, `WXPUSH_CALLBACK_AES_KEY`,
`WXPUSH_CALLBACK_PREVIOUS_AES_KEY`, `WXPUSH_ACCOUNT_KIND`: config/) or, by `wxpush receiver`,
from the `wechat-app` block. Secrets stay `SecretStr`: they never reach a log or a repr.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from config import Settings, env_var, settings
from wechat.errors import AccountKind
from wechat.identifiers import callback_token_form, check_app_id, encoding_aes_key_form


class ReceiverConfigError(ValueError):
    """The receiver lacks a setting it needs; the message names it and where to set it."""


class ReceiverConfig(BaseModel):
    """One receiver serves one WeChat account (one AppID, one callback Token)."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)  # inputs may be secrets

    app_id: str = Field(min_length=1, description="The account's AppID (checked after decrypting).")
    kind: AccountKind = Field(
        "official_account", description="official_account (AppID) or wecom (CorpID)."
    )
    token: SecretStr = Field(description="The callback Token set in WeChat's admin console.")
    encoding_aes_key: SecretStr | None = Field(
        None, description="EncodingAESKey (43 characters); required for safe mode."
    )
    previous_encoding_aes_key: SecretStr | None = Field(
        None, description="The key before a rotation: tried when the current one fails."
    )
    timestamp_window_seconds: int = Field(
        300, ge=1, description="Refuse pushes whose timestamp is further than this from now."
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Larger bodies get HTTP 413.")
    batch_size: int = Field(500, ge=1, description="Callbacks written per transaction.")
    commit_timeout_seconds: float = Field(
        4.0,
        gt=0,
        le=4.5,
        description="A push not committed within this gets 503 (WeChat waits 5 s, then retries).",
    )
    max_backlog: int = Field(
        10_000, ge=1, description="Pushes waiting for a commit, at most; more get 503 at once."
    )
    # Bounds on what anyone who can reach the URL, token or not, can make the process hold.
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Request line and headers over this are cut off (400)."
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="A request line and headers must arrive within this."
    )
    body_timeout_seconds: float = Field(
        10.0, gt=0, description="A body must arrive within this once the headers have."
    )
    keep_alive_timeout_seconds: int = Field(
        5, ge=1, description="An idle kept-alive connection is closed after this."
    )
    max_connections: int = Field(
        1000, ge=2, description="Open connections; more evict the oldest idle or unfinished one."
    )
    max_nonce_length: int = Field(
        32, ge=8, description="WeChat's nonces are short digit strings; longer ones get 400."
    )
    nonce_cache_entries: int = Field(
        600_000, ge=3, description="(timestamp, nonce) pairs remembered against replays, at most."
    )
    refusal_log_burst: int = Field(
        10, ge=1, description="Refusal warnings logged per reason and interval; the rest counted."
    )
    refusal_log_interval_seconds: float = Field(
        60.0, gt=0, description="The interval of `refusal_log_burst`."
    )

    # Refused here, before the receiver says it is receiving: a wrong form can never verify.
    _token_form = field_validator("token")(callback_token_form)
    _key_form = field_validator("encoding_aes_key", "previous_encoding_aes_key")(
        encoding_aes_key_form
    )

    @model_validator(mode="after")
    def _app_id_form(self) -> ReceiverConfig:
        check_app_id(self.app_id, self.kind)
        return self

    @classmethod
    def from_settings(cls, given: Settings | None = None, **overrides: object) -> ReceiverConfig:
        """The config from the WXPUSH_* settings (default: this process's); raises
        ReceiverConfigError naming what is missing."""
        given = given or settings()
        values: dict[str, object] = {
            "app_id": given.app_id or "",
            "kind": given.account_kind or "official_account",
            "token": given.callback_token or "",
            "encoding_aes_key": given.callback_aes_key,
            "previous_encoding_aes_key": given.callback_previous_aes_key,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        names = {"app_id": env_var("app_id"), "token": env_var("callback_token")}
        missing = [env for name, env in names.items() if not values[name]]
        if missing:
            raise ReceiverConfigError(
                f"the receiver needs {' and '.join(missing)}: set them in the environment, "
                "or in the wechat-app block (`wxpush setup --callback-token …`)"
            )
        return cls.model_validate(values)
