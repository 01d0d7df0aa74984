"""`wxpush receiver`: the callback web app under uvicorn.

Configuration comes from the environment (`WXPUSH_APP_ID`, `WXPUSH_CALLBACK_TOKEN`,
`WXPUSH_CALLBACK_AES_KEY`, `WXPUSH_CALLBACK_PREVIOUS_AES_KEY`) when the token is set
there, else from the `wechat-app` block (`wxpush setup --callback-token …`).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.errors import OperatorError
from receiver.config import ReceiverConfig


def load_config(app: str, **overrides: object) -> ReceiverConfig:
    """The receiver's config: the environment if it names a token, else the block."""
    if os.environ.get("WXPUSH_CALLBACK_TOKEN"):
        return ReceiverConfig.from_env(**overrides)
    from prefect.utilities.asyncutils import run_coro_as_sync

    from tasks.token import load_app

    block = run_coro_as_sync(load_app(app))  # AppNotConfigured says how to create it
    if block.callback_token is None:
        raise OperatorError(
            f"the wechat-app block {app!r} has no callback token: run "
            f"`wxpush setup --app {app} --callback-token …` or set WXPUSH_CALLBACK_TOKEN"
        )
    return ReceiverConfig(
        app_id=block.app_id,
        kind=block.kind,
        token=block.callback_token,
        encoding_aes_key=block.encoding_aes_key,
        previous_encoding_aes_key=block.previous_encoding_aes_key,
        **{k: v for k, v in overrides.items() if v is not None},  # type: ignore[arg-type]
    )


def schema_problem(url: str) -> str | None:
    """None when the database is at the newest schema; else the one line to print. The
    receiver refuses to start on an older one: every push would fail to be written."""
    from db.engine import display_url
    from db.migrate import current_revision, head_revision
    from receiver.writer import describe

    where = display_url(url)
    try:
        current = current_revision(url)
    except Exception as exc:  # unreachable, wrong password, …: the driver's class says which
        return (
            f"cannot read the schema of {where} ({describe(exc)}): check WXPUSH_DATABASE_URL "
            "and that the database is running"
        )
    head = head_revision()
    if current == head:
        return None
    state = "is not migrated" if current is None else f"is at schema {current}"
    return f"{where} {state}, not {head}: run `wxpush db upgrade` first"


def register(app: typer.Typer) -> None:
    """Add `wxpush receiver` to the app."""

    @app.command("receiver")
    def receiver(
        host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port")] = 8902,
        app_name: Annotated[
            str, typer.Option("--app", help="wechat-app block to read when the env has none.")
        ] = "default",
        timestamp_window: Annotated[
            int | None,
            typer.Option("--timestamp-window", help="Seconds a push's timestamp may be off."),
        ] = None,
        max_body_bytes: Annotated[int | None, typer.Option("--max-body-bytes")] = None,
        max_header_bytes: Annotated[
            int | None,
            typer.Option("--max-header-bytes", min=1024, help="Request line and headers [16384]."),
        ] = None,
        header_timeout: Annotated[
            float | None,
            typer.Option("--header-timeout", min=0.1, help="Seconds to send a request head [10]."),
        ] = None,
        body_timeout: Annotated[
            float | None,
            typer.Option("--body-timeout", min=0.1, help="Seconds to send a body [10]."),
        ] = None,
        keep_alive_timeout: Annotated[
            int | None,
            typer.Option("--keep-alive-timeout", min=1, help="Idle seconds between requests [5]."),
        ] = None,
        max_connections: Annotated[
            int | None,
            typer.Option("--max-connections", min=2, help="Open connections at most [1000]."),
        ] = None,
        nonce_cache_entries: Annotated[
            int | None,
            typer.Option(
                "--nonce-cache-entries", min=3, help="Nonces kept against replays [600000]."
            ),
        ] = None,
        refusal_log_burst: Annotated[
            int | None,
            typer.Option(
                "--refusal-log-burst", min=1, help="Refusal lines per reason and interval [10]."
            ),
        ] = None,
        refusal_log_interval: Annotated[
            float | None,
            typer.Option("--refusal-log-interval", min=0.1, help="That interval, in seconds [60]."),
        ] = None,
    ) -> None:
        """Serve WeChat's callback URL: verify, decrypt, record receipts and interactions."""
        from db.engine import database_url
        from receiver.app import create_app
        from receiver.server import listen, serve
        from tasks.database import engine

        # Every refusal (a bad setting, an old schema, a port in use) comes before the
        # "Receiving" line, as one line from the CLI's error boundary (cli/errors.py).
        config = load_config(
            app_name,
            timestamp_window_seconds=timestamp_window,
            max_body_bytes=max_body_bytes,
            max_header_bytes=max_header_bytes,
            header_timeout_seconds=header_timeout,
            body_timeout_seconds=body_timeout,
            keep_alive_timeout_seconds=keep_alive_timeout,
            max_connections=max_connections,
            nonce_cache_entries=nonce_cache_entries,
            refusal_log_burst=refusal_log_burst,
            refusal_log_interval_seconds=refusal_log_interval,
        )
        problem = schema_problem(database_url())
        if problem:
            raise OperatorError(problem)
        sock = listen(host, port)
        typer.echo(
            f"Receiving callbacks for {config.app_id} on http://{host}:{port}/wechat/callback "
            f"({'safe mode and plaintext' if config.encoding_aes_key else 'plaintext only'})"
        )
        serve(create_app(config, engine()), config, sock)
