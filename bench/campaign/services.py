"""The services a bench run starts and stops: a Prefect server, a fresh database, and the
`Bench` every part is handed (with the CPU counters of those processes)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench.campaign.results import Report
from config import overridden
from db.audience_role import ensure_audience_role
from db.engine import AUDIENCE_ENV_VAR, ENV_VAR, audience_database_url, database_url, make_engine
from db.migrate import upgrade
from processes import Child, free_port, http_ok, running
from wechat.simulator.process import SimulatorProcess


def tree_cpu(pid: int) -> float | None:
    """CPU seconds of a process and its live children (the Prefect server forks uvicorn)."""
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total
    except psutil.Error:
        return None


def postgres_cpu() -> float | None:
    """CPU seconds of the `postgres` processes on the machine, including backends that
    already exited (the postmaster reaps them: their time is in its children's times)."""
    total, found = 0.0, False
    for proc in psutil.process_iter(["name"]):
        if (proc.info.get("name") or "").startswith("postgres"):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
                found = True
    return total if found else None


@dataclass
class PrefectServer:
    """`prefect server start` in its own process group, with a temporary PREFECT_HOME."""

    child: Child
    api_url: str
    home: Path

    def env(self) -> dict[str, str]:
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }


@contextlib.contextmanager
def prefect_server(folder: Path, startup_timeout: float = 120.0) -> Iterator[PrefectServer]:
    """A real Prefect API server for the children; stopped (whole group) on exit."""
    home = folder / "prefect-home"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": None,  # the server's own, not one this process may point at
    }
    with running(
        [*argv, "--port", str(port)],
        name="prefect server",
        ready=http_ok(f"{api_url}/health"),
        timeout=startup_timeout,
        log=folder / "prefect-server.log",
        env=env,
    ) as child:
        yield PrefectServer(child, api_url, home)


@contextlib.contextmanager
def bench_database(url: str | None, folder: Path) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file in `folder`, or a new schema on the
    PostgreSQL server of `url` (reached through search_path, dropped on exit) with its own
    audience role, the audience URL of this process while the block runs (`overridden`) and
    of its children (`Bench.child_env`): campaigns run as they should in production, not as
    the server's superuser."""
    if not url:
        path = folder / "wxpush-bench.db"
        resolved = f"sqlite:///{path}"
        upgrade(resolved)
        with overridden(audience_database_url=resolved):
            yield resolved
        return
    server_url = database_url(url)
    schema = f"wxpush_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        parsed = make_url(server_url)
        options = f"{parsed.query.get('options', '')} -csearch_path={schema}".strip()
        resolved = parsed.update_query_dict({"options": options}).render_as_string(
            hide_password=False
        )
        upgrade(resolved)
        owner = make_engine(resolved, poolclass=NullPool)
        try:
            audience = ensure_audience_role(owner, schema).url
        finally:
            owner.dispose()
        with overridden(audience_database_url=audience):
            yield resolved
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            role = text("SELECT 1 FROM pg_roles WHERE rolname = :name")
            if conn.execute(role, {"name": schema}).scalar():  # the audience role, by name
                conn.execute(text(f'DROP OWNED BY "{schema}"'))
                conn.execute(text(f'DROP ROLE "{schema}"'))
        admin.dispose()


@dataclass
class Bench:
    """What every part needs: the services, the database and where to put files."""

    args: argparse.Namespace
    folder: Path
    sim: SimulatorProcess
    server: PrefectServer
    db_url: str
    engine: Engine
    report: Report
    children: int = 0
    #: The module whose `--child MODE SPEC OUT` runs a child (bench.costs wraps this one's).
    child_module: str = "bench.campaign"

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def child_env(self) -> dict[str, str]:
        env = {
            **self.server.env(),
            ENV_VAR: self.db_url,
            AUDIENCE_ENV_VAR: audience_database_url(),  # bench_database's, explicitly
        }
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def app_values(self, name: str, app_id: str) -> dict[str, str]:
        return {
            "name": name,
            "app_id": app_id,
            "app_secret": self.sim.app_secret,
            "api_base_url": self.sim.base_url,
        }
