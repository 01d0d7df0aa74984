"""Every `WXPUSH_*` environment variable as one typed `Settings`, read once per process.

Nothing else in wxpush reads these variables: `settings()` parses the environment the first
time it is called (never at import), validates every variable at once and caches the result.
A bad value raises `ConfigurationError` naming the variable, never its value (it may be a
secret); the CLI's boundary prints it as one line. A child process is handed what it needs in
an explicit env dict; a command that wants other values in its own process (`wxpush demo`'s
database) says so with `overridden(...)`, never by rewriting `os.environ`.

docs/configuration.md is this model as a table (`python -m config` prints it; a test checks
that the page and the model agree).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "WXPUSH_"
#: What a SQLAlchemy URL starts with (`dialect[+driver]://`); the rest is the driver's to judge.
_URL_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_URL_HINT = "use sqlite:///path/to/wxpush.db or postgresql://user@host:5432/dbname"


class ConfigurationError(ValueError):
    """A `WXPUSH_*` variable has a value wxpush cannot use; the message names the variable
    and the rule, never the value."""


def _who(readers: str, shown_default: str | None = None) -> dict[str, Any]:
    """The extra facts docs/configuration.md shows: who reads the variable, and what an
    unset one means when the model's default (None) does not say it."""
    return {"read_by": readers, **({"default_text": shown_default} if shown_default else {})}


