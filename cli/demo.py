"""`wxpush demo`: the whole loop on one machine, against the simulator, in about a minute.

Starts the WeChat API simulator (with a few faults on) and a real Prefect server
(project-local PREFECT_HOME, so the run history survives: ephemeral mode loses it), sets the
app up, seeds 1,000 recipients, starts the callback receiver with the simulator pushing its
delivery receipts to it (as `wxpush serve` does), refreshes the token, runs a campaign, waits
for the receipts, prints the report (sent, then delivered / blocked / failed in WeChat) and a
query to run against the ledger, and stops what it started.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import typer
from pydantic import SecretStr

from cli.services import (
    Service,
    local_database_url,
    point_simulator_at,
    prefect_home,
    prefect_server,
    python_module,
    receiver,
    simulator,
    stop_on_signals,
)
from config import env_var, overridden
from processes import pick_port
from receiver.writer import IDLE_WAKE_SECONDS, RECHECK_AFTER_SECONDS
from wechat.simulator.defaults import DEMO_ROBOT_KEY


def _say(text: str) -> None:
    typer.secho(text, fg=typer.colors.CYAN, bold=True)


def _run_flow(flow_fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a flow (sync or async) and return its final state."""
    outcome = flow_fn(*args, return_state=True, **kwargs)
    if inspect.isawaitable(outcome):
        outcome = asyncio.run(outcome)
    return outcome


#: The faults the demo's simulator injects, so the retries have something to do.
DEMO_FAULTS = {"seed": 2026, "minus_one_rate": 0.05, "http_5xx_rate": 0.02, "drop_rate": 0.005}
DEMO_RECIPIENTS = 1000
#: How long the demo waits for the last delivery receipts after the campaign, at most (it
#: returns as soon as every sent row has its receipt: normally within seconds).
RECEIPT_WAIT_SECONDS = 60.0
#: Nothing left to push and no new receipt for this long: the rest will not come (a push
#: that failed every attempt). A receipt that raced its ledger row is matched by the
#: receiver's re-check a few seconds later: wait three of those, for a loaded machine
#: (5 s once returned a moment before the last match, under the test suite's load).
RECEIPT_QUIET_SECONDS = 3 * RECHECK_AFTER_SECONDS + IDLE_WAKE_SECONDS


def run_demo(*, keep_running: bool = False) -> None:
    """Everything `make demo` does; raises on any failure so `make` exits non-zero. The demo's
    database (`local_database_url()`) is what this process's flows and the report use, and
    what the seed and the receiver are handed; the environment is left as it is."""
    stop_on_signals()  # a SIGTERM, like Ctrl-C, stops what the demo started
    with overridden(database_url=local_database_url()):
        _run_demo(keep_running=keep_running)


def _run_demo(*, keep_running: bool) -> None:
    from cli.alerts import AlertChannels
    from cli.setup import setup_app
    from db.engine import database_url
    from flows.campaign import push_campaign
    from flows.token import refresh_access_token
    from tasks.params import CampaignParams
    from wechat.simulator import defaults
    from wechat.simulator.admin import SimulatorAdmin

    sim_port, ui_port = pick_port(8900), pick_port(4200)
    sim_url = f"http://127.0.0.1:{sim_port}"
    ui_url = f"http://127.0.0.1:{ui_port}"
    started = time.monotonic()

    _say(f"1/7 Starting the WeChat API simulator on {sim_url} (with a few faults switched on)")
    with simulator(sim_port) as sim:
        with SimulatorAdmin(sim_url) as admin:
            admin.set_faults(**DEMO_FAULTS)
        _say(f"2/7 Starting a Prefect server on {ui_url} (PREFECT_HOME={prefect_home()})")
        with prefect_server(ui_port) as server:
            _say(
                "3/7 wxpush setup: block types, the wechat-app block, the token lock, alerts to "
                "the simulator's WeCom group robot"
            )
            setup_app(
                app="default",
                app_id=defaults.DEMO_APP_ID,
                app_secret=defaults.DEMO_APP_SECRET,
                api_base_url=sim_url,
                callback_token=defaults.DEMO_CALLBACK_TOKEN,
                encoding_aes_key=defaults.DEMO_ENCODING_AES_KEY,
                alerts=AlertChannels(
                    wecom_key=SecretStr(defaults.DEMO_ROBOT_KEY), wecom_url=sim_url
                ),
            )
            _say(f"4/7 Seeding {DEMO_RECIPIENTS:,} recipients in SQL and in the simulator")
            seed_recipients(sim_url, DEMO_RECIPIENTS, database_url())
            _say("5/7 Starting the callback receiver; the simulator pushes its receipts to it")
            with receiver(pick_port(8902), database_url()) as callbacks:
                point_simulator_at(sim_url, callbacks.url)
                _say("6/7 Refreshing the access token (flow refresh_access_token)")
                refresh_state = _run_flow(refresh_access_token, app="default")
                if not refresh_state.is_completed():
                    raise typer.Exit(f"refresh_access_token ended {refresh_state.name}")
                _say("7/7 Running a campaign (flow push_campaign), then waiting for its receipts")
                campaign_state = _run_flow(
                    push_campaign,
                    CampaignParams(
                        name="demo order shipped",
                        template_id=defaults.DEMO_TEMPLATE_ID,
                        data={**dict(defaults.DEMO_TEMPLATE_VALUES), "thing1": "{nickname}"},
                    ),
                )
                if not campaign_state.is_completed():
                    raise typer.Exit(
                        f"push_campaign ended {campaign_state.name}: {campaign_state.message}"
                    )
                receipts = wait_for_receipts(campaign_state.result().campaign_id, sim_url)
                _flush_prefect_workers()
                _report(campaign_state, receipts, sim, server, started)
                if keep_running:
                    _wait_for_ctrl_c(ui_url)


