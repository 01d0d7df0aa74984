"""The `wxpush` console script: one Typer app; each subcommand lives in its own module."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import (
    api,
    api_keys,
    campaign,
    db,
    demo,
    deploy,
    digest,
    receiver,
    seed,
    serve,
    setup,
    simulator,
)
from cli.errors import BoundaryGroup
from config import reload

app = typer.Typer(
    name="wxpush",
    help="WeChat message campaigns orchestrated by Prefect.",
    no_args_is_help=True,
    add_completion=False,
    cls=BoundaryGroup,  # the one place an expected failure becomes a plain line
)


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show the full traceback of a failure instead of its one-line explanation "
            "(or set WXPUSH_DEBUG=1).",
        ),
    ] = False,
) -> None:
    """WeChat message campaigns orchestrated by Prefect."""
    # Each command reads the WXPUSH_* settings afresh, when it first needs them (never at
    # import); a process that runs several commands (typer's CliRunner) sees each one's.
    reload()
    # Without PREFECT_API_URL, Prefect starts a temporary server of its own; its telemetry
    # service would report to Prefect's servers and, racing the server's own SQLite, log a
    # "database is locked" traceback. wxpush talks to 127.0.0.1 only.
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    ctx.with_resource(temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}))


for module in (
    simulator,
    setup,
    db,
    seed,
    campaign,
    digest,
    demo,
    deploy,
    serve,
    receiver,
    api,
    api_keys,
):
    module.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
