"""Start the simulator as a real HTTP server in a subprocess (`python -m wechat.simulator`) and
wait until it answers: used by the test fixtures, the benchmark and the demo."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from processes import Child, free_port, http_ok, start_ready
from wechat.simulator.admin import SimulatorAdmin
from wechat.simulator.defaults import APP_SECRET_ENV, DEMO_APP_ID, DEMO_APP_SECRET


@dataclass
class SimulatorProcess:
    """A running simulator; `stop()` (or leaving the `with` block) ends it."""

    base_url: str
    app_id: str
    app_secret: str = field(repr=False)
    child: Child
    admin: SimulatorAdmin = field(init=False)

    def __post_init__(self) -> None:
        self.admin = SimulatorAdmin(self.base_url)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.child.process

    def log_tail(self, chars: int = 4000) -> str:
        return self.child.log_tail(chars)

    def stop(self) -> None:
        self.admin.close()
        self.child.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_simulator(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    app_id: str = DEMO_APP_ID,
    app_secret: str = DEMO_APP_SECRET,
    extra_args: Sequence[str] = (),
    accounts: Sequence[tuple[str, str]] = (),
    python: str = sys.executable,
    startup_timeout: float = 20.0,
) -> SimulatorProcess:
    """Launch `python -m wechat.simulator` on a free port and return once /_sim/health answers
    (processes.ChildFailed, with its output, if it does not). The secret reaches the child
    through its environment, not its (world-readable) argv. `accounts` are (app_id, app_secret)
    of more accounts served beside the default one (`--account`: those secrets are in argv, so
    pass test secrets only); address them with `sim.admin.account(app_id)`."""
    port = port or free_port(host)
    base_url = f"http://{host}:{port}"
    command = [python, "-m", "wechat.simulator", "--host", host, "--port", str(port)]
    command += ["--app-id", app_id, *extra_args]
    for other_id, other_secret in accounts:
        command += ["--account", f"{other_id}:{other_secret}"]
    child = start_ready(
        command,
        name="simulator",
        ready=http_ok(f"{base_url}/_sim/health"),
        timeout=startup_timeout,
        poll=0.05,
        env={"PYTHONUNBUFFERED": "1", APP_SECRET_ENV: app_secret},
        cwd=Path(__file__).resolve().parents[2],
    )
    return SimulatorProcess(base_url, app_id, app_secret, child)
