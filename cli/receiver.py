"""`wxpush receiver`: the callback web app under uvicorn.

Configuration comes from the settings (`WXPUSH_APP_ID`, `WXPUSH_CALLBACK_TOKEN`,
`WXPUSH_CALLBACK_AES_KEY`, `WXPUSH_CALLBACK_PREVIOUS_AES_KEY`: docs/configuration.md) when the
token is set there, else from the `wechat-app` block (`wxpush setup --callback-token …`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.errors import OperatorError
from cli.help import model_default, model_help
from cli.receiver_alerts import tell_spike
from config import settings
from receiver.config import ReceiverConfig


def load_config(app: str, **overrides: object) -> ReceiverConfig:
    """The receiver's config: the settings if they name a token, else the block."""
    if settings().callback_token is not None:
        return ReceiverConfig.from_settings(**overrides)
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
    receiver refuses to start on an older one: every push would fail to be written. A
    database that cannot be reached raises: cli/errors.py names host, port and the fix."""
    from db.engine import display_url
    from db.migrate import current_revision, head_revision

    current, head = current_revision(url), head_revision()
    if current == head:
        return None
    state = "is not migrated" if current is None else f"is at schema {current}"
    return f"{display_url(url)} {state}, not {head}: run `wxpush db upgrade` first"


def processes_problem(url: str, processes: int) -> str | None:
    """None when `processes` receivers can share the database at `url`; else the one line
    to print: an in-memory SQLite database would be a different one in each process."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    in_memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
    if processes > 1 and in_memory:
        return (
            f"--processes {processes} needs a database the processes share: an in-memory "
            "SQLite database is one per process; set WXPUSH_DATABASE_URL to a file or "
            "to PostgreSQL"
        )
    return None


def _limit(flag: str, field: str, unit: str) -> Any:
    """An option for a ReceiverConfig field: its description, its default and unit, and its
    lower bound, all read from the model (cli/help.py)."""
    bound = next(
        (m.ge for m in ReceiverConfig.model_fields[field].metadata if hasattr(m, "ge")), None
    )
    return typer.Option(
        flag,
        help=model_help(ReceiverConfig, field),
        show_default=model_default(ReceiverConfig, field, unit),
        min=bound,
    )


def register(app: typer.Typer) -> None:
    """Add `wxpush receiver` to the app."""

    @app.command("receiver")
    def receiver(
        host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8902,
        processes: Annotated[
            int,
            typer.Option(
                "--processes",
                min=1,
                help="Receiver processes serving the one port (uvicorn's workers); they "
                "share the database and its replay memory.",
            ),
        ] = 1,
        app_name: Annotated[
            str, typer.Option("--app", help="wechat-app block to read when the env has none.")
        ] = "default",
        # None = ReceiverConfig's default (shown by `_limit`), so the model is the one source.
        timestamp_window: Annotated[
            int | None, _limit("--timestamp-window", "timestamp_window_seconds", "s")
        ] = None,
        max_body_bytes: Annotated[
            int | None, _limit("--max-body-bytes", "max_body_bytes", "bytes")
        ] = None,
        max_header_bytes: Annotated[
            int | None, _limit("--max-header-bytes", "max_header_bytes", "bytes")
        ] = None,
        header_timeout: Annotated[
            float | None, _limit("--header-timeout", "header_timeout_seconds", "s")
        ] = None,
        body_timeout: Annotated[
            float | None, _limit("--body-timeout", "body_timeout_seconds", "s")
        ] = None,
        keep_alive_timeout: Annotated[
            int | None, _limit("--keep-alive-timeout", "keep_alive_timeout_seconds", "s")
        ] = None,
        max_connections: Annotated[
            int | None, _limit("--max-connections", "max_connections", "connections")
        ] = None,
        nonce_cache_entries: Annotated[
            int | None, _limit("--nonce-cache-entries", "nonce_cache_entries", "entries")
        ] = None,
        refusal_log_burst: Annotated[
            int | None, _limit("--refusal-log-burst", "refusal_log_burst", "lines")
        ] = None,
        refusal_log_interval: Annotated[
            float | None, _limit("--refusal-log-interval", "refusal_log_interval_seconds", "s")
        ] = None,
    ) -> None:
        """Serve WeChat's callback URL: verify, decrypt, record receipts and interactions."""
        from db.engine import database_url
        from receiver.app import create_app
        from receiver.server import AppFactory, listen, serve, serve_processes
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
        url = database_url()
        problem = processes_problem(url, processes) or schema_problem(url)
        if problem:
            raise OperatorError(problem)
        sock = listen(host, port)
        modes = "safe mode and plaintext" if config.encoding_aes_key else "plaintext only"
        several = f", {processes} processes" if processes > 1 else ""
        typer.echo(
            f"Receiving callbacks for {config.app_id} on http://{host}:{port}/wechat/callback "
            f"({modes}{several})"
        )
        if processes > 1:
            serve_processes(AppFactory(config, url, tell_spike), sock, processes)
        else:
            serve(create_app(config, engine(), tell_spike), config, sock)
