"""The frequency cap's question per audience batch, on a large ledger: ms per batch, and the plan.

    .venv/bin/python bench/frequency_cap.py --url sqlite:///bench-cap.db
    .venv/bin/python bench/frequency_cap.py --url postgresql+psycopg://postgres@127.0.0.1:5432/test

Seeds (once per database) `--campaigns` campaigns of one account, each sent to the same
`--rows / --campaigns` followers on a different day before now (the ledger of an account
that messages its whole base regularly), then asks `db.audience.capped_openids` about
batches of 500 followers with a cap of 1 per 24 h, as a campaign's stream does per batch.
Prints the median and worst batch and the database's plan for the question.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.audience import CAPPED_STATUSES, FrequencyCap, capped_openids
from db.engine import make_engine
from db.migrate import upgrade
from db.models import campaigns, deliveries

APP_ID = "wxbenchcap000001"
APP = "bench-cap"
BATCH = 500


def _seed(engine: Engine, rows: int, count: int, now: datetime) -> int:
    """The ledger: `count` campaigns × `rows // count` followers, campaign i sent i days ago
    (plus an hour, so only the newest campaign falls in a 24-hour window)."""
    followers = rows // count
    with engine.begin() as conn:
        have = conn.execute(
            select(func.count()).select_from(deliveries).where(deliveries.c.openid.like("ob%"))
        ).scalar_one()
        if have >= followers * count:
            return followers
        for i in range(count):
            campaign_id = f"bench-cap-{i}"
            conn.execute(
                insert(campaigns).values(
                    id=campaign_id,
                    name=campaign_id,
                    app=APP,
                    app_id=APP_ID,
                    kind="template",
                    audience_sql="SELECT openid FROM recipients",
                    status="completed",
                    parameters={},
                )
            )
            at = now - timedelta(days=i, hours=1)
            values = [
                {
                    "campaign_id": campaign_id,
                    "openid": f"ob{n:07d}",
                    "status": CAPPED_STATUSES[0],
                    "attempts": 1,
                    "first_attempt_at": at,
                    "last_attempt_at": at,
                    "sent_at": at,
                    "updated_at": at,
                }
                for n in range(followers)
            ]
            for start in range(0, len(values), 5000):
                conn.execute(insert(deliveries), values[start : start + 5000])
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return followers


def _plan(engine: Engine, cap: FrequencyCap, now: datetime) -> list[str]:
    """The database's plan for one batch's question: the statement capped_openids runs, with
    its parameters, explained on the driver's connection right after it ran."""
    plans: list[str] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        raw = conn.connection.driver_connection
        prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
        rows = raw.execute(prefix + statement, parameters).fetchall()
        plans.extend(str(row[-1]) if conn.dialect.name == "sqlite" else row[0] for row in rows)

    openids = [f"ob{n:07d}" for n in range(BATCH)]
    event.listen(engine, "after_cursor_execute", explain)
    try:
        with engine.connect() as conn:
            capped_openids(conn, cap, "bench-new", openids, now=now)
    finally:
        event.remove(engine, "after_cursor_execute", explain)
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="sqlite:///bench-cap.db")
    parser.add_argument("--rows", type=int, default=100_000, help="ledger rows")
    parser.add_argument("--campaigns", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    upgrade(args.url)
    engine = make_engine(args.url)
    now = datetime.now(UTC)
    followers = _seed(engine, args.rows, args.campaigns, now)
    cap = FrequencyCap(messages=1, hours=24, app_id=APP_ID, app=APP)
    times: list[float] = []
    capped = 0
    with engine.connect() as conn:
        for b in range(args.batches):
            start = (b * BATCH) % max(followers - BATCH, 1)
            openids = [f"ob{n:07d}" for n in range(start, start + BATCH)]
            began = time.perf_counter()
            capped += len(capped_openids(conn, cap, "bench-new", openids, now=now))
            times.append((time.perf_counter() - began) * 1000)
    print(
        f"{engine.dialect.name}: ledger {followers * args.campaigns:,} rows "
        f"({args.campaigns} campaigns × {followers:,} followers)"
    )
    print(
        f"  batches of {BATCH}: median {statistics.median(times):.1f} ms, "
        f"worst {max(times):.1f} ms; {capped:,} of {args.batches * BATCH:,} capped"
    )
    print("  plan:")
    for line in _plan(engine, cap, now):
        print(f"    {line if len(line) <= 140 else line[:139] + '…'}")
    engine.dispose()


if __name__ == "__main__":
    main()
