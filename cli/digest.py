"""`wxpush digest run`: a day's digest from a terminal (the same flow a schedule runs)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import BoundaryGroup
from cli.help import model_default, model_help
from tasks.params import DigestParams

digest_app = typer.Typer(
    help="Send daily digests from a terminal (the daily-digest flow).", cls=BoundaryGroup
)


@digest_app.command("run")
def run(
    day: Annotated[
        datetime | None,
        typer.Option(
            "--day",
            formats=["%Y-%m-%d"],
            metavar="YYYY-MM-DD",
            help="The day to report, in the digest's time zone.",
            show_default="yesterday there",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Digest name (with the day, it makes the campaign ID).",
            show_default=model_default(DigestParams, "name"),
        ),
    ] = None,
    app: Annotated[
        str | None,
        typer.Option(
            "--app", help="wechat-app block name.", show_default=model_default(DigestParams, "app")
        ),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone",
            help="IANA time zone of the day.",
            show_default=model_default(DigestParams, "timezone"),
        ),
    ] = None,
    digest_file: Annotated[
        Path | None,
        typer.Option(
            "--digest-file",
            help="A file holding your digest SQL.",
            show_default="the built-in digest SQL",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help=model_help(DigestParams, "dry_run"))
    ] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed")] = False,
    params_file: Annotated[
        Path | None,
        typer.Option(
            "--params-file",
            help="A JSON file of DigestParams; flags override it.",
            show_default="none",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
) -> None:
    """Run the daily-digest flow in this process and print the day's campaign report."""
    from cli.campaign import outcome_text, parameters_from, require_app, run_stoppable
    from flows.digest import daily_digest, digest_day

    flags = {
        "day": day.date().isoformat() if day else None,
        "name": name,
        "app": app,
        "timezone": timezone,
        "digest_sql": digest_file.read_text() if digest_file else None,
        "dry_run": dry_run or None,
        "retry_failed": retry_failed or None,
    }
    params = parameters_from(DigestParams, params_file, flags)
    require_app(params.app)
    state = run_stoppable(
        lambda: asyncio.run(daily_digest(params, return_state=True)),
        campaign_id=params.campaign(digest_day(params)).campaign_id,
        dry_run=params.dry_run,
    )
    if not state.is_completed():
        typer.secho(f"The digest run ended {state.name}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(outcome_text(state.result()))


def register(app: typer.Typer) -> None:
    """Add `wxpush digest …` to the app."""
    app.add_typer(digest_app, name="digest")
