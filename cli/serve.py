"""`wxpush serve` (what `make serve` runs): everything an operator needs, on one machine.

Starts a Prefect server (UI on 127.0.0.1:4200, history under .wxpush/prefect), the WeChat
API simulator, sets the app up, seeds sample recipients, starts the callback receiver (the
simulator pushes delivery receipts and follower actions to it), deploys prefect.yaml to the
`wxpush` work pool, starts a worker, refreshes the token through its deployment (which
proves the worker runs flows), prints where to click, and on Ctrl-C stops everything it
started.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr

from cli.deploy import (
    PUSH_CAMPAIGN,
    REFRESH_TOKEN,
    WORK_POOL,
    deploy_all,
    worker_argv,
    worker_env,
)
from cli.services import (
    Service,
    local_database_url,
    point_simulator_at,
    prefect_server,
    push_api,
    receiver,
    running,
    simulator,
    state_dir,
    stop_on_signals,
)
from processes import pick_port

DEFAULT_RECIPIENTS = 1000


def _say(text: str) -> None:
    typer.secho(text, fg=typer.colors.CYAN, bold=True)


@contextlib.contextmanager
def _worker(
    database_url: str, name: str | None = None, limit: int | None = None
) -> Iterator[Service]:
    """A worker on the pool. One worker (the default) works in the state folder, as always;
    named ones (`--workers N`) each get a folder of their own under it, as on N machines:
    nothing passes between them but the Prefect API and the database."""
    port = pick_port(0)  # only serve itself polls the worker's health
    url = f"http://127.0.0.1:{port}"
    home = state_dir() if name is None else state_dir() / "workers" / name
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **worker_env(home, database_url),
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
    }
    argv = worker_argv(WORK_POOL, healthcheck=True)
    argv += ["--name", name] if name is not None else []
    argv += ["--limit", str(limit)] if limit is not None else []
    with running(
        name or "prefect-worker",
        argv,
        url=url,
        health_url=f"{url}/health",
        env=env,
        startup_timeout=90,
    ) as worker:
        yield worker


def worker_names(workers: int) -> list[str | None]:
    """One worker keeps Prefect's own naming (and the log `prefect-worker.log`), as before;
    several are `wxpush-worker-1` … (their logs `wxpush-worker-1.log` …)."""
    return [None] if workers == 1 else [f"wxpush-worker-{n}" for n in range(1, workers + 1)]


def _campaign_deployment_id() -> str:
    """The push-campaign deployment's id: the page the banner links to."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read() -> str:
        async with get_client() as client:
            return str((await client.read_deployment_by_name(PUSH_CAMPAIGN)).id)

    return run_coro_as_sync(read()) or ""


def _first_refresh(log_hint: str) -> None:
    """Run refresh-access-token through its deployment: the token is fresh before the
    first campaign, and a worker that cannot run flows shows up now, not at 09:00."""
    from prefect.deployments import run_deployment

    run = run_deployment(name=REFRESH_TOKEN, timeout=180)
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise typer.Exit(f"The first refresh-access-token run ended {state}; see {log_hint}")