class Settings(BaseSettings):
    """wxpush's configuration from the environment; each field is `WXPUSH_<FIELD NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # `WXPUSH_DEBUG=` is the same as unset, as it always was
        frozen=True,
        hide_input_in_errors=True,  # values may be secrets or URLs with passwords
        extra="ignore",
    )

    # -- the databases ----------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the ledger database; `postgresql://` means psycopg 3. "
        "`wxpush demo` and `wxpush serve` default to `<state dir>/wxpush.db` instead.",
        json_schema_extra=_who(
            "every command that opens the database, the receiver, flow runs, Alembic",
            "`sqlite:///<working directory>/wxpush.db`",
        ),
    )
    audience_database_url: str | None = Field(
        None,
        description="The connection audience and digest SQL run through: ideally the "
        "read-only role `wxpush db audience-role` prints (docs/database.md).",
        json_schema_extra=_who("flow runs (push-campaign, daily-digest)", "the ledger's URL"),
    )
    allow_superuser_audience: bool = Field(
        False,
        description="Let audience SQL run as a PostgreSQL superuser (refused otherwise).",
        json_schema_extra=_who("flow runs (push-campaign, daily-digest)"),
    )

    # -- the WeChat account (`wxpush setup` writes them into the wechat-app block) ------------
    app_id: str | None = Field(
        None,
        description="The account's AppID (WeCom: CorpID).",
        json_schema_extra=_who(
            "`wxpush setup`, `wxpush receiver`, `wxpush seed`",
            "the block's value (setup, receiver); the simulator's demo app (seed)",
        ),
    )
    app_secret: SecretStr | None = Field(
        None,
        description="The account's AppSecret; safer here than on the command line.",
        json_schema_extra=_who("`wxpush setup`", "the block's value"),
    )
    api_base_url: str | None = Field(
        None,
        description="WeChat API base URL (the simulator's URL for tests and demos).",
        json_schema_extra=_who("`wxpush setup`", "the block's value, else the real API"),
    )
    account_kind: Literal["official_account", "wecom"] | None = Field(
        None,
        description="Which kind of account the AppID names.",
        json_schema_extra=_who(
            "`wxpush setup`, `wxpush receiver`", "the block's value, else `official_account`"
        ),
    )
    token_mode: Literal["stable", "classic"] | None = Field(
        None,
        description="How access tokens are fetched: `stable` (recommended) or `classic`.",
        json_schema_extra=_who("`wxpush setup`", "the block's value, else `stable`"),
    )
    callback_token: SecretStr | None = Field(
        None,
        description="The callback Token of WeChat's server configuration. When set, "
        "`wxpush receiver` takes its account from these variables, not from the block.",
        json_schema_extra=_who("`wxpush setup`, `wxpush receiver`", "the block's value"),
    )
    callback_aes_key: SecretStr | None = Field(
        None,
        description="The EncodingAESKey (43 characters A-Z a-z 0-9) for safe mode.",
        json_schema_extra=_who(
            "`wxpush setup`, `wxpush receiver`", "the block's value, else plaintext only"
        ),
    )
    callback_previous_aes_key: SecretStr | None = Field(
        None,
        description="The EncodingAESKey before a rotation, still accepted by the receiver.",
        json_schema_extra=_who("`wxpush setup`, `wxpush receiver`", "the block's value"),
    )

    # -- where alerts go (docs/alerts.md) ------------------------------------------------------
    alert_wecom_key: SecretStr | None = Field(
        None,
        description="The key of a WeCom group robot (the `key=` of its webhook URL) that "
        "alerts are posted to.",
        json_schema_extra=_who("`wxpush setup`", "the saved alert channel, if any"),
    )
    alert_webhook_url: SecretStr | None = Field(
        None,
        description="A URL that alerts are POSTed to as JSON `{subject, text, source}`.",
        json_schema_extra=_who("`wxpush setup`", "the saved alert channel, if any"),
    )
    alert_sendgrid_api_key: SecretStr | None = Field(
        None,
        description="A SendGrid API key, for alerts by email (with `--alert-email-to`).",
        json_schema_extra=_who("`wxpush setup`", "the saved alert channel, if any"),
    )

    # -- the local services and the worker ----------------------------------------------------
    state_dir: Path = Field(
        Path(".wxpush"),
        description="Where `wxpush demo` and `wxpush serve` keep the Prefect server's "
        "history, their database and the services' logs.",
        json_schema_extra=_who("`wxpush demo`, `wxpush serve`"),
    )
    home: Path = Field(
        Path("."),
        description="The folder a worker's flow runs work in (prefect.yaml's pull step reads "
        "it in each run; its `wxpush.db` is the default database there).",
        json_schema_extra=_who("`wxpush worker` (the `--home` default); Prefect's pull step"),
    )
    debug: bool = Field(
        False,
        description="Show the full traceback of a failure instead of its one line "
        "(as `wxpush --debug`).",
        json_schema_extra=_who("every `wxpush` command"),
    )

    # -- the push API (`wxpush api`, docs/api.md) -------------------------------------------
    api_host: str = Field(
        "127.0.0.1",
        description="The address `wxpush api` listens on.",
        json_schema_extra=_who("`wxpush api`, `wxpush serve`"),
    )
    api_port: int = Field(
        8903,
        ge=1,
        le=65535,
        description="The port `wxpush api` listens on.",
        json_schema_extra=_who("`wxpush api`, `wxpush serve`"),
    )
    api_wait_seconds: float = Field(
        10.0,
        ge=0,
        le=30,
        description="How long a request waits for WeChat's answer when it gives no `wait` "
        "(0-30 s); past it the answer is 202 `queued`.",
        json_schema_extra=_who("`wxpush api`"),
    )
    api_batch_max: int = Field(
        1000,
        ge=1,
        le=1000,
        description="The most messages one `POST /v1/messages/batch` may carry (at most 1,000).",
        json_schema_extra=_who("`wxpush api`"),
    )

    # -- the simulator ------------------------------------------------------------------------
    simulator_app_secret: SecretStr | None = Field(
        None,
        description="The simulated account's AppSecret (keeps it out of argv).",
        json_schema_extra=_who("`wxpush simulator`", "the demo account's secret"),
    )
    simulator_callback_token: SecretStr | None = Field(
        None,
        description="The Token the simulator signs its callback pushes with.",
        json_schema_extra=_who(
            "`wxpush simulator --callback-url …`", "unset (required with `--callback-url`)"
        ),
    )
    simulator_encoding_aes_key: SecretStr | None = Field(
        None,
        description="The EncodingAESKey the simulator encrypts its pushes with (safe mode).",
        json_schema_extra=_who("`wxpush simulator --callback-url …`", "none: plaintext pushes"),
    )

    @field_validator("database_url", "audience_database_url")
    @classmethod
    def _looks_like_a_url(cls, value: str | None) -> str | None:
        """`dialect://…`: a path or a typo is refused here, before any command uses it."""
        if value is not None and not _URL_FORM.match(value.strip()):
            raise ValueError(f"not a database URL: {_URL_HINT}")
        return None if value is None else value.strip()


def env_var(field: str) -> str:
    """The environment variable of a `Settings` field (`database_url` → WXPUSH_DATABASE_URL):
    the one spelling of the names code hands to child processes."""
    if field not in Settings.model_fields:
        raise KeyError(f"Settings has no field {field!r}")
    return ENV_PREFIX + field.upper()


@functools.cache
def _from_environment() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(_problems(exc)) from None


_overrides: list[Settings] = []
_overrides_lock = threading.Lock()


def settings() -> Settings:
    """This process's settings: the environment, parsed on first use and kept; the innermost
    `overridden(...)` block's while one is open (threads included)."""
    with _overrides_lock:
        if _overrides:
            return _overrides[-1]
    return _from_environment()


