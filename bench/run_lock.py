"""How soon a campaign's run lock is free after its holder is killed with SIGKILL.

    .venv/bin/python bench/run_lock.py --url sqlite:////tmp/bench-lock.db
    .venv/bin/python bench/run_lock.py --url postgresql://postgres@127.0.0.1:5432/test

A child process takes the lock (db/run_lock.py) and says so; this process checks it is
refused, kills the child with SIGKILL, waits for it, then tries again until it gets the lock:
the seconds from the kill to the lock (a try includes connecting) and the tries it took.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.engine import make_engine
from db.run_lock import CampaignBusy, hold_campaign

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from db.engine import make_engine
from db.run_lock import hold_campaign
with hold_campaign(make_engine(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def once(url: str, campaign_id: str) -> tuple[float, int]:
    """Kill a holder; (seconds from the kill to the lock, tries)."""
    engine = make_engine(url, poolclass=NullPool)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, campaign_id, str(ROOT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        try:
            with hold_campaign(engine, campaign_id):
                raise SystemExit("the lock was not held by the child")
        except CampaignBusy:
            pass
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        tries = 0
        while time.monotonic() - killed < 30:
            tries += 1
            try:
                with hold_campaign(engine, campaign_id):
                    return time.monotonic() - killed, tries
            except CampaignBusy:
                time.sleep(0.005)
        raise SystemExit("the lock was still held 30 s after its holder was killed")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True, help="database URL (a SQLite file or PostgreSQL)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for index in range(args.repeat):
        seconds, tries = once(args.url, f"bench-lock-{index}")
        print(f"run {index + 1}: free {seconds * 1000:.0f} ms after SIGKILL, {tries} tries")


if __name__ == "__main__":
    main()
