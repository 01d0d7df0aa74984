"""Start and stop the local processes `wxpush demo` (and later `serve`) need.

Each service runs in its own process group with its output in a log file, is waited for
on a health URL, and is stopped with its whole group on exit, so nothing is left behind.
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

STATE_DIR = Path(".wxpush")


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
    """`preferred` if free, else a free port the OS picks."""
    if port_is_free(preferred, host):
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
        """SIGTERM the whole process group, SIGKILL it if it lingers."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


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
    logs = STATE_DIR / "logs"
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
