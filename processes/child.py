"""Start a child process, wait until it answers, stop it with its group and descendants.

A child runs in a session (so a process group) of its own, with stdout and stderr in one log:
a file the caller names, or an anonymous temporary file gone when the child is closed (a
file, not a pipe, so a chatty child never blocks on a full pipe). Stopping sends SIGTERM to
the group and to every descendant (a Prefect worker starts flow runs in sessions of their
own), waits, then SIGKILLs what lingers, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx
import psutil


class ChildFailed(RuntimeError):
    """A child exited or did not answer in time. The message is one line naming the child
    and its log (what the CLI prints); the log's tail is attached as a note (tracebacks and
    pytest show it)."""

    def __init__(self, child: Child, reason: str) -> None:
        where = f"; see {child.log_path}" if child.log_path else ""
        super().__init__(f"{child.name} {reason}{where}")
        self.name = child.name
        self.returncode = child.process.returncode
        self.tail = child.log_tail()
        if self.tail:
            self.add_note(f"--- the last lines of {child.name}'s output ---\n{self.tail}")


@dataclass(eq=False)
class Child:
    """A running child process and its log; `close()` (or leaving `with`) stops it."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None
    group: bool = True
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """Everything the child printed so far."""
        if self._log is not None:
            with contextlib.suppress(OSError, ValueError):
                fd = self._log.fileno()  # pread: the child's write offset stays where it is
                return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
            return ""
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def send(self, signum: int) -> None:
        """Signal the child's group (or the child alone, when it has none). It does not reap:
        a caller waiting with os.wait4 still gets the child's rusage."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def wait_ready(self, ready: Callable[[], bool], timeout: float, poll: float = 0.1) -> None:
        """Return once `ready()` is true; ChildFailed if the child exits or `timeout` s pass."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ChildFailed(self, f"exited with code {self.process.returncode}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise ChildFailed(self, f"not healthy after {timeout:.0f} s")
            time.sleep(poll)

    def stop(self, timeout: float = 10.0) -> float:
        """SIGTERM the group and every descendant, wait up to `timeout` s, SIGKILL what
        lingers. Returns the seconds the child took to exit (0 if it already had)."""
        family = _descendants(self.process.pid)
        started = time.monotonic()
        if self.process.poll() is not None and not family:
            return 0.0
        self.send(signal.SIGTERM)
        for descendant in family:
            with contextlib.suppress(psutil.Error):
                descendant.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.process.wait(timeout=5)
        took = time.monotonic() - started
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for descendant in alive:
            with contextlib.suppress(psutil.Error):
                descendant.kill()
        psutil.wait_procs(alive, timeout=5)
        return took

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child and drop an anonymous log."""
        try:
            self.stop(timeout)
        finally:
            if self._log is not None:
                self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def start(
    argv: Sequence[str],
    *,
    name: str,
    log: Path | None = None,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | str | None = None,
    group: bool = True,
) -> Child:
    """Start `argv` (not waited for). `env` is laid over this process's environment (None
    removes a variable); output goes to `log`, or to an anonymous temporary file."""
    merged = {**os.environ}  # a copy for the child: this process's environment is untouched
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    anonymous = None if log is not None else tempfile.TemporaryFile()  # noqa: SIM115
    with contextlib.ExitStack() as stack:
        out = anonymous if log is None else stack.enter_context(log.open("wb"))
        process = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=merged,
            cwd=cwd,
            start_new_session=group,
        )
    return Child(name, process, log, group, anonymous)


def start_ready(
    argv: Sequence[str],
    *,
    name: str,
    ready: Callable[[], bool],
    timeout: float = 60.0,
    poll: float = 0.1,
    log: Path | None = None,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | str | None = None,
) -> Child:
    """`start`, returned once `ready()` is true; stopped, and ChildFailed raised, if it exits
    or does not get there in `timeout` s."""
    child = start(argv, name=name, log=log, env=env, cwd=cwd)
    try:
        child.wait_ready(ready, timeout, poll)
    except BaseException:
        child.close()
        raise
    return child


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    *,
    name: str,
    ready: Callable[[], bool],
    timeout: float = 60.0,
    log: Path | None = None,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | str | None = None,
) -> Iterator[Child]:
    """`start_ready` for the duration of the block, stopped (group and descendants) after."""
    child = start_ready(argv, name=name, ready=ready, timeout=timeout, log=log, env=env, cwd=cwd)
    with child:
        yield child


def http_ok(url: str, status: int | None = 200) -> Callable[[], bool]:
    """A readiness check: GET `url` answers `status` (any status, when None)."""

    def check() -> bool:
        try:
            answer = httpx.get(url, timeout=2.0)
        except httpx.HTTPError:
            return False
        return status is None or answer.status_code == status

    return check
