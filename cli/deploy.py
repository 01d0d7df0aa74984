"""`wxpush deploy` and `wxpush worker`: put the flows on a Prefect server, and run them.

`deploy` creates the `wxpush` process work pool (if missing) and deploys every entry of
the project's `prefect.yaml` (the daily digest's schedule paused on a real account without
a template of its own: cli/digest_guard.py); `worker` starts a Prefect worker on that pool with the
environment the deployments expect (`WXPUSH_HOME`, the database URL). `wxpush serve` uses
both; on production machines run them by hand (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

import flows
from cli.services import python_module
from config import env_var
from tasks.resume import PUSH_CAMPAIGN

if TYPE_CHECKING:
    from cli.digest_guard import DigestPlan

WORK_POOL = "wxpush"
#: The deployments of prefect.yaml by the name the API knows them: "<flow>/<deployment>".
# PUSH_CAMPAIGN (tasks/resume.py: a paused campaign's scheduled resume runs on it too)
PUSH_CAMPAIGN_SHARD = "push-campaign-shard/push-campaign-shard"
SEND_TEST_MESSAGE = "send-test-message/send-test-message"
REFRESH_TOKEN = "refresh-access-token/refresh-access-token"
DAILY_DIGEST = "daily-digest/daily-digest"
DEPLOYMENTS = (PUSH_CAMPAIGN, PUSH_CAMPAIGN_SHARD, SEND_TEST_MESSAGE, REFRESH_TOKEN, DAILY_DIGEST)


class DeployError(RuntimeError):
    """Deploying failed; the message carries what Prefect said."""


def project_file() -> Path:
    """The `prefect.yaml` beside the `flows` package (a checkout or an editable install)."""
    path = Path(flows.__file__).resolve().parent.parent / "prefect.yaml"
    if not path.is_file():
        raise DeployError(
            f"{path} is missing: `wxpush deploy` needs the project's prefect.yaml "
            "(run it from a checkout of wxpush, or pass --prefect-file)."
        )
    return path


async def aensure_work_pool(name: str = WORK_POOL) -> Literal["created", "unchanged"]:
    """Create the `process` work pool unless it exists (its type is not changed if it does)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        try:
            await client.read_work_pool(name)
            return "unchanged"
        except ObjectNotFound:
            pass
        await client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type="process",
                description="wxpush: campaigns, token refresh and digests (wxpush deploy)",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            )
        )
        return "created"


@dataclass
class Deployed:
    """What `deploy_all` did: Prefect's output, and notes the operator must read."""

    output: str
    notes: list[str] = field(default_factory=list)


def deploy_all(
    prefect_file: Path | None = None,
    *,
    env: dict[str, str] | None = None,
    digest_template_id: str | None = None,
) -> Deployed:
    """Create the work pool and deploy every entry of prefect.yaml. The daily digest gets
    `digest_template_id`, and its schedule is paused on a real account without one."""
    import yaml

    from cli.digest_guard import aplan_digest, apply_plan, digest_entry

    path = prefect_file or project_file()
    asyncio.run(aensure_work_pool())
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entry = digest_entry(config)
    plan = asyncio.run(aplan_digest(entry, digest_template_id)) if entry else None
    with tempfile.TemporaryDirectory(prefix="wxpush-deploy-") as folder:
        deployed_file = path
        if entry is not None and plan is not None and apply_plan(entry, plan):
            deployed_file = Path(folder) / path.name
            deployed_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        output = _prefect_deploy(deployed_file, cwd=path.parent, env=env)
    notes = []
    if plan is not None and plan.paused:
        notes.append(_paused_note(plan))
    return Deployed(output=output, notes=notes)