def run_serve(
    *,
    ui_port: int,
    simulator_port: int,
    with_simulator: bool,
    recipients: int,
    ready_file: Path | None = None,
    receiver_port: int = 8902,
    api_port: int = 8903,
    workers: int = 1,
    worker_limit: int | None = None,
    database_url_option: str | None = None,
    prefect_database_url_option: str | None = None,
) -> None:
    """Everything `make serve` does, until Ctrl-C; with `workers` > 1 and a PostgreSQL
    database, a local cluster: Prefect on PostgreSQL too, several workers (docs/scaling.md)."""
    from cli.alerts import AlertChannels
    from cli.cluster import (
        audience_warning,
        check_workers,
        ensure_database,
        prefect_database_url,
    )
    from cli.demo import seed_recipients
    from cli.setup import setup_app
    from db.engine import database_url, display_url
    from db.migrate import upgrade
    from wechat.simulator import defaults

    # Handed explicitly to everything that uses it (the seed, the receiver, the worker).
    db_url = database_url(database_url_option or local_database_url())
    check_workers(workers, db_url)  # before anything starts
    prefect_db = prefect_database_url(db_url, prefect_database_url_option)
    stop_on_signals()
    state_dir().mkdir(parents=True, exist_ok=True)
    ui_port = pick_port(ui_port)
    ui_url = f"http://127.0.0.1:{ui_port}"
    steps = 8 if with_simulator else 6
    step = iter(range(1, steps + 1))
    with contextlib.ExitStack() as stack:
        try:
            _say(f"{next(step)}/{steps} Database {display_url(db_url)}")
            if ensure_database(db_url, "the ledger"):
                typer.echo(f"  created {display_url(db_url)}")
            typer.echo(f"  {upgrade(db_url).describe()}")
            if (warning := audience_warning(db_url)) is not None:
                typer.secho(f"  {warning}", fg=typer.colors.YELLOW)
            sim_url = None
            if with_simulator:
                sim_port = pick_port(simulator_port)
                _say(f"{next(step)}/{steps} WeChat API simulator on http://127.0.0.1:{sim_port}")
                sim_url = stack.enter_context(simulator(sim_port)).url
            _say(f"{next(step)}/{steps} Prefect server and UI on {ui_url}")
            if prefect_db is not None:
                created = ensure_database(prefect_db, "the Prefect server")
                typer.echo(f"  {'created and ' if created else ''}on {display_url(prefect_db)}")
            stack.enter_context(prefect_server(ui_port, prefect_db))
            _say(f"{next(step)}/{steps} wxpush setup, sample recipients, deployments")
            receiver_url = None
            if sim_url is not None:
                setup_app(
                    app="default",
                    app_id=defaults.DEMO_APP_ID,
                    app_secret=defaults.DEMO_APP_SECRET,
                    api_base_url=sim_url,
                    callback_token=defaults.DEMO_CALLBACK_TOKEN,
                    encoding_aes_key=defaults.DEMO_ENCODING_AES_KEY,
                    # Alerts to the simulator's WeCom group robot (docs/alerts.md).
                    alerts=AlertChannels(
                        wecom_key=SecretStr(defaults.DEMO_ROBOT_KEY), wecom_url=sim_url
                    ),
                )
                typer.echo(
                    f"  alerts go to the simulator's WeCom robot: {sim_url}/_sim/robots/"
                    f"{defaults.DEMO_ROBOT_KEY}/messages"
                )
                if recipients:
                    seed_recipients(sim_url, recipients, db_url)
                _say(f"{next(step)}/{steps} Callback receiver, and the simulator pushing to it")
                receiver_url = stack.enter_context(receiver(pick_port(receiver_port), db_url)).url
                point_simulator_at(sim_url, receiver_url)
            else:
                setup_app(app="default")
            deployed = deploy_all()
            typer.echo(
                "  deployed: push-campaign, send-test-message, refresh-access-token (every 10 "
                "minutes), daily-digest (09:00 Asia/Shanghai)"
            )
            for note in deployed.notes:  # a real account's digest is deployed paused
                typer.secho(f"  {note}", fg=typer.colors.YELLOW)
            _say(f"{next(step)}/{steps} Push API (signed requests)")
            api_url = stack.enter_context(push_api(pick_port(api_port), db_url)).url
            names = worker_names(workers)
            if workers == 1:
                _say(f"{next(step)}/{steps} A worker on the `{WORK_POOL}` work pool")
            else:
                _say(f"{next(step)}/{steps} {workers} workers on the `{WORK_POOL}` work pool")
            for name in names:
                stack.enter_context(_worker(db_url, name, worker_limit))
                if name is not None:
                    typer.echo(f"  {name}  (works in {state_dir() / 'workers' / name})")
            _say(f"{next(step)}/{steps} First token refresh, through the worker")
            logs = [f"{state_dir() / 'logs' / (name or 'prefect-worker')}.log" for name in names]
            _first_refresh(", ".join(logs))
            cluster = (
                _cluster_lines(prefect_db, [name or "prefect-worker" for name in names])
                if workers > 1 or prefect_db is not None
                else []
            )
            _banner(
                ui_url, sim_url, receiver_url, db_url, _campaign_deployment_id(), cluster, api_url
            )
            if ready_file is not None:
                ready_file.write_text(
                    json.dumps(
                        {
                            "ui": ui_url,
                            "simulator": sim_url,
                            "receiver": receiver_url,
                            "api": api_url,
                            "database": db_url,
                            "prefect_database": display_url(prefect_db) if prefect_db else None,
                            "workers": [name or "prefect-worker" for name in names],
                        }
                    )
                )
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            typer.echo("\nStopping everything wxpush serve started…")
    typer.echo("Stopped.")


