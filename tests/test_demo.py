"""`wxpush demo` (what `make demo` runs) runs a campaign end to end and leaves no process
behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest


@pytest.mark.timeout(240)
def test_demo_sends_a_message_and_stops_what_it_started(tmp_path: Path) -> None:
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
    assert "# Campaign demo order shipped" in done.stdout
    assert "/runs/flow-run/" in done.stdout
    assert (tmp_path / ".wxpush" / "prefect" / "prefect.db").exists(), "run history is kept"
    assert _started_in(tmp_path, exclude=before) == []


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
