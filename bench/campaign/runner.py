"""The child runner, parent side: run one campaign or map flow in a child process
(`python -m bench.campaign --child MODE SPEC OUT`), reap it with wait4 for its peak RSS and CPU,
kill it at the part's deadline, and attach py-spy around its flow call when profiling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.campaign.common import ROOT
from bench.campaign.results import ChildAnswer
from bench.campaign.services import Bench
from processes import Child, start


class Profiler:
    """py-spy attached to a child only around its flow call: the child touches `ready` just
    before the flow and waits for `go`, so imports and setup stay out of the profile."""

    def __init__(self, output: Path, stem: Path) -> None:
        self.output = output
        self.stem = stem
        self.ready = Path(f"{stem}.ready")
        self.go = Path(f"{stem}.go")
        self.py_spy: Child | None = None

    def poll(self, child_pid: int) -> None:
        """Start py-spy once the child is ready, then let the child go."""
        if self.py_spy is not None or not self.ready.exists():
            return
        py_spy = Path(sys.executable).with_name("py-spy")
        argv = [str(py_spy), "record", "--pid", str(child_pid), "--rate", "200"]
        argv += ["--format", "raw", "--threads", "--nonblocking", "--output", str(self.output)]
        self.py_spy = start(argv, name="py-spy", log=Path(f"{self.stem}.py-spy.log"))
        time.sleep(1.0)  # py-spy attaches in well under a second
        self.go.touch()

    def finish(self) -> None:
        """py-spy stops when the child exits; wait for it to write the profile."""
        if self.py_spy is None:
            return
        try:
            self.py_spy.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.py_spy.stop(timeout=5)


def wait_child(child: Child, deadline: float, profiler: Profiler | None = None) -> tuple[Any, bool]:
    """Reap the child with wait4 (its own rusage: peak RSS, CPU); SIGTERM its group at
    `deadline`, SIGKILL 10 s later."""
    timed_out = False
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            child.process.returncode = os.waitstatus_to_exitcode(status)
            return usage, timed_out
        if profiler is not None:
            profiler.poll(child.pid)
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            child.send(signal.SIGTERM)
            deadline = time.monotonic() + 10  # then SIGKILL
        elif timed_out and time.monotonic() > deadline:
            child.send(signal.SIGKILL)
        time.sleep(0.05)


def run_child(
    bench: Bench, mode: str, spec: dict[str, Any], deadline: float, profile: Path | None = None
) -> ChildAnswer:
    """`python -m <bench.child_module> --child MODE SPEC OUT`, optionally profiled by py-spy."""
    bench.children += 1
    stem = bench.folder / f"child-{bench.children:02d}-{mode}"
    spec_path, out_path, log_path = (Path(f"{stem}{s}") for s in (".in.json", ".out.json", ".log"))
    profiler = None if profile is None else Profiler(profile, stem)
    if profiler is not None:
        spec = {**spec, "ready_file": str(profiler.ready), "go_file": str(profiler.go)}
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, "-m", bench.child_module, "--child", mode]
    argv += [str(spec_path), str(out_path)]
    started = time.perf_counter()
    child = start(argv, name=f"{mode} child", log=log_path, env=bench.child_env(), cwd=ROOT)
    try:
        usage, timed_out = wait_child(child, deadline, profiler)
    finally:
        if child.process.returncode is None:  # interrupted: leave nothing behind
            child.stop(timeout=5)
        if profiler is not None:
            profiler.finish()
    wall = time.perf_counter() - started
    payload = json.loads(out_path.read_text()) if out_path.exists() else None
    return ChildAnswer(
        payload=payload,
        returncode=child.process.returncode,
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        max_rss=usage.ru_maxrss * 1024,  # KiB on Linux
        timed_out=timed_out,
        log_tail=child.log_tail(3000),
    )
