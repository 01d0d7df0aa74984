"""The command line: parse the flags, start the services, seed, run the parts, print the report."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import campaign as package
from bench.campaign.ceiling import part_ceiling
from bench.campaign.child import child_main
from bench.campaign.common import PARTS, say
from bench.campaign.e2e import part_e2e
from bench.campaign.map import part_map
from bench.campaign.population import seed_population
from bench.campaign.profiling import part_profile
from bench.campaign.rate import part_rate
from bench.campaign.report import print_tables, report_json
from bench.campaign.results import Report
from bench.campaign.rss import part_rss
from bench.campaign.services import Bench, bench_database, prefect_server
from db.engine import make_engine
from wechat.simulator.process import start_simulator


def int_list(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v.strip()]


def grid_list(value: str) -> list[tuple[int, int]]:
    pairs = []
    for item in value.split(","):
        batch, _, concurrency = item.strip().partition("x")
        pairs.append((int(batch), int(concurrency)))
    return pairs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.campaign", description=(package.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {','.join(PARTS)}")
    parser.add_argument("--sizes", type=int_list, default=[10_000, 100_000])
    parser.add_argument(
        "--grid",
        type=grid_list,
        default=grid_list("500x16,1000x16,2000x16,1000x32,2000x32"),
        help="batch_size x concurrency pairs tried at the first size",
    )
    parser.add_argument(
        "--top", type=int, default=2, help="grid configurations run at the other sizes"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each configuration at the other sizes, a ceiling run between each two; "
        "the goals use the medians",
    )
    parser.add_argument("--ceiling-messages", type=int, default=20_000)
    parser.add_argument("--rates", type=int_list, default=[50, 200])
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--rss-sizes", type=int_list, default=[100_000, 1_000_000])
    parser.add_argument("--map-size", type=int, default=2_000)
    parser.add_argument("--map-workers", type=int, default=16)
    parser.add_argument("--database-url", default=None, help="PostgreSQL server (default SQLite)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="per part")
    parser.add_argument("--max-seed-seconds", type=float, default=600.0)
    parser.add_argument("--profile-dir", default=None, help="add a py-spy profiled e2e run")
    parser.add_argument("--json-out", default=None, help="also write the JSON to this file")
    parser.add_argument("--keep-temp", action="store_true", help="keep logs and the database")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    return args


def population_need(args: argparse.Namespace) -> int:
    """Sendable recipients of the simulator's app that the chosen parts use."""
    need = [0]
    if "ceiling" in args.parts:
        need.append(args.ceiling_messages)
    if "e2e" in args.parts:
        need.extend(args.sizes)
    if "rate" in args.parts:
        need.extend(max(2, int(r * args.rate_seconds)) for r in args.rates)
    if "map" in args.parts:
        need.append(args.map_size)
    return max(need)


def conditions(bench: Bench) -> dict[str, Any]:
    return {
        "database": bench.engine.dialect.name,
        "cores": os.cpu_count(),
        "prefect_server": "prefect server start (subprocess, temp PREFECT_HOME, SQLite)",
        "simulator": "python -m wechat.simulator, faults off",
        "python": sys.version.split()[0],
        "started": datetime.now().isoformat(timespec="seconds"),
    }


PART_FUNCTIONS: dict[str, Callable[[Bench, float], None]] = {
    "ceiling": part_ceiling,
    "e2e": part_e2e,
    "rate": part_rate,
    "rss": part_rss,
    "map": part_map,
}


def run(args: argparse.Namespace) -> Report:
    report = Report()
    folder = Path(tempfile.mkdtemp(prefix="wxpush-bench-"))
    say(f"temporary files: {folder}")
    try:
        with contextlib.ExitStack() as stack:
            say("starting the simulator, a Prefect server and the database …")
            sim = stack.enter_context(start_simulator(extra_args=["--daily-quota", "1000000000"]))
            server = stack.enter_context(prefect_server(folder))
            db_url = stack.enter_context(bench_database(args.database_url, folder))
            engine = make_engine(db_url)
            stack.callback(engine.dispose)
            bench = Bench(args, folder, sim, server, db_url, engine, report)
            report.conditions = conditions(bench)
            say(f"  simulator {sim.base_url}, Prefect API {server.api_url}, {engine.dialect.name}")
            need = population_need(args)
            if need:
                say(f"seeding {need:,} sendable recipients (+ simulator followers) …")
                seed_deadline = time.monotonic() + args.max_seed_seconds
                seed_population(bench, sim.app_id, need, register=True, deadline=seed_deadline)
            for part in PARTS:
                if part in args.parts:
                    PART_FUNCTIONS[part](bench, time.monotonic() + args.max_seconds)
            if args.profile_dir:
                part_profile(bench, time.monotonic() + args.max_seconds)
    finally:
        if args.keep_temp:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(*args.child)
        return
    started = time.monotonic()
    report = run(args)
    print_tables(report)
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    say(f"\ntotal {time.monotonic() - started:,.0f} s; this process peak RSS {own_rss:,.0f} MiB")
    payload = report_json(report)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, separators=(",", ":")), flush=True)
