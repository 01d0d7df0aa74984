"""Start the simulator as a real HTTP server in a subprocess (`python -m wechat.simulator`) and
wait until it answers: used by the test fixtures, the benchmark and the demo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from wechat.simulator.admin import SimulatorAdmin
from wechat.simulator.defaults import APP_SECRET_ENV, DEMO_APP_ID, DEMO_APP_SECRET


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class SimulatorProcess:
    """A running simulator; `stop()` (or leaving the `with` block) ends it."""

    base_url: str
    app_id: str
    app_secret: str = field(repr=False)
    process: subprocess.Popen[bytes]
    log_path: Path
    admin: SimulatorAdmin = field(init=False)

    def __post_init__(self) -> None:
        self.admin = SimulatorAdmin(self.base_url)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        self.admin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)

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
    python: str = sys.executable,
    startup_timeout: float = 20.0,
) -> SimulatorProcess:
    """Launch `python -m wechat.simulator` on a free port and return once /_sim/health answers.
    The secret reaches the child through its environment, not its (world-readable) argv."""
    port = port or free_port(host)
    command = [python, "-m", "wechat.simulator", "--host", host, "--port", str(port)]
    command += ["--app-id", app_id, *extra_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", APP_SECRET_ENV: app_secret}
    with tempfile.NamedTemporaryFile(
        prefix="wxpush-simulator-", suffix=".log", delete=False
    ) as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
            env=env,
        )
    running = SimulatorProcess(f"http://{host}:{port}", app_id, app_secret, process, Path(log.name))
    deadline = time.monotonic() + startup_timeout
    while True:
        if process.poll() is not None:
            tail = running.log_tail()
            running.stop()
            raise RuntimeError(f"simulator exited with {process.returncode}:\n{tail}")
        try:
            running.admin.health()
            return running
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                tail = running.log_tail()
                running.stop()
                raise RuntimeError(
                    f"simulator did not answer in {startup_timeout}s:\n{tail}"
                ) from exc
            time.sleep(0.05)
