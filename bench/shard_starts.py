"""How a shard could run, measured on a real Prefect server: Prefect task workers.

The chosen route (a `push-campaign-shard` deployment started with `run_deployment` and run
by a process worker) is measured by bench/shards.py and tests/test_campaign_shards.py.
This measures the alternative of Prefect task workers (`prefect task serve`: long-lived
processes that run `task.delay()` calls):

- start latency: from `delay()` to the task's body running, N times, one task worker;
- a SIGKILL of the task worker running a task: the task run's state afterwards, and
  whether a second task worker ever runs it.

    .venv/bin/python -m bench.shard_starts

`--child-serve` is internal: the task worker process.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.campaign.services import prefect_server
from processes import Child, start

ROOT = Path(__file__).resolve().parents[1]


def shard_task_factory() -> Any:
    from prefect import task

    @task(name="bench-shard-task", persist_result=True)
    def shard_task(marker: str, seconds: float) -> float:
        """Writes when it began to `marker`, sleeps `seconds` (a shard sending)."""
        began = time.time()
        Path(marker).write_text(f"{began}")
        time.sleep(seconds)
        return began

    return shard_task


def serve_child() -> None:
    from prefect.task_worker import serve

    serve(shard_task_factory())


def say(line: str) -> None:
    print(line, flush=True)


def wait_for(path: Path, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return float(path.read_text())
        time.sleep(0.01)
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shard_starts")
    parser.add_argument("--child-serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--starts", type=int, default=10)
    args = parser.parse_args(argv)
    if args.child_serve:
        serve_child()
        return
    folder = Path(tempfile.mkdtemp(prefix="wxpush-bench-starts-"))
    children: list[Child] = []
    try:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(prefect_server(folder))
            from prefect.settings import (
                PREFECT_API_URL,
                PREFECT_HOME,
                PREFECT_LOGGING_TO_API_ENABLED,
                PREFECT_RESULTS_PERSIST_BY_DEFAULT,
                temporary_settings,
            )

            stack.enter_context(
                temporary_settings(
                    updates={
                        PREFECT_API_URL: server.api_url,
                        PREFECT_HOME: server.home,
                        PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
                        PREFECT_LOGGING_TO_API_ENABLED: False,  # none to drain at exit
                    }
                )
            )
            env = {
                **server.env(),
                "PYTHONPATH": str(ROOT),
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            }
            argv_ = [sys.executable, "-m", "bench.shard_starts", "--child-serve"]
            for name in ("task-worker-a", "task-worker-b"):
                children.append(
                    start(argv_, name=name, log=folder / f"{name}.log", env=env, cwd=ROOT)
                )
            time.sleep(8)  # both connected
            shard_task = shard_task_factory()
            latencies = []
            for index in range(args.starts):
                marker = folder / f"start-{index}"
                asked = time.time()
                shard_task.delay(str(marker), 0.0)
                began = wait_for(marker, 60)
                if began is not None:
                    latencies.append(began - asked)
            say(
                f"task worker start latency over {len(latencies)} delays: median "
                f"{statistics.median(latencies):.3f} s, max {max(latencies):.3f} s"
            )
            marker = folder / "killed"
            future = shard_task.delay(str(marker), 20.0)
            wait_for(marker, 60)
            import psutil

            runner = None
            for child in children:
                text = (folder / f"{child.name}.log").read_text(errors="replace")
                if "killed" in text or str(future.task_run_id) in text:
                    runner = child
            runner = runner or children[0]
            family = psutil.Process(runner.pid).children(recursive=True)
            runner.send(signal.SIGKILL)
            for process in family:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            killed_at = time.monotonic()
            marker.unlink()
            from prefect.client.orchestration import get_client
            from prefect.utilities.asyncutils import run_coro_as_sync

            async def state() -> Any:
                async with get_client() as client:
                    return (await client.read_task_run(future.task_run_id)).state

            seen = []
            while time.monotonic() - killed_at < 60:
                current = run_coro_as_sync(state())
                name = current.name if current else None
                if not seen or seen[-1][1] != name:
                    seen.append((round(time.monotonic() - killed_at, 1), name))
                time.sleep(1)
            say(f"task run after SIGKILL of its task worker ({runner.name}): states {seen}")
            say(f"run again by the other task worker within 60 s: {marker.exists()}")
    finally:
        for child in children:
            child.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
