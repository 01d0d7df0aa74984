"""`wxpush setup`: register the block types, write the app block, create the limits.

Idempotent: a second run with the same values changes nothing and says so. Values come
from flags, else from the `WXPUSH_*` settings (docs/configuration.md), else from the existing
block (the account's limits: flags, else the block). A block saved with an older form of the
block type is saved again with the current one, so the UI's edit form shows every field.
Secrets are never printed (only the names of the fields that changed).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import typer
from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr, ValidationError

from cli.alerts import AlertChannels, AlertsReport, asetup_alerts
from cli.errors import OperatorError, validation_problems
from cli.help import model_default
from config import env_var, settings
from tasks.blocks import APP_NAME_PATTERN, AccountKind, TokenMode, WeChatAccessToken, WeChatApp
from tasks.token import lock_name

Change = Literal["created", "updated", "unchanged"]
BLOCK_TYPES: tuple[type[Block], ...] = (WeChatApp, WeChatAccessToken)


class SetupError(OperatorError):
    """A problem the operator must fix; the message says how (cli/errors.py prints it)."""


@dataclass
class SetupReport:
    """What `setup_app` did, item by item (never a secret value)."""

    api_url: str
    app: str
    block_types: dict[str, Change] = field(default_factory=dict)
    app_block: Change = "unchanged"
    changed_fields: list[str] = field(default_factory=list)
    #: The block was saved with an older form of the block type and saved again.
    schema_upgraded: bool = False
    #: The account's limits as the block now holds them (None: unlimited).
    rate_per_second: float | None = None
    daily_quota: int | None = None
    #: The account's frequency cap as the block now holds it (`frequency_cap_words`).
    frequency_cap: str = "off"
    #: The account's quiet hours as the block now holds them ("off" when none).
    quiet_hours: str = "off"
    limits: dict[str, Change] = field(default_factory=dict)
    alerts: AlertsReport = field(default_factory=AlertsReport)

    @property
    def changed(self) -> bool:
        """True if anything on the server was created or modified."""
        items = [*self.block_types.values(), self.app_block, *self.limits.values()]
        return any(item != "unchanged" for item in items) or self.alerts.changed

    def lines(self) -> list[str]:
        """Human-readable summary, one line per item."""
        out = [f"Prefect API: {self.api_url}"]
        for slug, change in self.block_types.items():
            out.append(f"  block type {slug}: {_word(change, 'registered')}")
        notes = list(self.changed_fields)
        if self.schema_upgraded:
            notes.append("saved with the current form, so the UI shows every field")
        detail = f" ({', '.join(notes)})" if notes else ""
        out.append(f"  block wechat-app/{self.app}: {self.app_block}{detail}")
        if self.daily_quota is not None:
            out.append(f"    {account_limits(self.rate_per_second, self.daily_quota)}")
            out.append(f"    frequency cap: {self.frequency_cap}")
            out.append(f"    quiet hours: {self.quiet_hours}")
        for name, change in self.limits.items():
            out.append(f"  concurrency limit {name} (limit 1): {change}")
        out += self.alerts.lines()
        out.append("Done." if self.changed else "Nothing to change: already set up.")
        return out


def account_limits(rate_per_second: float | None, daily_quota: int) -> str:
    """`account rate: 50 messages/s, daily quota: 100,000 template messages`."""
    rate = "unlimited" if rate_per_second is None else f"{rate_per_second:g} messages/s"
    return f"account rate: {rate}, daily quota: {daily_quota:,} template messages"


def frequency_cap_words(messages: int | None, hours: int) -> str:
    """`1 message per follower per 24 h, across the account's campaigns`, or `off`."""
    if messages is None:
        return "off"
    plural = "" if messages == 1 else "s"
    return f"{messages} message{plural} per follower per {hours} h, across the account's campaigns"


def _word(change: Change, created: str) -> str:
    return {"created": created, "updated": "schema updated", "unchanged": "unchanged"}[change]


# -- the steps -----------------------------------------------------------------------------


async def _check_api(client: PrefectClient) -> str:
    url = PREFECT_API_URL.value() or "(none set: Prefect's temporary local server)"
    error = await client.api_healthcheck()
    if error is not None:
        raise SetupError(
            f"Cannot reach the Prefect API at {url}: {type(error).__name__}: {error}. "
            "Start a server with `prefect server start` and point wxpush at it with "
            "PREFECT_API_URL=http://127.0.0.1:4200/api."
        )
    return str(url)


async def _register(client: PrefectClient, block_type: type[Block]) -> Change:
    slug = block_type.get_block_type_slug()
    try:
        await client.read_block_type_by_slug(slug)
    except ObjectNotFound:
        status: Change = "created"
    else:
        try:
            # A private helper, but the only way to tell whether this schema is new.
            await client.read_block_schema_by_checksum(block_type._calculate_schema_checksum())
            status = "unchanged"
        except ObjectNotFound:
            status = "updated"
    await block_type.aregister_type_and_schema(client=client)
    return status


_REQUIRED = {"app_id": "--app-id", "app_secret": "--app-secret"}


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


#: `asetup_app(rate_per_second=0)`: back to unlimited (None there means "keep").
UNLIMITED = 0
#: `asetup_app(frequency_cap=0)`: no frequency cap any more.
NO_FREQUENCY_CAP = 0
#: `asetup_app(quiet_hours="off")`: no quiet hours any more.
QUIET_HOURS_OFF = "off"


async def _older_form(client: PrefectClient, app: str) -> bool:
    """True if the stored document points at an older schema of the block type: the UI edits
    a document with its own schema, so fields added since (e.g. the account's limits) would
    be missing from its form until the document is saved again."""
    document = await client.read_block_document_by_name(
        app, WeChatApp.get_block_type_slug(), include_secrets=False
    )
    schema = document.block_schema
    # A private helper, as in `_register`: the checksum the current schema is stored under.
    return schema is not None and schema.checksum != WeChatApp._calculate_schema_checksum()


async def _write_app_block(
    client: PrefectClient, app: str, values: dict[str, Any], clear: frozenset[str] = frozenset()
) -> tuple[Change, list[str], bool, WeChatApp]:
    """Create or update the block; `clear` names fields set back to None (their default).
    Returns the change, the fields changed, whether an older form was upgraded, the block."""
    try:
        existing: WeChatApp | None = await WeChatApp.aload(app, client=client)
    except ValueError as exc:
        if not isinstance(exc.__cause__, ObjectNotFound):
            raise
        existing = None
    except RuntimeError as exc:  # Prefect's "failed validation", caused by a ValidationError
        if not isinstance(exc.__cause__, ValidationError):
            raise
        # Saved before a rule it breaks (e.g. the AppID's form): read it as it is, so the
        # flags given now can repair it; the merged block below is validated as usual.
        document = await client.read_block_document_by_name(
            app, WeChatApp.get_block_type_slug(), include_secrets=True
        )
        existing = WeChatApp.model_construct(**document.data)
    given = {key: value for key, value in values.items() if value is not None}
    given.update(dict.fromkeys(clear))
    if existing is None:
        missing = [flag for key, flag in _REQUIRED.items() if not given.get(key)]
        if missing:
            raise SetupError(
                f"wechat-app/{app} does not exist yet, so {' and '.join(missing)} "
                "are required (flags, or the WXPUSH_APP_ID / WXPUSH_APP_SECRET environment "
                "variables)."
            )
        merged = given
    else:
        merged = {**existing.model_dump(include=set(values)), **given}
    try:
        block = WeChatApp(**merged)
    except ValidationError as exc:
        raise SetupError(
            f"Invalid settings for wechat-app/{app}: {validation_problems(exc)}"
        ) from None
    if existing is None:
        await block.asave(app, client=client)
        return "created", [], False, block
    changed = [
        key for key in values if _plain(getattr(block, key)) != _plain(getattr(existing, key))
    ]
    upgrade = await _older_form(client, app)
    if not changed and not upgrade:
        return "unchanged", [], False, block
    await block.asave(app, overwrite=True, client=client)
    return "updated", changed, upgrade, block


async def _ensure_limit(client: PrefectClient, name: str, limit: int = 1) -> Change:
    try:
        existing = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True)
            )
            return "created"
        except ObjectAlreadyExists:
            return "unchanged"  # a concurrent setup won the race
    if existing.limit == limit and existing.active and not existing.slot_decay_per_second:
        return "unchanged"
    await client.update_global_concurrency_limit(
        name, GlobalConcurrencyLimitUpdate(limit=limit, active=True, slot_decay_per_second=0)
    )
    return "updated"


def required_limits(app: str) -> list[str]:
    """The global concurrency limits wxpush needs for one app (each with limit 1)."""
    return [lock_name(app)]


# -- the core, for tests and `wxpush demo` ------------------------------------------------


async def asetup_app(
    app: str = "default",
    *,
    app_id: str | None = None,
    app_secret: str | SecretStr | None = None,
    api_base_url: str | None = None,
    kind: AccountKind | None = None,
    token_mode: TokenMode | None = None,
    callback_token: str | SecretStr | None = None,
    encoding_aes_key: str | SecretStr | None = None,
    previous_encoding_aes_key: str | SecretStr | None = None,
    rate_per_second: float | None = None,
    daily_quota: int | None = None,
    frequency_cap: int | None = None,
    frequency_cap_hours: int | None = None,
    quiet_hours: str | None = None,
    quiet_hours_zone: str | None = None,
    api_follows_guardrails: bool | None = None,
    alerts: AlertChannels | None = None,
) -> SetupReport:
    """Register block types, create/update `wechat-app/<app>`, create its limits.

    None means "keep what the block has (or the default)"; `rate_per_second=0` (`UNLIMITED`)
    sets the account's rate back to unlimited, `frequency_cap=0` (`NO_FREQUENCY_CAP`) turns
    its frequency cap off. Raises `SetupError` with a message for the operator.
    """
    if not re.match(APP_NAME_PATTERN, app):
        raise SetupError(
            f"Invalid app name {app!r}: use lowercase letters, digits and dashes (it becomes "
            "the name of Prefect block documents)."
        )
    values: dict[str, Any] = {
        "app_id": app_id,
        "app_secret": app_secret,
        "api_base_url": api_base_url,
        "kind": kind,
        "token_mode": token_mode,
        "callback_token": callback_token,
        "encoding_aes_key": encoding_aes_key,
        "previous_encoding_aes_key": previous_encoding_aes_key,
        "rate_per_second": None if rate_per_second == UNLIMITED else rate_per_second,
        "daily_quota": daily_quota,
        "frequency_cap": None if frequency_cap == NO_FREQUENCY_CAP else frequency_cap,
        "frequency_cap_hours": frequency_cap_hours,
        "quiet_hours": None if quiet_hours == QUIET_HOURS_OFF else quiet_hours,
        "quiet_hours_zone": quiet_hours_zone,
        "api_follows_guardrails": api_follows_guardrails,
    }
    clear = frozenset({"rate_per_second"} if rate_per_second == UNLIMITED else ())
    if frequency_cap == NO_FREQUENCY_CAP:
        clear |= {"frequency_cap"}
    if quiet_hours == QUIET_HOURS_OFF:
        clear |= {"quiet_hours"}
    try:
        async with get_client() as client:
            report = SetupReport(api_url=await _check_api(client), app=app)
            for block_type in BLOCK_TYPES:
                slug = block_type.get_block_type_slug()
                report.block_types[slug] = await _register(client, block_type)
            written = await _write_app_block(client, app, values, clear)
            report.app_block, report.changed_fields, report.schema_upgraded, block = written
            report.rate_per_second, report.daily_quota = block.rate_per_second, block.daily_quota
            report.frequency_cap = frequency_cap_words(
                block.frequency_cap, block.frequency_cap_hours
            )
            window = block.quiet_window()
            report.quiet_hours = QUIET_HOURS_OFF if window is None else str(window)
            for name in required_limits(app):
                report.limits[name] = await _ensure_limit(client, name)
            report.alerts = await asetup_alerts(client, alerts or AlertChannels())
    except SetupError:
        raise
    except ValueError as exc:  # e.g. "No Prefect API URL provided"
        raise SetupError(f"Prefect is not configured: {exc}") from None
    return report


def setup_app(app: str = "default", **values: Any) -> SetupReport:
    """Synchronous `asetup_app`, same keyword arguments (runs its own event loop: not inside
    a running one)."""
    return asyncio.run(asetup_app(app, **values))


# -- the command ---------------------------------------------------------------------------


def _env(flag: str, setting: str, help_text: str, field: str | None = None) -> Any:
    """A flag that falls back on its WXPUSH_* setting (config/), then on the block's current
    value, then on the WeChatApp default (shown in help, read from the block's model:
    cli/help.py)."""
    shown = f"${env_var(setting)}, else the block's current value"
    if field is not None:
        shown += f", else {model_default(WeChatApp, field)}"
    return typer.Option(flag, help=help_text, show_default=shown)


def _kept(flag: str, help_text: str, field: str, unit: str = "", none: str = "none") -> Any:
    """A flag for one of the account's limits: no WXPUSH_* setting (they belong to one
    account, not to a machine), so the block's current value, then the WeChatApp default."""
    shown = f"the block's current value, else {model_default(WeChatApp, field, unit, none)}"
    return typer.Option(flag, help=help_text, show_default=shown)


