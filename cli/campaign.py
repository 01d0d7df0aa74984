"""`wxpush campaign run …` and `wxpush report CAMPAIGN`: the campaign from a terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

campaign_app = typer.Typer(help="Run campaigns from a terminal (the same flow the UI runs).")


def _data_pairs(pairs: list[str]) -> dict[str, str]:
    data: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--data takes KEY=TEXT, got {pair!r}")
        data[key.strip()] = value
    return data


@campaign_app.command("run")
def run(
    name: Annotated[str, typer.Option("--name", help="Campaign name.")],
    template_id: Annotated[str | None, typer.Option("--template-id")] = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help="Template field KEY=TEXT; {column} comes from the row."),
    ] = None,
    app: Annotated[str, typer.Option("--app", help="wechat-app block name.")] = "default",
    kind: Annotated[
        str, typer.Option("--kind", help="template | customer_service | subscribe")
    ] = "template",
    text: Annotated[str | None, typer.Option("--text", help="customer_service text.")] = None,
    url: Annotated[str | None, typer.Option("--url")] = None,
    audience_sql: Annotated[str | None, typer.Option("--audience-sql")] = None,
    audience_file: Annotated[
        Path | None, typer.Option("--audience-file", help="Audience SQL file.")
    ] = None,
    window_hours: Annotated[int, typer.Option("--window-hours")] = 48,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 500,
    concurrency: Annotated[int, typer.Option("--concurrency")] = 16,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Messages per second, campaign-wide.")
    ] = None,
    max_error_ratio: Annotated[float, typer.Option("--max-error-ratio")] = 0.5,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    campaign_id: Annotated[
        str | None, typer.Option("--campaign-id", help="Continue this campaign.")
    ] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed")] = False,
    params_file: Annotated[
        Path | None,
        typer.Option("--params-file", help="A JSON file of CampaignParams; flags override it."),
    ] = None,
) -> None:
    """Run push_campaign in this process and print its report."""
    from flows.campaign import push_campaign
    from tasks.params import CampaignParams

    given: dict[str, Any] = json.loads(params_file.read_text()) if params_file else {}
    if audience_file is not None:
        audience_sql = audience_file.read_text()
    flags = {
        "name": name,
        "app": app,
        "kind": kind,
        "template_id": template_id,
        "data": _data_pairs(data or []) or None,
        "text": text,
        "url": url,
        "audience_sql": audience_sql,
        "window_hours": window_hours,
        "batch_size": batch_size,
        "concurrency": concurrency,
        "rate_per_second": rate,
        "max_error_ratio": max_error_ratio,
        "dry_run": dry_run or None,
        "campaign_id": campaign_id,
        "retry_failed": retry_failed or None,
    }
    given.update({k: v for k, v in flags.items() if v is not None})
    try:
        params = CampaignParams.model_validate(given)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    state = push_campaign(params, return_state=True)
    if not state.is_completed():
        typer.secho(f"The campaign run ended {state.name}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)
    result = state.result()
    typer.echo(report_text(result.campaign_id))


def report_text(campaign: str) -> str:
    from db.campaigns import find_campaign
    from db.ledger import errcode_counts, status_counts
    from tasks.database import engine
    from tasks.report import CampaignReport

    with engine().connect() as conn:
        record = find_campaign(conn, campaign)
        if record is None:
            raise typer.BadParameter(f"no campaign with id or name {campaign!r}")
        counts = status_counts(conn, record.id)
        errcodes = {str(code): n for code, _cls, n in errcode_counts(conn, record.id)}
    report = CampaignReport.from_record(record, counts, errcodes)
    return report.markdown()


def report(campaign: str = typer.Argument(..., help="Campaign id or name.")) -> None:
    """Print a campaign's figures from the ledger."""
    typer.echo(report_text(campaign))


def register(app: typer.Typer) -> None:
    """Add `wxpush campaign …` and `wxpush report` to the app."""
    app.add_typer(campaign_app, name="campaign")
    app.command("report")(report)
