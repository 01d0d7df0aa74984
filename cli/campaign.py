"""`wxpush campaign run …` and `wxpush report CAMPAIGN`: the campaign from a terminal."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from cli.errors import BoundaryGroup, validation_problems
from cli.help import model_default, model_help
from tasks.params import CampaignParams, QuotaShortChoice

campaign_app = typer.Typer(
    help="Run campaigns from a terminal (the same flow the UI runs).", cls=BoundaryGroup
)
#: A file named on the command line: a missing one is a usage error, said before anything runs.
ReadableFile = {"exists": True, "dir_okay": False, "readable": True}


def _param(flag: str, field: str, unit: str = "", none: str = "none", **extra: Any) -> Any:
    """An option for a CampaignParams field: its description and real default (cli/help.py)."""
    return typer.Option(
        flag,
        help=model_help(CampaignParams, field),
        show_default=model_default(CampaignParams, field, unit, none),
        **extra,
    )


def _data_pairs(pairs: list[str], flag: str = "--data") -> dict[str, str]:
    data: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{flag} takes KEY=TEXT, got {pair!r}")
        data[key.strip()] = value
    return data


# The message options `campaign run` and `campaign test` share: one declaration each.
TemplateIdOption = Annotated[str | None, _param("--template-id", "template_id")]
DataOption = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="A template field as KEY=TEXT (repeat it); {column} comes from the row.",
        show_default="none",
    ),
]
AppOption = Annotated[str | None, _param("--app", "app")]
KindOption = Annotated[str | None, _param("--kind", "kind")]
TextOption = Annotated[str | None, _param("--text", "text")]
UrlOption = Annotated[str | None, _param("--url", "url")]


def _message_flags(
    app: str | None,
    kind: str | None,
    template_id: str | None,
    data: list[str] | None,
    text: str | None,
    url: str | None,
) -> dict[str, Any]:
    """The shared message options as parameter values (None: not given on the command line)."""
    return {
        "app": app,
        "kind": kind,
        "template_id": template_id,
        "data": _data_pairs(data or []) or None,
        "text": text,
        "url": url,
    }


@campaign_app.command("run")
def run(
    name: Annotated[str, typer.Option("--name", help=model_help(CampaignParams, "name"))],
    # Flags without a value default to None, so a --params-file value is not overridden
    # by a flag the operator never gave; CampaignParams holds the real defaults, shown here.
    template_id: TemplateIdOption = None,
    data: DataOption = None,
    app: AppOption = None,
    kind: KindOption = None,
    text: TextOption = None,
    url: UrlOption = None,
    audience_sql: Annotated[
        str | None, _param("--audience-sql", "audience_sql", none="every follower")
    ] = None,
    audience_file: Annotated[
        Path | None,
        typer.Option(
            "--audience-file",
            help="A file holding the audience SQL.",
            show_default="none",
            **ReadableFile,
        ),
    ] = None,
    window_hours: Annotated[int | None, _param("--window-hours", "window_hours", "h")] = None,
    when_quota_short: Annotated[
        QuotaShortChoice | None, _param("--when-quota-short", "when_quota_short")
    ] = None,
    frequency_cap: Annotated[
        int | None, _param("--frequency-cap", "frequency_cap", none="the account's cap")
    ] = None,
    frequency_cap_hours: Annotated[
        int | None,
        _param("--frequency-cap-hours", "frequency_cap_hours", none="the account's window"),
    ] = None,
    batch_size: Annotated[int | None, _param("--batch-size", "batch_size", "recipients")] = None,
    concurrency: Annotated[
        int | None, _param("--concurrency", "concurrency", "messages in flight")
    ] = None,
    rate: Annotated[
        float | None, _param("--rate", "rate_per_second", "per s", none="no limit")
    ] = None,
    max_error_ratio: Annotated[float | None, _param("--max-error-ratio", "max_error_ratio")] = None,
    shards: Annotated[int | None, _param("--shards", "shards", "runs")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help=model_help(CampaignParams, "dry_run"))
    ] = False,
    campaign_id: Annotated[
        str | None, _param("--campaign-id", "campaign_id", none="a new campaign")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help=model_help(CampaignParams, "retry_failed"))
    ] = False,
    resend_unknown: Annotated[
        bool,
        typer.Option("--resend-unknown", help=model_help(CampaignParams, "resend_unknown")),
    ] = False,
    params_file: Annotated[
        Path | None,
        typer.Option(
            "--params-file",
            help="A JSON file of CampaignParams; flags override it.",
            show_default="none",
            **ReadableFile,
        ),
    ] = None,
) -> None:
    """Run push_campaign in this process and print its report. Ctrl-C or SIGTERM stops it
    cleanly: answers received are recorded, the campaign is paused, resumable."""
    if audience_file is not None:
        audience_sql = audience_file.read_text()
    flags = {
        "name": name,
        **_message_flags(app, kind, template_id, data, text, url),
        "audience_sql": audience_sql,
        "window_hours": window_hours,
        "when_quota_short": when_quota_short,
        "frequency_cap": frequency_cap,
        "frequency_cap_hours": frequency_cap_hours,
        "batch_size": batch_size,
        "concurrency": concurrency,
        "rate_per_second": rate,
        "max_error_ratio": max_error_ratio,
        "shards": shards,
        "dry_run": dry_run or None,
        "campaign_id": campaign_id,
        "retry_failed": retry_failed or None,
        "resend_unknown": resend_unknown or None,
    }
    params = parameters_from(CampaignParams, params_file, flags)
    typer.echo(outcome_text(run_here(params)))


@campaign_app.command("test")
def test_send(
    openid: Annotated[
        list[str],
        typer.Option(
            "--openid", help="A follower to get the test message (repeat it), e.g. your own."
        ),
    ],
    template_id: TemplateIdOption = None,
    data: DataOption = None,
    app: AppOption = None,
    kind: KindOption = None,
    text: TextOption = None,
    url: UrlOption = None,
    sample: Annotated[
        list[str] | None,
        typer.Option(
            "--sample",
            help="COLUMN=TEXT for a placeholder the follower's recipients row does not fill "
            "(repeat it); other columns get an example that fits the field.",
            show_default="none",
        ),
    ] = None,
) -> None:
    """Send the campaign's message to a few OpenIDs first (the send-test-message flow, run
    here): one line per OpenID, exit 0 only if WeChat accepted every one. No ledger row."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.test_message import send_test_message
    from tasks.params import TestSendParams
    from tasks.test_send import TestSendReport, message_of

    flags = {
        **_message_flags(app, kind, template_id, data, text, url),
        "openids": openid,
        "sample_values": _data_pairs(sample or [], "--sample"),
    }
    params = parameters_from(TestSendParams, None, flags)
    try:
        message_of(params)  # a placeholder form wxpush refuses, before any flow run
    except ValidationError as exc:
        raise typer.BadParameter(validation_problems(exc)) from None
    require_app(params.app)

    async def answered() -> tuple[Any, Any]:
        state = await send_test_message(params, return_state=True)
        return state, await state.aresult(raise_on_failure=False)

    state, report = run_coro_as_sync(answered())
    if not isinstance(report, TestSendReport):
        typer.secho(f"The test send ended {state.name}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)
    for answer in report.answers:
        typer.secho(answer.line(), fg=None if answer.sent else "red")
    if not report.all_sent:
        raise typer.Exit(1)


class _Stopped(KeyboardInterrupt):
    """The terminal asked the run to stop (Ctrl-C, or SIGTERM handled like it)."""


@contextmanager
def _signals_stop_the_run() -> Iterator[list[int]]:
    """SIGINT and SIGTERM both raise KeyboardInterrupt in the run's thread, so the flow
    stops the same way for either; yields the signals received, first first. (While the
    flow runs, Prefect's own SIGTERM handler raises first; it re-sends the signal to this
    handler when the run has ended.)"""
    received: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        received.append(signum)
        raise _Stopped

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped_line(campaign_id: str, signum: int) -> str:
    """The one line a stopped run leaves in the terminal: what stopped it, where the
    campaign is now, and what to run next."""
    from db.campaigns import get_campaign
    from tasks.database import engine

    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    with engine().connect() as conn:
        record = get_campaign(conn, campaign_id)
    if record is None:
        return f"Stopped by {name} before campaign {campaign_id} started; nothing was sent."
    return (
        f"Stopped by {name}: campaign {campaign_id} is {record.status}; "
        f"`wxpush campaign resume {campaign_id}` sends the rest."
    )


def run_here(params: Any) -> Any:
    """Run push_campaign in this process; returns its CampaignResult. A run that did not
    complete, or a Ctrl-C / SIGTERM, ends the command with one line and a non-zero code."""
    from db.campaigns import new_campaign_id
    from flows.campaign import push_campaign

    refuse_before_run(params)
    if not params.campaign_id and not params.dry_run:
        # Known before the run starts, so a stopped run can still say which campaign it was.
        params = params.model_copy(update={"campaign_id": new_campaign_id()})
    state = run_stoppable(
        lambda: asyncio.run(push_campaign(params, return_state=True)),
        campaign_id=params.campaign_id,
        dry_run=params.dry_run,
    )
    if not state.is_completed():
        # A dry run of an existing campaign must not report that campaign's stored status.
        stored = None if params.dry_run else params.campaign_id
        typer.secho(_ended_line(stored, state), fg="red", err=True)
        raise typer.Exit(1)
    return state.result()


def run_stoppable(run: Callable[[], Any], *, campaign_id: str, dry_run: bool) -> Any:
    """Run a campaign's flow in this process and return its state; Ctrl-C or SIGTERM ends
    the command with one line (where the campaign is, what to run next) and 128 + signal."""
    from prefect.exceptions import TerminationSignal

    with _signals_stop_the_run() as received:
        try:
            return run()
        except (KeyboardInterrupt, TerminationSignal) as exc:
            signum = received[0] if received else getattr(exc, "signal", signal.SIGINT)
            line = (
                "The dry run was stopped; nothing was sent or recorded."
                if dry_run
                else _stopped_line(campaign_id, signum)
            )
            typer.secho(line, fg="yellow", err=True)
            raise typer.Exit(128 + signum) from None


def refuse_before_run(params: Any) -> None:
    """What the flow would refuse in its first second (a message that cannot render, an app
    block that does not exist), refused here: one line, no flow run, no logged traceback."""
    from flows.campaign import message_spec

    try:
        message_spec(params)
    except ValidationError as exc:
        raise typer.BadParameter(validation_problems(exc)) from None
    require_app(params.app)


def require_app(app: str) -> None:
    """Raise AppNotConfigured (or the unreachable Prefect API) before a flow run exists."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    from tasks.token import load_app

    run_coro_as_sync(load_app(app))


def _ended_line(campaign_id: str | None, state: Any) -> str:
    """What a run that did not complete left behind, from the campaign row when there is one."""
    from db.campaigns import get_campaign
    from tasks.database import engine

    record = None
    if campaign_id:
        with engine().connect() as conn:
            record = get_campaign(conn, campaign_id)
    run_id = state.state_details.flow_run_id
    if record is None or (run_id and record.flow_run_id not in (None, str(run_id))):
        # The row is another run's (this one was refused before touching it): its status
        # would not say why this run ended.
        return f"The campaign run ended {state.name}: {state.message}"
    return f"Campaign {record.id} is {record.status}: {record.status_reason}"


M = TypeVar("M", bound=BaseModel)


def parameters_from(model: type[M], params_file: Path | None, flags: dict[str, Any]) -> M:
    """A flow's parameter model from a JSON file (optional) with the flags given on top;
    a validation error becomes a usage error that says which field is wrong."""
    try:
        given: dict[str, Any] = json.loads(params_file.read_text()) if params_file else {}
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"{params_file} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    given.update({k: v for k, v in flags.items() if v is not None})
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        raise typer.BadParameter(validation_problems(exc)) from None


def report_text(campaign: str) -> str:
    """The campaign's report from the ledger as it is now: receipts keep arriving after the
    run, so this (not the run's artifact) is where their current figures show."""
    from db.campaigns import find_campaign
    from db.ledger import errcode_counts, ledger_figures
    from tasks.database import engine
    from tasks.report import CampaignReport

    with engine().connect() as conn:
        record = find_campaign(conn, campaign)
        if record is None:
            raise typer.BadParameter(f"no campaign with id or name {campaign!r}")
        figures = ledger_figures(conn, record.id)
        errcodes = {str(code): n for code, _cls, n in errcode_counts(conn, record.id)}
    return CampaignReport.from_record(record, figures, errcodes).markdown()


def outcome_text(result: Any) -> str:
    """What a finished run prints: a dry run's plan (it stored nothing to report on), else
    the campaign's report from the ledger."""
    if result.plan is not None:
        return str(result.plan.markdown())
    return report_text(result.campaign_id)


def report(campaign: str = typer.Argument(..., help="Campaign id or name.")) -> None:
    """Print a campaign's figures from the ledger."""
    typer.echo(report_text(campaign))


# -- operator actions: list, resume, retry the retryable failures, cancel ----------------------


def _record(campaign: str) -> Any:
    from db.campaigns import find_campaign
    from tasks.database import engine

    with engine().connect() as conn:
        record = find_campaign(conn, campaign)
    if record is None:
        raise typer.BadParameter(f"no campaign with id or name {campaign!r}")
    return record


def _ui_url(path: str) -> str:
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value() or ""
    return f"{base}{path}" if base else path


def _continue(
    campaign: str, *, retry_failed: bool, resend_unknown: bool, here: bool, wait: bool
) -> None:
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from cli.deploy import PUSH_CAMPAIGN
    from tasks.resume import resume_params

    record = _record(campaign)
    if record.ledger_pruned_at is not None:
        from cli.errors import OperatorError

        raise OperatorError(
            f"campaign {record.id} cannot be resumed: `wxpush db prune` deleted its ledger on "
            f"{record.ledger_pruned_at:%Y-%m-%d}, and without it every recipient would be "
            "messaged again; start a new campaign instead"
        )
    params = resume_params(record, retry_failed=retry_failed, resend_unknown=resend_unknown)
    what = "Re-sending the retryable failures of" if retry_failed else "Resuming"
    typer.echo(f"{what} campaign {record.id} ({record.name!r}, {record.status}).")
    if resend_unknown:
        typer.echo(
            "Its recipients in doubt (unknown) are sent again; each of them may get the "
            "message twice."
        )
    if here:
        typer.echo(outcome_text(run_here(params)))
        return
    try:
        run = run_deployment(
            name=PUSH_CAMPAIGN,
            parameters={"params": params.model_dump(mode="json", exclude_defaults=True)},
            timeout=None if wait else 0,
        )
    except ObjectNotFound:
        typer.secho(
            f"No {PUSH_CAMPAIGN} deployment on this Prefect server: start `wxpush serve` (or "
            "`wxpush deploy` and a worker), or add --here to run it in this terminal.",
            fg="red",
            err=True,
        )
        raise typer.Exit(1) from None
    typer.echo(f"Flow run {run.name}: {_ui_url(f'/runs/flow-run/{run.id}')}")
    if wait:
        state = run.state
        typer.echo(f"It ended {state.name if state else 'unknown'}.")
        typer.echo(report_text(record.id))
        if state is None or not state.is_completed():
            raise typer.Exit(1)


CampaignArg = Annotated[str, typer.Argument(help="Campaign id or name.")]
HereOption = Annotated[
    bool, typer.Option("--here", help="Run it in this terminal, not on the worker.")
]
WaitOption = Annotated[bool, typer.Option("--wait", help="Wait for the run and print the report.")]
ResendUnknownOption = Annotated[
    bool,
    typer.Option(
        "--resend-unknown",
        help="Also send again to the recipients in doubt (status unknown: sent, answer lost, "
        "too long ago for WeChat to drop a repeat); each may get the message twice.",
    ),
]


@campaign_app.command("resume")
def resume(
    campaign: CampaignArg,
    here: HereOption = False,
    wait: WaitOption = False,
    resend_unknown: ResendUnknownOption = False,
) -> None:
    """Continue a paused, cancelled or failed campaign: everyone it has not reached yet.
    Recipients in doubt (unknown) are not sent again unless --resend-unknown says so."""
    _continue(campaign, retry_failed=False, resend_unknown=resend_unknown, here=here, wait=wait)


@campaign_app.command("retry-failed")
def retry_failed_command(
    campaign: CampaignArg,
    here: HereOption = False,
    wait: WaitOption = False,
    resend_unknown: ResendUnknownOption = False,
) -> None:
    """Re-send the campaign's failures that had a passing cause (WeChat busy, quota), and
    anyone it has not reached yet; permanent failures (blocked, not a follower) stay."""
    _continue(campaign, retry_failed=True, resend_unknown=resend_unknown, here=here, wait=wait)


@campaign_app.command("cancel")
def cancel(
    campaign: CampaignArg,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the run has stopped.")
    ] = True,
) -> None:
    """Cancel the campaign's running flow run (the same as Cancel in the UI); the ledger keeps
    every answer received, and `wxpush campaign resume` finishes the rest later."""
    from tasks.flow_runs import cancel_flow_run

    record = _record(campaign)
    if not record.flow_run_id:
        raise typer.BadParameter(f"campaign {record.id} has no flow run to cancel")
    outcome = cancel_flow_run(record.flow_run_id, wait_seconds=120 if wait else 0)
    typer.echo(f"Flow run {record.flow_run_id}: {outcome}.")
    typer.echo(f"Campaign {record.id} is now {_record(record.id).status}.")


@campaign_app.command("list")
def list_campaigns(
    limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
) -> None:
    """The latest campaigns with their status and figures (newest first)."""
    from db.campaigns import latest_campaigns
    from tasks.database import engine

    with engine().connect() as conn:
        records = latest_campaigns(conn, limit)
    typer.echo(
        f"{'id':<38} {'status':<24} {'sent':>7} {'failed':>7} {'pending':>7} {'unknown':>7}  name"
    )
    for r in records:
        typer.echo(
            f"{r.id:<38} {r.status:<24} {r.sent_count:>7} {r.failed_count:>7} "
            f"{r.pending_count:>7} {r.unknown_count:>7}  {r.name}"
        )


def register(app: typer.Typer) -> None:
    """Add `wxpush campaign …` and `wxpush report` to the app."""
    app.add_typer(campaign_app, name="campaign")
    app.command("report")(report)
