"""`wxpush demo`: the whole loop on one machine, against the simulator, in about a minute.

Starts the WeChat API simulator and a real Prefect server (project-local PREFECT_HOME, so
the run history survives: ephemeral mode loses it), sets the app up, refreshes the token,
sends one template message, shows where to look, and stops what it started.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path
from typing import Any

import httpx
import typer

from cli.services import STATE_DIR, Service, pick_port, python_module, running

PREFECT_HOME = STATE_DIR / "prefect"


def _say(text: str) -> None:
    typer.secho(text, fg=typer.colors.CYAN, bold=True)


def _run_flow(flow_fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a flow (sync or async) and return its final state."""
    outcome = flow_fn(*args, return_state=True, **kwargs)
    if inspect.isawaitable(outcome):
        outcome = asyncio.run(outcome)
    return outcome


def _servers(sim_port: int, ui_port: int) -> tuple[list[str], list[str], dict[str, str]]:
    simulator = python_module(
        "cli.main", "simulator", "--host", "127.0.0.1", "--port", str(sim_port)
    )
    server = python_module(
        "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(ui_port)
    )
    server_env = {
        "PREFECT_HOME": str(PREFECT_HOME.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{ui_port}/api",
    }
    return simulator, server, server_env


def run_demo(*, keep_running: bool = False) -> None:
    """Everything `make demo` does; raises on any failure so `make` exits non-zero."""
    # Imported here: they pull in Prefect, which should read the settings we set below.
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cli.setup import setup_app
    from flows.test_message import TestMessage, send_test_message
    from flows.token import refresh_access_token
    from wechat.simulator import defaults

    PREFECT_HOME.mkdir(parents=True, exist_ok=True)
    sim_port, ui_port = pick_port(8900), pick_port(4200)
    simulator_argv, server_argv, server_env = _servers(sim_port, ui_port)
    sim_url = f"http://127.0.0.1:{sim_port}"
    ui_url = f"http://127.0.0.1:{ui_port}"
    api_url = f"{ui_url}/api"
    started = time.monotonic()

    _say(f"1/5 Starting the WeChat API simulator on {sim_url}")
    with running(
        "simulator", simulator_argv, url=sim_url, health_url=f"{sim_url}/_sim/health"
    ) as simulator:
        _say(f"2/5 Starting a Prefect server on {ui_url} (PREFECT_HOME={PREFECT_HOME})")
        with (
            running(
                "prefect-server",
                server_argv,
                url=ui_url,
                health_url=f"{api_url}/health",
                env=server_env,
                startup_timeout=120,
            ) as server,
            temporary_settings(updates={PREFECT_API_URL: api_url}),
        ):
            _say("3/5 wxpush setup: block types, the wechat-app block, the token lock")
            setup_app(
                app="default",
                app_id=defaults.DEMO_APP_ID,
                app_secret=defaults.DEMO_APP_SECRET,
                api_base_url=sim_url,
            )
            _say("4/5 Refreshing the access token (flow refresh_access_token)")
            refresh_state = _run_flow(refresh_access_token, app="default")
            if not refresh_state.is_completed():
                raise typer.Exit(f"refresh_access_token ended {refresh_state.name}")
            _say(f"5/5 Sending a template message to the demo follower {defaults.DEMO_OPENID}")
            send_state = _run_flow(
                send_test_message,
                TestMessage(
                    app="default",
                    openid=defaults.DEMO_OPENID,
                    template_id=defaults.DEMO_TEMPLATE_ID,
                    data=dict(defaults.DEMO_TEMPLATE_VALUES),
                ),
            )
            _flush_prefect_workers()
            _report(send_state, simulator, server, started)
            if keep_running:
                _wait_for_ctrl_c(ui_url)


def _flush_prefect_workers() -> None:
    """Send buffered run logs and events before the server stops (else they are lost)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for drain in (APILogWorker.instance().drain, EventsWorker.drain_all):
        outcome = drain()
        if inspect.isawaitable(outcome):
            asyncio.run(outcome)  # type: ignore[arg-type]


def _report(send_state: Any, simulator: Service, server: Service, started: float) -> None:
    result = send_state.result()
    accepted = httpx.get(
        f"{simulator.url}/_sim/messages", params={"openid": result.openid}, timeout=10
    ).json()
    items = accepted["items"] if isinstance(accepted, dict) else accepted
    confirmed = any(int(m["msgid"]) == result.msgid for m in items)
    run_id = send_state.state_details.flow_run_id
    typer.echo("")
    typer.secho("Demo finished.", fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  WeChat (simulated) accepted the message: msgid {result.msgid}")
    typer.echo(f"  The simulator recorded it: {'yes' if confirmed else 'NO'}")
    typer.echo(f"  Took {time.monotonic() - started:.1f} s")
    typer.echo(f"  The run in the Prefect UI: {server.url}/runs/flow-run/{run_id}")
    typer.echo(
        "  (the demo stops its server now; `make ui` starts it again on the same history,\n"
        "   or run `wxpush demo --keep-running` to keep everything up)"
    )
    typer.echo(f"  Logs of the background services: {Path(simulator.log_path).parent}/")
    if not confirmed:
        raise typer.Exit(1)


def _wait_for_ctrl_c(ui_url: str) -> None:
    typer.echo(f"\nEverything keeps running; open {ui_url}. Ctrl-C stops it.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("Stopping.")


def register(app: typer.Typer) -> None:
    """Add `wxpush demo` to the app."""

    @app.command("demo")
    def demo(
        keep_running: bool = typer.Option(
            False, "--keep-running", help="Keep the simulator and Prefect server up until Ctrl-C."
        ),
    ) -> None:
        """Run wxpush end to end against the local WeChat simulator (what `make demo` runs)."""
        run_demo(keep_running=keep_running)
