"""Settings of the simulated account, of the fault injector and of the callback pushes (the
/_sim/config, /_sim/faults and /_sim/callbacks/config models); every number the real platform
imposes is a knob here, because the real values change."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from wechat.crypto import MessageCrypto
from wechat.simulator.defaults import DEMO_ORIGINAL_ID

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class AccountConfig(BaseModel):
    """One Official Account: credentials and the platform rules the simulator enforces."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    app_id: str = Field(description="AppID callers must present (wx + 16 hex chars in real life).")
    app_secret: str = Field(repr=False, description="AppSecret callers must present.")
    token_expires_in: int = Field(7200, ge=60, description="Life of every issued access_token, s.")
    classic_overlap_seconds: int = Field(
        300, ge=0, description="How long /cgi-bin/token keeps the previous token valid, s."
    )
    stable_roll_seconds: int = Field(
        300, ge=0, description="Last part of a stable token's life in which a new one is issued, s."
    )
    force_refresh_daily_limit: int = Field(
        20, ge=0, description="stable_token force_refresh calls allowed per day (then 45009)."
    )
    force_refresh_min_interval: int = Field(
        30,
        ge=0,
        description="A force_refresh sooner than this after the last one does not refresh.",
    )
    classic_token_daily_limit: int = Field(
        2000, ge=0, description="/cgi-bin/token calls allowed per day (then 45009)."
    )
    dedupe_window_seconds: int = Field(
        600, ge=0, description="client_msg_id dedupe window of template/send, s."
    )
    daily_quota: int = Field(100_000, ge=0, description="Accepted template sends per day (45009).")
    custom_window_hours: float = Field(
        48, ge=0, description="Customer-service window after the follower's last message, h."
    )
    custom_message_limit: int = Field(
        5, ge=0, description="Customer-service sends allowed in that window (then 45047)."
    )
    custom_event_seconds: float = Field(
        60, ge=0, description="Customer-service window after a menu click or a follow, s."
    )
    custom_event_limit: int = Field(
        3, ge=0, description="Customer-service sends allowed in that window (then 45047)."
    )

    @model_validator(mode="after")
    def _roll_inside_life(self) -> AccountConfig:
        if self.stable_roll_seconds >= self.token_expires_in:
            raise ValueError("stable_roll_seconds must be shorter than token_expires_in")
        return self


class FaultConfig(BaseModel):
    """Injected failures; one seeded RNG decides them, so a seed replays the same outcomes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = Field(
        0, description="Seed of the fault RNG; re-applied on every POST /_sim/faults."
    )
    minus_one_rate: Rate = Field(
        0.0, description='Share answered {"errcode":-1,"errmsg":"system error"}.'
    )
    http_5xx_rate: Rate = Field(
        0.0, description="Share answered with an HTTP 5xx and an HTML body."
    )
    http_5xx_status: int = Field(502, ge=500, le=599, description="Status of those answers.")
    slow_rate: Rate = Field(0.0, description="Share answered normally after slow_seconds.")
    slow_seconds: float = Field(2.0, ge=0, le=600, description="Delay of a slow answer, s.")
    drop_rate: Rate = Field(0.0, description="Share whose TCP connection is closed without answer.")
    rate_limit_per_second: int | None = Field(
        None, ge=1, description="Message sends accepted per second (then 45011); None = no limit."
    )
    apply_to_token_endpoints: bool = Field(
        False, description="Also inject faults into /cgi-bin/token and /cgi-bin/stable_token."
    )

    @model_validator(mode="after")
    def _rates_fit(self) -> FaultConfig:
        total = self.minus_one_rate + self.http_5xx_rate + self.slow_rate + self.drop_rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:.3f} > 1")
        return self

    @property
    def injects(self) -> bool:
        """True when any random fault can happen (the hot path skips the RNG otherwise)."""
        return (self.minus_one_rate + self.http_5xx_rate + self.slow_rate + self.drop_rate) > 0


class CallbackConfig(BaseModel):
    """Where and how the simulator pushes callbacks (receipts, follower actions) as WeChat does.

    The token and the EncodingAESKey are `SecretStr`: every JSON dump (the admin API's GET
    answers included) shows them masked, so they never leave the process by accident.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    callback_url: str | None = Field(
        None, description="The account's server URL (POSTed to); None = no callbacks."
    )
    callback_token: SecretStr | None = Field(
        None, description="Token of the server URL config: signs every push (SHA-1)."
    )
    encoding_aes_key: SecretStr | None = Field(
        None, description="43-char EncodingAESKey: set = safe mode (AES envelope); None = plain."
    )
    original_id: str = Field(
        DEMO_ORIGINAL_ID, min_length=1, description="The account's gh_ id (ToUserName)."
    )
    receipt_mix: dict[str, float] = Field(
        default_factory=lambda: {"success": 1.0},
        description="TEMPLATESENDJOBFINISH Status string → share; the shares add up to 1.",
    )
    receipt_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="openid → the Status every receipt of a send to them carries, instead of "
        "a draw from receipt_mix (e.g. `failed:freq limit` for a few followers).",
    )
    receipt_delay_seconds: float = Field(
        0.05, ge=0, le=3600, description="From an accepted template send to its receipt, s."
    )
    seed: int = Field(0, description="Seed of the receipt RNG; re-applied on every POST.")
    max_concurrency: int = Field(32, ge=1, le=1024, description="Pushes in flight at most.")
    timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="An attempt not answered 200 within this has failed, s."
    )
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts per push, the first included.")
    retry_delay_seconds: float = Field(
        0.1, ge=0, le=600, description="Pause between a failed attempt and the next one, s."
    )
    clock: Literal["real", "simulator"] = Field(
        "real",
        description="Clock of the pushes' timestamp and CreateTime: real time (what a receiver "
        "checks freshness against), or the simulator's movable clock.",
    )

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("callback_url must be an http:// or https:// URL")
        return value

    @field_validator("receipt_mix")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("receipt_mix needs at least one Status")
        if any(not status or share < 0 for status, share in value.items()):
            raise ValueError("receipt_mix needs non-empty Status strings and shares >= 0")
        total = sum(value.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"receipt_mix shares add up to {total:.6f}, not 1")
        return value

    @field_validator("receipt_overrides")
    @classmethod
    def _overrides(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not openid or not status for openid, status in value.items()):
            raise ValueError("receipt_overrides needs non-empty openids and Status strings")
        return value

    @model_validator(mode="after")
    def _usable(self) -> CallbackConfig:
        token = self.callback_token.get_secret_value() if self.callback_token else ""
        if self.callback_url is not None and not token:
            raise ValueError("callback_url needs a callback_token (WeChat always signs pushes)")
        if self.encoding_aes_key is not None:
            # Raises EncodingAESKeyError (a ValueError) naming the problem, never the key.
            MessageCrypto(token or "-", self.encoding_aes_key.get_secret_value(), "")
        return self

    @property
    def enabled(self) -> bool:
        return self.callback_url is not None

    @property
    def safe_mode(self) -> bool:
        return self.encoding_aes_key is not None