def seed_recipients(sim_url: str, count: int, database_url: str) -> None:
    """`wxpush seed`: sample recipients in the database at `database_url` (handed to the
    child in its environment: a URL's password stays out of argv), registered as followers
    in the simulator."""
    done = subprocess.run(
        python_module("cli.main", "seed", "--recipients", str(count), "--simulator-url", sim_url),
        capture_output=True,
        text=True,
        env={**os.environ, env_var("database_url"): database_url},
    )
    if done.returncode != 0:
        raise typer.Exit(f"wxpush seed failed:\n{done.stdout}{done.stderr}")
    typer.echo(done.stdout.rstrip())


def wait_for_receipts(
    campaign_id: str,
    sim_url: str,
    *,
    timeout: float = RECEIPT_WAIT_SECONDS,
    quiet: float = RECEIPT_QUIET_SECONDS,
) -> dict[str, int]:
    """The campaign's receipt counts once every sent row has its receipt, or once the
    simulator has nothing left to push and the ledger has not changed for `quiet` s, or after
    `timeout` s: receipts arrive by callback after the sends, so the report waits for them."""
    from db.ledger import AWAITING_RECEIPT, receipt_counts
    from tasks.database import engine
    from wechat.simulator.admin import SimulatorAdmin

    deadline = time.monotonic() + timeout
    last: dict[str, int] = {}
    changed = time.monotonic()
    with SimulatorAdmin(sim_url) as admin:
        while True:
            with engine().connect() as conn:
                counts = receipt_counts(conn, campaign_id)
            now = time.monotonic()
            if counts[AWAITING_RECEIPT] == 0 or now >= deadline:
                return counts
            if counts != last:
                last, changed = counts, now
            elif now - changed >= quiet and admin.callbacks().pending == 0:
                return counts
            time.sleep(0.2)


def _flush_prefect_workers() -> None:
    """Send buffered run logs and events before the server stops (else they are lost)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for drain in (APILogWorker.instance().drain, EventsWorker.drain_all):
        outcome = drain()
        if inspect.isawaitable(outcome):
            asyncio.run(outcome)  # type: ignore[arg-type]


def _report(
    campaign_state: Any,
    receipts: dict[str, int],
    simulator: Service,
    server: Service,
    started: float,
) -> None:
    from cli.campaign import report_text
    from db.engine import database_url
    from db.ledger import AWAITING_RECEIPT, status_counts
    from tasks.database import engine

    result = campaign_state.result()
    with engine().connect() as conn:
        counts = status_counts(conn, result.campaign_id)
    accepted = httpx.get(f"{simulator.url}/_sim/counters", timeout=10).json()["accepted"]
    run_id = campaign_state.state_details.flow_run_id
    query = (
        "SELECT status, CASE WHEN status = 'invalid' THEN 'field rule' "
        "ELSE coalesce(CAST(errcode AS TEXT), reason) END AS why, count(*) AS recipients\n"
        f"FROM deliveries WHERE campaign_id = '{result.campaign_id}'\n"
        "GROUP BY 1, 2 ORDER BY 3 DESC;"
    )
    typer.echo("")
    typer.echo(report_text(result.campaign_id))
    typer.secho("Demo finished.", fg=typer.colors.GREEN, bold=True)
    typer.echo(
        f"  The simulator accepted {accepted} messages; the ledger says {counts.get('sent', 0)} "
        "sent (they must match)."
    )
    received = sum(n for key, n in receipts.items() if key != AWAITING_RECEIPT)
    typer.echo(
        f"  The receiver recorded {received} delivery receipts for them: "
        f"{receipts.get('delivered', 0)} delivered, {receipts.get('user_block', 0)} blocked by "
        f"the user, {receipts.get('system_failed', 0)} failed in WeChat"
        + (
            f", {receipts[AWAITING_RECEIPT]} not received yet."
            if receipts[AWAITING_RECEIPT]
            else "."
        )
    )
    alerts = httpx.get(f"{simulator.url}/_sim/robots/{DEMO_ROBOT_KEY}/messages", timeout=10).json()[
        "items"
    ]
    typer.echo(
        f"  Alerts: the simulator's WeCom group robot received {len(alerts)}"
        + (f"; the first: {alerts[0]['content'].splitlines()[0]}" if alerts else "")
        + f" ({simulator.url}/_sim/robots/{DEMO_ROBOT_KEY}/messages; docs/alerts.md)"
    )
    typer.echo(f"  Took {time.monotonic() - started:.1f} s")
    typer.echo(f"  The run in the Prefect UI: {server.url}/runs/flow-run/{run_id}")
    typer.echo(
        "  (the demo stops its server now; `make ui` starts it again on the same history,\n"
        "   or run `wxpush demo --keep-running` to keep everything up)"
    )
    typer.echo(f"  The results are in {database_url()}; try:\n")
    typer.echo("    " + query.replace("\n", "\n    "))
    typer.echo("")
    with engine().connect() as conn:
        for row in conn.exec_driver_sql(query):
            typer.echo(f"    {row[0]:<8} {row[1] or '':<16} {row[2]}")
    typer.echo(f"\n  Logs of the background services: {Path(simulator.log_path).parent}/")
    if accepted != counts.get("sent", 0):
        raise typer.Exit(1)


def _wait_for_ctrl_c(ui_url: str) -> None:
    try:  # a signal right after the line below is caught too
        typer.echo(f"\nEverything keeps running; open {ui_url}. Ctrl-C stops it.")
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