class _PrefectApi(BaseSettings):
    """Prefect's own PREFECT_API_URL, for the one process that must not import Prefect to
    learn it: the callback receiver, which posts its spike events over plain HTTP."""

    model_config = SettingsConfigDict(env_prefix="PREFECT_", extra="ignore")
    api_url: str | None = None


def prefect_api_url() -> str | None:
    """PREFECT_API_URL as this process's environment sets it (Prefect profiles are not read:
    only Prefect itself does that); None when unset or empty."""
    return _PrefectApi().api_url or None


def reload() -> None:
    """Forget the parsed environment: the next `settings()` reads it again (each `wxpush`
    command starts this way; tests whose environment changes call it)."""
    _from_environment.cache_clear()


@contextmanager
def overridden(**values: Any) -> Iterator[Settings]:
    """This process's settings with `values` in place of the environment's for the block,
    validated like the environment (e.g. `wxpush demo`'s own database URL for the flows it
    runs in-process). Children still get only what their env dict says."""
    unknown = set(values) - set(Settings.model_fields)
    if unknown:
        raise TypeError(f"Settings has no field(s) {', '.join(sorted(unknown))}")
    try:
        current = Settings(**values)
    except ValidationError as exc:
        raise ConfigurationError(_problems(exc)) from None
    with _overrides_lock:
        _overrides.append(current)
    try:
        yield current
    finally:
        with _overrides_lock:
            _overrides.remove(current)


def _problems(exc: ValidationError) -> str:
    """`WXPUSH_…: the rule it breaks` for each bad variable, never its value."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = env_var(field) if field in Settings.model_fields else field
        rule = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {rule[:1].lower()}{rule[1:]}")
    return "; ".join(problems) + " (fix or unset it; docs/configuration.md lists the variables)"


# -- docs/configuration.md ---------------------------------------------------------------------


def _type_text(annotation: Any) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    kind = args[0]
    if get_origin(kind) is Literal:
        return " \\| ".join(f"`{choice}`" for choice in get_args(kind))
    names = {str: "text", bool: "boolean", int: "integer", float: "number", Path: "path"}
    return {**names, SecretStr: "secret"}.get(kind, str(kind))


def _default_text(name: str) -> str:
    field = Settings.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "default_text" in extra:
        return str(extra["default_text"])
    if field.default is None:
        return "unset"
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`"


def reference_table() -> str:
    """The variables as the Markdown table docs/configuration.md shows (generated here, so
    the page cannot drift from the model: tests/test_config.py compares them)."""
    lines = [
        "| variable | type | default | read by | what it is |",
        "|----------|------|---------|---------|------------|",
    ]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        lines.append(
            f"| `{env_var(name)}` | {_type_text(field.annotation)} | {_default_text(name)} "
            f"| {extra.get('read_by', '')} | {field.description} |"
        )
    return "\n".join(lines)