def setup(
    app: Annotated[str, typer.Option("--app", help="Block name of the app to set up.")] = "default",
    app_id: Annotated[str | None, _env("--app-id", "app_id", "AppID (WeCom: CorpID).")] = None,
    app_secret: Annotated[
        str | None,
        _env("--app-secret", "app_secret", "AppSecret (prefer the environment variable)."),
    ] = None,
    api_base_url: Annotated[
        str | None,
        _env("--api-base-url", "api_base_url", "WeChat API base URL.", "api_base_url"),
    ] = None,
    kind: Annotated[
        AccountKind | None, _env("--kind", "account_kind", "Account kind.", "kind")
    ] = None,
    token_mode: Annotated[
        TokenMode | None,
        _env("--token-mode", "token_mode", "stable (recommended) or classic.", "token_mode"),
    ] = None,
    callback_token: Annotated[
        str | None,
        _env("--callback-token", "callback_token", "Callback Token (for the receiver)."),
    ] = None,
    encoding_aes_key: Annotated[
        str | None,
        _env("--encoding-aes-key", "callback_aes_key", "EncodingAESKey (for the receiver)."),
    ] = None,
    previous_encoding_aes_key: Annotated[
        str | None,
        _env(
            "--previous-encoding-aes-key",
            "callback_previous_aes_key",
            "The EncodingAESKey before a rotation (still accepted by the receiver).",
        ),
    ] = None,
    rate_per_second: Annotated[
        float | None,
        _kept(
            "--rate-per-second",
            "The account's send rate limit, messages/s, shared by all its campaigns; 0.1 or "
            "more, 0 = back to unlimited.",
            "rate_per_second",
            none="unlimited",
        ),
    ] = None,
    daily_quota: Annotated[
        int | None,
        _kept(
            "--daily-quota",
            "Template messages WeChat lets the account send per day (the admin console's API "
            "quota page).",
            "daily_quota",
            "messages",
        ),
    ] = None,
    frequency_cap: Annotated[
        int | None,
        _kept(
            "--frequency-cap",
            "At most this many messages to one follower per window, across the account's "
            "campaigns (e.g. 1 for marketing); 0 = no cap. Campaigns can override it.",
            "frequency_cap",
            none="no cap",
        ),
    ] = None,
    frequency_cap_hours: Annotated[
        int | None,
        _kept(
            "--frequency-cap-hours",
            "The frequency cap's rolling window, in hours.",
            "frequency_cap_hours",
            "h",
        ),
    ] = None,
    quiet_hours: Annotated[
        str | None,
        _kept(
            "--quiet-hours",
            "A daily window in which no campaign of the account sends, e.g. 22:00-08:00; "
            "campaigns wait and resume when it ends. off = none.",
            "quiet_hours",
            none="off",
        ),
    ] = None,
    quiet_hours_zone: Annotated[
        str | None,
        _kept(
            "--quiet-hours-zone",
            "The IANA time zone of the quiet hours.",
            "quiet_hours_zone",
        ),
    ] = None,
    api_follows_guardrails: Annotated[
        bool | None,
        typer.Option(
            "--api-follows-guardrails/--api-ignores-guardrails",
            help="Whether messages sent through the push API (`wxpush api`) are held through "
            "the quiet hours and refused at the frequency cap, as campaigns are.",
            show_default="the block's current value, else ignores",
        ),
    ] = None,
    alert_wecom_key: Annotated[
        str | None,
        _env(
            "--alert-wecom-key",
            "alert_wecom_key",
            "Send alerts to this WeCom group robot: the key= of its webhook URL (prefer the "
            "environment variable).",
        ),
    ] = None,
    alert_wecom_url: Annotated[
        str | None,
        typer.Option(
            "--alert-wecom-url",
            help="Where the WeCom robot API lives (the simulator's URL for a demo).",
            show_default="https://qyapi.weixin.qq.com",
        ),
    ] = None,
    alert_webhook_url: Annotated[
        str | None,
        _env(
            "--alert-webhook-url",
            "alert_webhook_url",
            "Send alerts to this URL as JSON {subject, text, source}.",
        ),
    ] = None,
    alert_email_to: Annotated[
        list[str] | None,
        typer.Option(
            "--alert-email-to",
            help="Send alerts by email to this address (repeat).",
            show_default="the saved email channel's, if any",
        ),
    ] = None,
    alert_email_from: Annotated[
        str | None,
        typer.Option(
            "--alert-email-from",
            help="The alerts' sender address.",
            show_default="the saved email channel's, if any",
        ),
    ] = None,
    alert_sendgrid_api_key: Annotated[
        str | None,
        _env(
            "--alert-sendgrid-api-key",
            "alert_sendgrid_api_key",
            "SendGrid API key for alerts by email (prefer the environment variable).",
        ),
    ] = None,
    alert_block: Annotated[
        list[str] | None,
        typer.Option(
            "--alert-block",
            help="Also send alerts through this Prefect notification block, made in the UI, "
            "as <block-type>/<name>, e.g. slack-webhook/ops (repeat).",
            show_default="the blocks the alert automations already notify",
        ),
    ] = None,
) -> None:
    """Register wxpush's block types, create or update the app's block, create its limits.
    A malformed AppID, EncodingAESKey or empty callback Token is refused with its reason.
    Prints the account's rate limit and daily quota as the block now holds them."""
    env = settings()
    report = setup_app(
        app,
        app_id=app_id or env.app_id,
        app_secret=app_secret or env.app_secret,
        api_base_url=api_base_url or env.api_base_url,
        kind=kind or env.account_kind,
        token_mode=token_mode or env.token_mode,
        callback_token=callback_token or env.callback_token,
        encoding_aes_key=encoding_aes_key or env.callback_aes_key,
        previous_encoding_aes_key=previous_encoding_aes_key or env.callback_previous_aes_key,
        rate_per_second=rate_per_second,
        daily_quota=daily_quota,
        frequency_cap=frequency_cap,
        frequency_cap_hours=frequency_cap_hours,
        quiet_hours=quiet_hours,
        quiet_hours_zone=quiet_hours_zone,
        api_follows_guardrails=api_follows_guardrails,
        alerts=AlertChannels(
            wecom_key=_secret(alert_wecom_key) or env.alert_wecom_key,
            wecom_url=alert_wecom_url,
            webhook_url=_secret(alert_webhook_url) or env.alert_webhook_url,
            email_to=alert_email_to or (),
            email_from=alert_email_from,
            sendgrid_api_key=_secret(alert_sendgrid_api_key) or env.alert_sendgrid_api_key,
            blocks=alert_block or (),
        ),
    )
    for line in report.lines():
        typer.echo(line)


def _secret(value: str | None) -> SecretStr | None:
    return SecretStr(value) if value else None


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `wxpush` app."""
    app.command("setup")(setup)
