"""Start and stop the local processes `wxpush demo` and `wxpush serve` need.

Each service is a `processes` child: its own process group, its output in a log file under
the state folder, waited for on a health URL, and stopped with its whole group and every
descendant on exit (a Prefect worker starts flow runs in sessions of their own).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import processes
from config import env_var, settings
from processes import Child


def state_dir() -> Path:
    """Where the local services keep their state and logs (`WXPUSH_STATE_DIR`, default
    `.wxpush`)."""
    return settings().state_dir


def prefect_home() -> Path:
    """The Prefect server's home (its SQLite database: the run history the UI shows)."""
    return state_dir() / "prefect"


def local_database_url() -> str:
    """The database `wxpush demo` and `wxpush serve` use: `WXPUSH_DATABASE_URL`, else a
    SQLite file in the state folder (not the working directory's `wxpush.db`)."""
    return settings().database_url or f"sqlite:///{(state_dir() / 'wxpush.db').resolve()}"


@dataclass
class Service:
    """A running background service: where to reach it, and its child process and log."""

    child: Child
    url: str
    log_path: Path

    @property
    def name(self) -> str:
        return self.child.name

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group and every descendant, SIGKILL what lingers."""
        self.child.stop(timeout)


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str],
    *,
    url: str,
    health_url: str,
    env: dict[str, str] | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[Service]:
    """Run `argv` in the background for the duration of the block, its output in
    `<state dir>/logs/<name>.log`; ChildFailed (naming that log) if it never gets healthy."""
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with processes.running(
        argv,
        name=name,
        ready=processes.http_ok(health_url),
        timeout=startup_timeout,
        log=log_path,
        env=env,
    ) as child:
        yield Service(child, url, log_path)


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


@contextlib.contextmanager
def simulator(port: int) -> Iterator[Service]:
    """The local WeChat API simulator on 127.0.0.1:`port`."""
    url = f"http://127.0.0.1:{port}"
    argv = python_module("cli.main", "simulator", "--host", "127.0.0.1", "--port", str(port))
    with running("simulator", argv, url=url, health_url=f"{url}/_sim/health") as service:
        yield service


@contextlib.contextmanager
def prefect_server(port: int, database_url: str | None = None) -> Iterator[Service]:
    """`prefect server start` on 127.0.0.1:`port` with its history under `prefect_home()`
    (not ephemeral mode, which loses run history), or in `database_url` (Prefect's
    `postgresql+asyncpg://…`, handed over in the environment, never argv), and this
    process's client pointed at it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    argv = python_module("prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port))
    env = {
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{url}/api",
    }
    if database_url is not None:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    with (
        running(
            "prefect-server",
            argv,
            url=url,
            health_url=f"{url}/api/health",
            env=env,
            startup_timeout=120,
        ) as service,
        temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}),
    ):
        yield service


#: What share of the simulator's receipts say delivered / blocked / failed (demo and serve).
RECEIPT_MIX = {"success": 0.95, "failed:user block": 0.03, "failed: system failed": 0.02}


@contextlib.contextmanager
def receiver(port: int, database_url: str, app: str = "default") -> Iterator[Service]:
    """`wxpush receiver` for `app` on 127.0.0.1:`port`, writing to `database_url`; its callback
    secrets come from the app's block on this process's Prefect server."""
    from cli.deploy import api_url

    url = f"http://127.0.0.1:{port}"
    env = {env_var("database_url"): database_url, "PREFECT_API_URL": api_url()}
    argv = python_module("cli.main", "receiver", "--port", str(port), "--app", app)
    with running("receiver", argv, url=url, health_url=f"{url}/health", env=env) as service:
        yield service


@contextlib.contextmanager
def push_api(port: int, database_url: str) -> Iterator[Service]:
    """`wxpush api` (the signed push API) on 127.0.0.1:`port`, writing to `database_url`; its
    keys, apps and tokens come from the blocks on this process's Prefect server."""
    from cli.deploy import api_url

    url = f"http://127.0.0.1:{port}"
    env = {env_var("database_url"): database_url, "PREFECT_API_URL": api_url()}
    argv = python_module("cli.main", "api", "--host", "127.0.0.1", "--port", str(port))
    with running("api", argv, url=url, health_url=f"{url}/health", env=env) as service:
        yield service


def point_simulator_at(sim_url: str, receiver_url: str) -> None:
    """Receipts (safe mode, like a production account) and follower actions go to the
    receiver, signed with the demo account's callback secrets (`wxpush setup` stores the same
    ones in the block the receiver reads)."""
    from wechat.simulator import defaults
    from wechat.simulator.admin import SimulatorAdmin

    with SimulatorAdmin(sim_url) as admin:
        admin.set_callbacks(
            callback_url=f"{receiver_url}/wechat/callback",
            callback_token=defaults.DEMO_CALLBACK_TOKEN,
            encoding_aes_key=defaults.DEMO_ENCODING_AES_KEY,
            receipt_mix=RECEIPT_MIX,
        )


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (a service manager, `kill`) both unwind, so every child a command
    started is stopped; SIGTERM's default would end the process and orphan them (SIGINT is
    re-armed: a shell starting us in the background may have ignored it)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)