def deploy_one_on_pool(name: str, pool: str, *, env: dict[str, str] | None = None) -> str:
    """Deploy prefect.yaml's entry `name` alone, to the work pool `pool` (created if missing):
    how benches and tests give one deployment workers of its own."""
    import yaml

    path = project_file()
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    (entry,) = [d for d in config["deployments"] if d["name"] == name]
    entry["work_pool"] = {**entry["work_pool"], "name": pool}
    config["deployments"] = [entry]
    asyncio.run(aensure_work_pool(pool))
    with tempfile.TemporaryDirectory(prefix="wxpush-deploy-") as folder:
        file = Path(folder) / path.name
        file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return _prefect_deploy(file, cwd=path.parent, env=env)


def _prefect_deploy(prefect_file: Path, *, cwd: Path, env: dict[str, str] | None) -> str:
    api = {"PREFECT_API_URL": api_url()}
    argv = ("prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    done = subprocess.run(
        python_module(*argv),
        cwd=cwd,
        env={**os.environ, **api, **(env or {}), "PREFECT_CLI_COLORS": "false", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise DeployError(f"prefect deploy failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _paused_note(plan: DigestPlan) -> str:
    """How to switch the paused digest on, with its schedules' ids as deployed."""
    from prefect.client.orchestration import get_client

    from cli.digest_guard import how_to_enable

    async def schedule_ids() -> list[str]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(plan.deployment)
            return [str(schedule.id) for schedule in deployment.schedules]

    return how_to_enable(plan, asyncio.run(schedule_ids()))


def worker_argv(pool: str = WORK_POOL, *, healthcheck: bool = False) -> list[str]:
    """`prefect worker start` on `pool`, with this interpreter (so flow runs import wxpush)."""
    argv = python_module("prefect", "worker", "start", "--pool", pool)
    return [*argv, "--with-healthcheck"] if healthcheck else argv


def api_url() -> str:
    """The Prefect API this process talks to (subprocesses get it explicitly: a
    `temporary_settings` block does not reach their environment)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise DeployError("PREFECT_API_URL is not set: which Prefect server should this use?")
    return url


def worker_env(home: Path, database_url: str) -> dict[str, str]:
    """What a worker's flow runs need: the Prefect API, where wxpush lives (prefect.yaml's
    pull step reads WXPUSH_HOME at run time) and which database to use."""
    return {
        "PREFECT_API_URL": api_url(),
        env_var("home"): str(home.resolve()),
        env_var("database_url"): database_url,
    }


def register(app: typer.Typer) -> None:
    """Add `wxpush deploy` and `wxpush worker` to the app."""

    @app.command("deploy")
    def deploy(
        prefect_file: Annotated[
            Path | None,
            typer.Option(
                "--prefect-file",
                help="The deployments file.",
                show_default="the project's prefect.yaml",
            ),
        ] = None,
        digest_template_id: Annotated[
            str | None,
            typer.Option(
                "--digest-template-id",
                help="Template the daily digest sends (on a real account the digest's "
                "schedule is deployed paused without it).",
                show_default="the simulator's demo template",
            ),
        ] = None,
    ) -> None:
        """Create the `wxpush` work pool and deploy push-campaign, push-campaign-shard,
        send-test-message, refresh-access-token and daily-digest to the Prefect server of
        PREFECT_API_URL."""
        deployed = deploy_all(prefect_file, digest_template_id=digest_template_id)
        typer.echo(deployed.output.rstrip())  # a DeployError: one line from cli/errors.py
        for note in deployed.notes:
            typer.secho(note, fg="yellow")

    @app.command("worker")
    def worker(
        pool: Annotated[str, typer.Option("--pool")] = WORK_POOL,
        home: Annotated[
            Path | None,
            typer.Option(
                "--home",
                help="Folder the flow runs work in (default database: its wxpush.db).",
                show_default="$WXPUSH_HOME, else the working directory",
            ),
        ] = None,
    ) -> None:
        """Start a Prefect worker that runs wxpush's deployments on this machine."""
        from config import settings
        from db.engine import database_url

        os.chdir(home or settings().home)
        env = {**os.environ, **worker_env(Path.cwd(), database_url())}  # DeployError: one line
        argv = worker_argv(pool)
        os.execve(argv[0], argv, env)
