"""`wxpush api-key create|list|revoke`: the push API's keys (docs/api.md).

The secret is printed once, by `create`, and never again: `list` shows ids, callers and
dates only. The keys live in the Prefect API (Blocks), so these commands need it reachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer

from api.signing import KEY_ID_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from cli.errors import BoundaryGroup, OperatorError

api_key_app = typer.Typer(
    help="Keys of the signed push API: create (the secret is shown once), list, revoke.",
    no_args_is_help=True,
    cls=BoundaryGroup,
)


T = TypeVar("T")


class ApiKeyCommandError(OperatorError):
    """A key operation the operator can fix (a bad name, a third key, an unknown id)."""


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a key operation; its ApiKeyError becomes the command's one-line error."""
    from tasks.api_keys import ApiKeyError

    try:
        return asyncio.run(coroutine)
    except ApiKeyError as exc:
        raise ApiKeyCommandError(str(exc)) from None


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


@api_key_app.command("create")
def create(
    name: Annotated[
        str,
        typer.Option(
            "--name",
            help="The caller the key belongs to, e.g. orders (lower-case letters, digits, "
            "_ and -). Two keys may be active per caller, for rotation.",
        ),
    ],
) -> None:
    """Create a key for a caller and print its id and secret (the secret only this once)."""
    from tasks.api_keys import create_key

    key, created_at = _run(create_key(name))
    typer.echo(f"Created API key for caller {key.caller} at {_when(created_at)}.")
    typer.echo(f"  key id: {key.key_id}")
    typer.echo(f"  secret: {key.secret.get_secret_value()}")
    typer.echo("The secret will not be shown again: store it now in the caller's secret store.")
    typer.echo(
        f"Sign each request with it and send {KEY_ID_HEADER}: {key.key_id}, "
        f"{TIMESTAMP_HEADER}, {NONCE_HEADER} and {SIGNATURE_HEADER} (docs/api.md)."
    )


@api_key_app.command("list")
def list_keys() -> None:
    """Every key: id, caller, when it was created and revoked (never a secret)."""
    from tasks.api_keys import list_keys as stored_keys

    keys = _run(stored_keys())
    if not keys:
        typer.echo("No API keys yet: `wxpush api-key create --name <caller>` makes one.")
        return
    typer.echo(f"{'id':<24} {'caller':<24} {'created':<24} revoked")
    for key in keys:
        typer.echo(
            f"{key.key_id:<24} {key.caller:<24} {_when(key.created_at):<24} {_when(key.revoked_at)}"
        )


@api_key_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (wxk…), as `list` shows it.")],
) -> None:
    """Revoke a key: the API refuses it (401 revoked-key) within a few seconds."""
    from tasks.api_keys import KEY_RELOAD_SECONDS, revoke_key

    info = _run(revoke_key(key_id))
    typer.echo(
        f"API key {info.key_id} of caller {info.caller} is revoked since "
        f"{_when(info.revoked_at)}; the API refuses it within {KEY_RELOAD_SECONDS} s."
    )


def register(app: typer.Typer) -> None:
    """Add `wxpush api-key …` to the app."""
    app.add_typer(api_key_app, name="api-key")
