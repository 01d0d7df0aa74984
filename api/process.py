"""`wxpush api` as a child process on a free port, for tests, benches and `wxpush serve`."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from processes import Child, free_port, http_ok, start

__all__ = ["ApiProcess", "launch_api", "running_api", "start_api"]


@dataclass
class ApiProcess:
    """A running `wxpush api`: its child process and its base URL."""

    child: Child
    base: str

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.child.output()

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, then wait; the seconds it took to exit (killed past `timeout`)."""
        return self.child.stop(timeout)

    def kill(self) -> None:
        """SIGKILL the process group (a crash, for the exactly-once tests and bench)."""
        import signal

        self.child.send(signal.SIGKILL)
        self.child.process.wait(timeout=30)


def launch_api(
    database_url: str,
    *,
    env: Mapping[str, str | None] | None = None,
    port: int | None = None,
    args: Sequence[str] = (),
    log: Path | None = None,
) -> ApiProcess:
    """Start `wxpush api` writing to `database_url` (not waited for). `env` must point it
    at a Prefect server (PREFECT_API_URL) holding the keys and blocks."""
    port = port or free_port()
    argv = [sys.executable, "-m", "cli.main", "api", "--port", str(port), *args]
    merged: dict[str, str | None] = {"WXPUSH_DATABASE_URL": database_url, **(env or {})}
    child = start(argv, name="api", env=merged, log=log)
    return ApiProcess(child, f"http://127.0.0.1:{port}")


def start_api(
    database_url: str,
    *,
    env: Mapping[str, str | None] | None = None,
    port: int | None = None,
    args: Sequence[str] = (),
    timeout: float = 60.0,
    log: Path | None = None,
) -> ApiProcess:
    """`launch_api`, returned once /health answers; processes.ChildFailed (with the
    output) if it exits or does not answer within `timeout` s."""
    api = launch_api(database_url, env=env, port=port, args=args, log=log)
    try:
        api.child.wait_ready(http_ok(f"{api.base}/health", status=None), timeout)
    except BaseException:
        api.child.close()
        raise
    return api


@contextmanager
def running_api(database_url: str, **kwargs: object) -> Iterator[ApiProcess]:
    """`start_api` for the block; stopped after it."""
    api = start_api(database_url, **kwargs)  # type: ignore[arg-type]
    try:
        yield api
    finally:
        api.stop()
