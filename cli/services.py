"""Start and stop the local processes `wxpush demo` and `wxpush serve` need.

Each service runs in its own process group with its output in a log file, is waited for
on a health URL, and is stopped with its whole group and every descendant on exit (a
Prefect worker starts flow runs in sessions of their own), so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from config import env_var, settings


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


class ServiceError(RuntimeError):
    """A background service did not come up; the message says where its log is."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` if free, else (or when it is 0) a free port the OS picks."""
    if preferred and port_is_free(preferred, host):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A running background process and where to reach and read it."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group and every descendant, SIGKILL what lingers."""
        family = _descendants(self.process.pid)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=5)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _wait_healthy(service: Service, health_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise ServiceError(
                f"{service.name} exited with code {service.process.returncode}; "
                f"see {service.log_path}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(health_url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise ServiceError(f"{service.name} not healthy after {timeout:.0f} s; see {service.log_path}")


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
    """Run `argv` in the background for the duration of the block."""
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    service = Service(name=name, process=process, log_path=log_path, url=url)
    try:
        _wait_healthy(service, health_url, startup_timeout)
        yield service
    finally:
        service.stop()


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
def prefect_server(port: int) -> Iterator[Service]:
    """`prefect server start` on 127.0.0.1:`port` with its history under `prefect_home()`
    (not ephemeral mode, which loses run history), and this process's client pointed at it."""
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
