"""`wxpush demo` (what `make demo` runs) runs a campaign end to end, the receiver counts the
simulator's delivery receipts, and it leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.waiting import wait_until


@pytest.mark.process
@pytest.mark.timeout(240)
def test_demo_closes_the_loop_and_stops_what_it_started(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.process_iter()}
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "client-home")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Demo finished." in done.stdout
    match = re.search(r"simulator accepted (\d+) messages; the ledger says (\d+) sent", done.stdout)
    assert match, done.stdout[-3000:]
    assert int(match.group(1)) == int(match.group(2)) > 500, "1,000 seeded, most eligible"
    sent = int(match.group(2))
    receipts = _receipts(done.stdout)
    assert receipts["not yet received"] == 0, f"the demo waits for every receipt: {receipts}"
    assert (
        receipts["delivered"] + receipts["blocked by the user"] + receipts["failed in WeChat"]
        == sent
    ), receipts
    assert receipts["delivered"] > sent * 0.8, receipts
    assert receipts["blocked by the user"] > 0 and receipts["failed in WeChat"] > 0, receipts
    rate = re.search(
        r"\*\*Delivery rate:\*\* (\d+\.\d)% \((\d+) delivered of the (\d+)", done.stdout
    )
    assert rate, done.stdout[-3000:]
    assert int(rate.group(2)) == receipts["delivered"] and int(rate.group(3)) == sent
    assert abs(float(rate.group(1)) - 100 * receipts["delivered"] / sent) <= 0.051
    assert (tmp_path / ".wxpush" / "logs" / "receiver.log").exists(), "a receiver ran"
    assert "# Campaign demo order shipped" in done.stdout
    assert "/runs/flow-run/" in done.stdout
    assert (tmp_path / ".wxpush" / "prefect" / "prefect.db").exists(), "run history is kept"
    assert _started_in(tmp_path, exclude=before) == []


@pytest.mark.process
@pytest.mark.timeout(240)
def test_sigterm_stops_a_demo_kept_running_and_everything_it_started(tmp_path: Path) -> None:
    """`wxpush demo --keep-running` under a service manager or `kill`: SIGTERM unwinds like
    Ctrl-C (its default would end the demo and orphan the simulator, server and receiver)."""
    before = {p.pid for p in psutil.process_iter()}
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "client-home")}
    env.pop("PREFECT_API_URL", None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "demo", "--keep-running"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # the demo's own output, until it says it keeps running
            if "Everything keeps running" in line:
                break
        else:
            raise AssertionError(f"the demo ended with {demo.wait()} before it kept running")
        started = _started_in(tmp_path, exclude=before)
        assert len(started) >= 3, f"simulator, Prefect server and receiver run: {started}"
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "Stopping." in rest, rest[-3000:]
    assert "Traceback" not in rest, rest[-3000:]
    wait_until(
        lambda: _started_in(tmp_path, exclude=before) == [],
        "every process the demo started has ended",
        timeout=30,
        poll=0.2,
    )


def _receipts(report: str) -> dict[str, int]:
    """The report's "Delivery receipts" table: label → messages."""
    rows = re.findall(
        r"^\| (delivered|blocked by the user|failed in WeChat|not yet received) \| (\d+) \|$",
        report,
        re.MULTILINE,
    )
    assert len(rows) == 4, report[-3000:]
    return {label: int(n) for label, n in rows}


def _started_in(folder: Path, exclude: set[int]) -> list[list[str]]:
    """Command lines of new processes whose working directory is `folder`."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid in exclude:
            continue
        try:
            if Path(proc.cwd()) == folder:
                found.append(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found
