"""One campaign on one run vs split across workers: `shards=1` against `shards=2`.

Starts the simulator, a Prefect server, a scratch PostgreSQL schema with N recipients (and
the same followers in the simulator), deploys prefect.yaml's push-campaign-shard entry on a
pool of its own and starts two `prefect worker start --limit 1` processes on it. Then runs
the same campaign (every recipient, no rate limit) alternately with shards=1 and shards=2,
the push-campaign run in this process each time (so the workers' slots are the shards'),
and prints per run: the run's wall time and messages/s over it, the send span (first to
last accepted send, the `campaign_stats` view's figure), and how long each shard's run took
from its creation to its first heartbeat (a worker polling, the flow-run process starting).

    .venv/bin/python -m bench.shards --recipients 20000 --repeat 2

Everything shares this machine's cores: the simulator, the Prefect server, PostgreSQL and
the workers. Said so in the README beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.campaign.common import TEMPLATE_DATA
from bench.campaign.services import bench_database, prefect_server
from cli.deploy import deploy_one_on_pool, worker_argv
from cli.seed import follower_payload
from config import overridden
from db.engine import audience_database_url, make_engine
from db.seed import seed_recipients
from processes import Child, start
from wechat.simulator.defaults import DEMO_TEMPLATE_ID
from wechat.simulator.process import start_simulator

ROOT = Path(__file__).resolve().parents[1]
APP = "bench-shards"
POOL = "bench-shards"


def say(line: str) -> None:
    print(line, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__)
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each shard count")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=2.0,
        help="the workers' PREFECT_WORKER_QUERY_SECONDS (Prefect's default is 10)",
    )
    parser.add_argument(
        "--database-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server; the bench works in a scratch schema, dropped at the end",
    )
    return parser.parse_args(argv)


def seed(engine: Engine, sim: Any, count: int) -> None:
    with engine.begin() as conn:
        seed_recipients(
            conn,
            app_id=sim.app_id,
            count=count,
            seed=5,
            on_chunk=lambda chunk: sim.admin.add_followers(follower_payload(r) for r in chunk),
        )


async def setup_app(sim: Any) -> None:
    from cli.setup import asetup_app

    await asetup_app(
        APP,
        app_id=sim.app_id,
        app_secret=sim.app_secret,
        api_base_url=sim.base_url,
        daily_quota=1_000_000_000,
    )


def run_once(engine: Engine, shards: int, args: argparse.Namespace, index: int) -> dict[str, Any]:
    from flows.campaign import push_campaign
    from tasks.params import CampaignParams

    params = CampaignParams(
        name=f"bench shards={shards} #{index}",
        app=APP,
        template_id=DEMO_TEMPLATE_ID,
        data=dict(TEMPLATE_DATA),
        window_hours=0,
        shards=shards,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
    )
    state = asyncio.run(push_campaign(params, return_state=True))
    result = state.result()
    with engine.connect() as conn:
        span = conn.execute(
            text(
                "SELECT extract(epoch FROM max(sent_at) - min(sent_at)) FROM deliveries "
                "WHERE campaign_id = :c AND status = 'sent'"
            ),
            {"c": result.campaign_id},
        ).scalar()
        starts = conn.execute(
            text(
                "SELECT s.shard, extract(epoch FROM s.started_at - c.started_at), s.worker "
                "FROM campaign_shards s JOIN campaigns c ON c.id = s.campaign_id "
                "WHERE s.campaign_id = :c ORDER BY s.shard"
            ),
            {"c": result.campaign_id},
        ).all()
    sent = result.counts.get("sent", 0)
    return {
        "shards": shards,
        "status": str(result.status),
        "sent": sent,
        "seconds": result.seconds,
        "msg_per_s_run": round(sent / result.seconds, 1) if result.seconds else None,
        "send_span_s": round(float(span), 2) if span else None,
        "msg_per_s_span": round(sent / float(span), 1) if span else None,
        "shard_started_after_s": [round(float(row[1]), 1) for row in starts],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="wxpush-bench-shards-"))
    workers: list[Child] = []
    rows: list[dict[str, Any]] = []
    try:
        with contextlib.ExitStack() as stack:
            say("starting the simulator, a Prefect server and a PostgreSQL schema …")
            sim = stack.enter_context(start_simulator(extra_args=["--daily-quota", "1000000000"]))
            server = stack.enter_context(prefect_server(folder))
            db_url = stack.enter_context(bench_database(args.database_url, folder))
            audience = audience_database_url()
            stack.enter_context(overridden(database_url=db_url, audience_database_url=audience))
            engine = make_engine(db_url)
            stack.callback(engine.dispose)
            from prefect.settings import (
                PREFECT_API_URL,
                PREFECT_LOGGING_TO_API_ENABLED,
                temporary_settings,
            )

            # No run logs shipped: at exit Prefect would drain them to a server already gone.
            updates = {PREFECT_API_URL: server.api_url, PREFECT_LOGGING_TO_API_ENABLED: False}
            stack.enter_context(temporary_settings(updates=updates))
            say(f"seeding {args.recipients:,} recipients and simulator followers …")
            seed(engine, sim, args.recipients)
            asyncio.run(setup_app(sim))
            env = {
                **server.env(),
                "WXPUSH_DATABASE_URL": db_url,
                "WXPUSH_AUDIENCE_DATABASE_URL": audience,
                "WXPUSH_HOME": str(ROOT),
                "PYTHONPATH": str(ROOT),
                "PREFECT_WORKER_QUERY_SECONDS": str(args.poll_seconds),
            }
            say("deploying push-campaign-shard and starting two workers (--limit 1) …")
            deploy_one_on_pool("push-campaign-shard", POOL, env=env)
            for name in ("bench-worker-a", "bench-worker-b"):
                argv_ = [*worker_argv(POOL), "--type", "process", "--limit", "1", "--name", name]
                workers.append(start(argv_, name=name, log=folder / f"{name}.log", env=env))
            time.sleep(args.poll_seconds + 3)  # both workers polling before the first run
            for index in range(args.repeat):
                for shards in (1, 2):
                    row = run_once(engine, shards, args, index)
                    rows.append(row)
                    say(json.dumps(row))
    finally:
        for child in workers:
            child.close()
        shutil.rmtree(folder, ignore_errors=True)
    say(
        "\n| shards | run | sent | run wall (s) | msg/s over the run | send span (s) "
        "| msg/s over the span | shard runs started after (s) |"
    )
    say("|---|---|---|---|---|---|---|---|")
    for index, row in enumerate(rows):
        say(
            f"| {row['shards']} | {index // 2 + 1} | {row['sent']:,} | {row['seconds']:.1f} | "
            f"{row['msg_per_s_run']:,} | {row['send_span_s']} | {row['msg_per_s_span']:,} | "
            f"{', '.join(str(s) for s in row['shard_started_after_s']) or '—'} |"
        )
    say(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main(sys.argv[1:])