def _banner(
    ui_url: str,
    sim_url: str | None,
    receiver_url: str | None,
    db_url: str,
    campaign_deployment_id: str,
    extra: list[str] | None = None,
    api_url: str | None = None,
) -> None:
    from db.engine import display_url

    campaign = f"{ui_url}/deployments/deployment/{campaign_deployment_id}"
    typer.secho("\nwxpush is up.", fg=typer.colors.GREEN, bold=True)
    lines = [
        f"  Prefect UI           {ui_url}",
        f"  Run a campaign       {campaign}  → Run ▸ Custom run, fill the form",
        f"  Runs and reports     {ui_url}/runs  (each campaign run has a report artifact)",
        f"  Database             {display_url(db_url)}  (views: campaign_stats, "
        "delivery_failures; docs/analytics.md)",
        f"  Logs                 {state_dir() / 'logs'}/",
    ]
    if sim_url:
        lines.insert(3, f"  WeChat simulator     {sim_url}/_sim/messages  (what was 'sent')")
    if receiver_url:
        lines.insert(
            4,
            f"  Callback receiver    {receiver_url}/wechat/callback  (receipts and follower "
            "actions from the simulator; `wxpush report ID` shows the receipts)",
        )
    if api_url:
        lines.append(
            f"  Push API             {api_url}/v1/messages  (signed; a key: `wxpush api-key "
            "create --name orders`; docs/api.md)"
        )
    typer.echo("\n".join(lines + (extra or [])))
    typer.echo("\nCtrl-C stops everything.")


def _cluster_lines(prefect_db: str | None, workers: list[str]) -> list[str]:
    """The banner's lines for the scaled setup's extra parts."""
    from db.engine import display_url

    where = display_url(prefect_db) if prefect_db else "SQLite, in the state folder"
    return [
        f"  Prefect's database   {where}",
        f"  Workers              {', '.join(workers)}  (each has its log in the Logs folder)",
    ]


def register(app: typer.Typer) -> None:
    """Add `wxpush serve` to the app."""

    @app.command("serve")
    def serve(
        ui_port: Annotated[int, typer.Option("--ui-port", help="Prefect UI/API port.")] = 4200,
        simulator_port: Annotated[int, typer.Option("--simulator-port")] = 8900,
        receiver_port: Annotated[
            int, typer.Option("--receiver-port", help="Callback receiver port.")
        ] = 8902,
        api_port: Annotated[
            int, typer.Option("--api-port", help="Push API port (`wxpush api`).")
        ] = 8903,
        no_simulator: Annotated[
            bool,
            typer.Option(
                "--no-simulator",
                help="Use the wechat-app block as it is (e.g. the real WeChat API, set with "
                "`wxpush setup`) instead of starting the simulator.",
            ),
        ] = False,
        recipients: Annotated[
            int, typer.Option("--recipients", min=0, help="Sample recipients to seed.")
        ] = DEFAULT_RECIPIENTS,
        ready_file: Annotated[
            Path | None, typer.Option("--ready-file", hidden=True, help="Written when up.")
        ] = None,
        database_url: Annotated[
            str | None,
            typer.Option(
                "--database-url",
                help="The ledger's database, created if missing. A postgresql:// one puts the "
                "Prefect server on PostgreSQL too.",
                show_default="$WXPUSH_DATABASE_URL, else <state dir>/wxpush.db",
            ),
        ] = None,
        prefect_database_url: Annotated[
            str | None,
            typer.Option(
                "--prefect-database-url",
                help="The Prefect server's own database (postgresql://… or sqlite:///…), "
                "created if missing. Unset, PREFECT_SERVER_DATABASE_CONNECTION_URL if set.",
                show_default="<ledger database>_prefect beside a PostgreSQL ledger, else "
                "SQLite in <state dir>/prefect",
            ),
        ] = None,
        workers: Annotated[
            int,
            typer.Option(
                "--workers",
                min=1,
                help="Prefect workers on the `wxpush` pool, each in a folder of its own, as on "
                "that many machines. More than 1 needs a PostgreSQL --database-url.",
            ),
        ] = 1,
        worker_limit: Annotated[
            int | None,
            typer.Option(
                "--worker-limit",
                min=1,
                help="Flow runs each worker runs at once; the others wait for the next free "
                "worker (without a limit, the first worker to poll takes every waiting run).",
                show_default="no limit",
            ),
        ] = None,
    ) -> None:
        """Prefect server + UI, simulator, deployments and a worker, until Ctrl-C. With
        --workers 2 --database-url postgresql://…, a local cluster: the ledger and the Prefect
        server on PostgreSQL, two workers (docs/scaling.md)."""
        run_serve(
            ui_port=ui_port,
            simulator_port=simulator_port,
            receiver_port=receiver_port,
            api_port=api_port,
            with_simulator=not no_simulator,
            recipients=recipients,
            ready_file=ready_file,
            workers=workers,
            worker_limit=worker_limit,
            database_url_option=database_url,
            prefect_database_url_option=prefect_database_url,
        )
