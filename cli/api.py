"""`wxpush api`: the signed HTTP push API (docs/api.md) under uvicorn.

Before it listens it checks, each failure one line: the database is reachable and at the
newest schema, the Prefect API (where the API keys and the wechat-app blocks live) answers,
and the port is free.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.errors import OperatorError
from config import settings


def prefect_problem() -> str | None:
    """None when PREFECT_API_URL is set; else the line to print. Without it Prefect starts a
    temporary server of its own, which holds none of the keys or blocks."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    return (
        "PREFECT_API_URL is not set: the API reads its keys and the wechat-app blocks from a "
        "Prefect server; point it at one (`wxpush serve` runs one at "
        "http://127.0.0.1:4200/api)"
    )


def check_keys() -> int:
    """Read the API keys once (a Prefect API that does not answer fails here, as one line
    from the CLI's boundary); how many there are."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    from tasks.api_keys import load_keys

    return len(run_coro_as_sync(load_keys()) or {})


def register(app: typer.Typer) -> None:
    """Add `wxpush api` to the app."""

    @app.command("api")
    def api(
        host: Annotated[
            str | None,
            typer.Option(
                "--host",
                help="Address to listen on.",
                show_default="WXPUSH_API_HOST, else 127.0.0.1",
            ),
        ] = None,
        port: Annotated[
            int | None,
            typer.Option(
                "--port",
                help="Port to listen on.",
                show_default="WXPUSH_API_PORT, else 8903",
                min=1,
            ),
        ] = None,
        database_url: Annotated[
            str | None,
            typer.Option(
                "--database-url",
                help="The ledger database the messages are stored in.",
                show_default="WXPUSH_DATABASE_URL",
            ),
        ] = None,
        wait: Annotated[
            float | None,
            typer.Option(
                "--wait",
                min=0,
                max=30,
                help="Seconds a request waits for WeChat's answer when it gives no `wait`; "
                "past it the answer is 202 queued.",
                show_default="WXPUSH_API_WAIT_SECONDS, else 10",
            ),
        ] = None,
        concurrency: Annotated[
            int,
            typer.Option(
                "--concurrency",
                min=1,
                help="Sends in flight at once per account and message kind.",
            ),
        ] = 64,
    ) -> None:
        """Serve the signed push API: POST /v1/messages, /v1/messages/batch,
        GET /v1/messages/{id} and /health (docs/api.md)."""
        from api.app import ApiConfig
        from api.server import build_app, serve
        from cli.receiver import schema_problem
        from db.engine import database_url as default_url
        from db.engine import make_engine
        from receiver.server import listen

        options = settings()
        url = database_url or default_url()
        problem = schema_problem(url) or prefect_problem()
        if problem:
            raise OperatorError(problem)
        keys = check_keys()
        bind_host = host or options.api_host
        bind_port = port or options.api_port
        sock = listen(bind_host, bind_port)
        config = ApiConfig(
            wait_seconds=options.api_wait_seconds if wait is None else wait,
            batch_max=options.api_batch_max,
            concurrency=concurrency,
        )
        typer.echo(
            f"Push API on http://{bind_host}:{bind_port}/v1/messages ({keys} API key(s); "
            "`wxpush api-key create --name NAME` makes one)"
        )
        serve(build_app(make_engine(url), config), sock)
