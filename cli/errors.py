"""The CLI's one error boundary: an expected failure ends a command with a plain line.

Every `wxpush` command runs inside `BoundaryGroup.invoke`. A failure an operator can fix
(an unmigrated or unreachable database, a missing block, an unreachable Prefect API, a
port in use, a value that does not validate…) prints `wxpush <command>: what is wrong;
how to fix it` and exits 1; usage errors stay click's (exit 2). Anything else is a bug and
keeps its traceback, as does everything under `--debug` or `WXPUSH_DEBUG=1`.

`explain` turns foreign exceptions (SQLAlchemy, pydantic, httpx, OSError) into that line,
value-free: a database's own message can quote row values, so only a connection failure's
text (host, port, database name) is shown, and a URL only with its password masked.
"""

from __future__ import annotations

import errno
import json
from typing import Any

import typer
from typer.core import TyperGroup

from config import ConfigurationError, env_var, settings

DEBUG_ENV = env_var("debug")


class OperatorError(Exception):
    """A failure the operator can fix; the message says what is wrong and how to fix it."""


def debug_requested(ctx: typer.Context | None = None) -> bool:
    """`--debug` on the command line, or WXPUSH_DEBUG set to something true (a WXPUSH_DEBUG
    that is not a boolean is itself the failure to explain: no traceback then)."""
    if ctx is not None and ctx.find_root().params.get("debug"):
        return True
    try:
        return settings().debug
    except ConfigurationError:
        return False


class BoundaryGroup(TyperGroup):
    """A command group (the root, and `campaign`, `digest`, `db`) that runs its subcommand
    and translates what it raises; the innermost one names the full command."""

    def invoke(self, ctx: Any) -> Any:
        """Run the subcommand; an expected failure becomes one line on stderr and exit 1."""
        try:
            return super().invoke(ctx)
        # Typer ships its own click: its usage errors all derive from TyperException.
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise  # usage errors (exit 2) and deliberate exits keep their own handling
        except Exception as exc:
            if debug_requested(ctx):
                raise
            message = explain(exc)
            if message is None:
                raise
            command = " ".join(["wxpush", *_group_path(ctx), ctx.invoked_subcommand or ""])
            typer.secho(f"{command.strip()}: {message}", fg="red", err=True)
            raise typer.Exit(1) from None


def _group_path(ctx: Any) -> list[str]:
    """The subcommand names from the root to this group (`python -m cli.main` is `wxpush` too)."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return names[::-1]


def explain(exc: BaseException) -> str | None:
    """The line for an expected failure (`exc` or one of its causes, e.g. what Prefect wrapped
    in a RuntimeError); None for a bug."""
    from db.errors import causes

    for link in causes(exc):
        message = _explain_one(link)
        if message is not None:
            return message
    return None


def _explain_one(exc: BaseException) -> str | None:
    from pydantic import ValidationError
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    if isinstance(exc, _operator_errors()):
        return str(exc)
    if isinstance(exc, ValidationError):
        return validation_problems(exc)
    if isinstance(exc, NoSuchModuleError | ArgumentError):
        return _bad_url()
    if isinstance(exc, DBAPIError):
        return _database_error(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if _is_httpx_connect_error(exc):
        return _unreachable(exc)
    if isinstance(exc, OSError):
        return _os_error(exc)
    return None


def _operator_errors() -> tuple[type[BaseException], ...]:
    """The project's own "operator can fix this" exceptions; their messages say how."""
    from cli.deploy import DeployError
    from db.audience import AudienceQueryError
    from db.audience_role import AudienceRoleError
    from db.campaigns import LedgerPruned
    from db.engine import UnsupportedDatabase
    from processes import ChildFailed
    from receiver.config import ReceiverConfigError
    from wechat.errors import ConfigError
    from wechat.identifiers import IdentifierError

    return (
        OperatorError,
        ConfigurationError,  # a WXPUSH_* variable with a bad value
        ConfigError,  # AppNotConfigured, TokenLockMissing, a refused AppSecret…
        AudienceQueryError,
        AudienceRoleError,
        UnsupportedDatabase,
        ReceiverConfigError,
        IdentifierError,
        DeployError,
        ChildFailed,  # a background service (wxpush serve, demo) did not come up
        LedgerPruned,  # a resume of a campaign `wxpush db prune` emptied
    )


def validation_problems(exc: Any) -> str:
    """Pydantic's errors as `field: message; …`, never the input (it may be a secret)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def _configured_database() -> str:
    """The ledger's URL as configured, password masked (and the audience's if different)."""
    from db.engine import audience_database_url, database_url, display_url

    try:
        ledger, audience = display_url(database_url()), display_url(audience_database_url())
    except Exception:  # the URL itself does not parse: say so without quoting it
        return "WXPUSH_DATABASE_URL"
    if audience != ledger:
        return f"{ledger} (or the audience database {audience})"
    return ledger


def _bad_url() -> str:
    return (
        "the database URL is not one wxpush can use: set WXPUSH_DATABASE_URL to "
        "sqlite:///path/to/wxpush.db or postgresql://user@host:5432/dbname"
    )


def _database_error(exc: Any) -> str | None:
    """A missing table, or a connection that failed; other database errors are bugs."""
    from db.errors import driver_error, is_missing_table

    where = _configured_database()
    if is_missing_table(exc):
        return f"{where} is not migrated (a table is missing): run `wxpush db upgrade` first"
    if exc.statement is not None:
        return None  # a statement failed: its message may quote values; keep the traceback
    # Failed to connect: the driver's text names host, port and database, never a password.
    text = " ".join(str(driver_error(exc)).split())
    hint = "check WXPUSH_DATABASE_URL and that the database is running"
    if "unable to open database file" in text:
        hint = "check that the SQLite file's directory exists and is writable"
    return f"cannot open the database {where}: {text}; {hint}"


def _is_httpx_connect_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def _unreachable(exc: Any) -> str:
    """An HTTP connection that failed: the Prefect API says how to start one. Only the
    scheme, host and port are shown: a URL's query can carry an access_token."""
    from prefect.settings import PREFECT_API_URL

    try:
        url = exc.request.url
    except RuntimeError:  # no request attached
        url = None
    api = PREFECT_API_URL.value() or ""
    where = f"{url.scheme}://{url.netloc.decode()}" if url is not None else ""
    if not where or (api and api.startswith(where)):
        return (
            f"cannot reach the Prefect API at {api or '(PREFECT_API_URL not set)'}: start it "
            "(`wxpush serve`, or `prefect server start`) or point PREFECT_API_URL at a running one"
        )
    return f"cannot connect to {where} ({type(exc).__name__}): check that it is running"


def _os_error(exc: OSError) -> str | None:
    if exc.errno == errno.EADDRINUSE:
        return f"{exc.strerror}: stop what listens there, or choose another port"
    if exc.filename and isinstance(
        exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError
    ):
        return f"cannot use {exc.filename}: {exc.strerror}"
    return None
