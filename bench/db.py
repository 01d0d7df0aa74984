"""Database figures: ledger upsert rows/s and audience streaming (first batch, rows/s, RSS).

    .venv/bin/python bench/db.py --url sqlite:///bench.db
    .venv/bin/python bench/db.py --url postgresql://postgres@127.0.0.1:5432/test --stream 1000000

Ledger: 500-row batches, one transaction each (as a campaign run flushes its answers),
first as new rows (status failed) then as answers to the same rows (sent: the ON CONFLICT
path). It compares db.ledger.record_outcomes with the same upsert through SQLAlchemy
Core, as a driver executemany and as one multi-VALUES statement. Stream: seeds N
recipients once (app `bench-N`), then streams the default audience with a 48-hour window in
batches of 500.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Connection, Engine, and_, case, func, or_, text
from sqlalchemy.dialects import postgresql, sqlite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import overridden
from db import ledger
from db.audience import DEFAULT_AUDIENCE_SQL, stream_audience
from db.campaigns import create_or_resume
from db.engine import make_engine
from db.migrate import upgrade
from db.models import deliveries
from db.outcomes import DeliveryOutcome, DeliveryStatus
from db.seed import seed_recipients

FIELDS = (
    "openid",
    "status",
    "reason",
    "errcode",
    "errmsg",
    "error_class",
    "msgid",
    "client_msg_id",
    "attempts",
    "first_attempt_at",
    "last_attempt_at",
    "sent_at",
)
Recorder = Callable[[Connection, str, Sequence[DeliveryOutcome]], Any]


def _outcomes(prefix: str, n: int, status: DeliveryStatus) -> list[DeliveryOutcome]:
    now = datetime.now(UTC)
    sent = status == DeliveryStatus.SENT
    return [
        DeliveryOutcome(
            openid=f"{prefix}{i:06d}",
            status=status,
            msgid=3662956322040938501 + i if sent else None,
            client_msg_id=f"c-{prefix}{i}",
            errcode=None if sent else -1,
            errmsg=None if sent else "system error",
            error_class=None if sent else "RETRY",
            attempts=1,
            first_attempt_at=now,
            last_attempt_at=now,
            sent_at=now if sent else None,
        )
        for i in range(n)
    ]


def _core_upsert(dialect: str, rows: list[dict[str, Any]] | None) -> Any:
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect](deliveries)
    if rows is not None:
        insert = insert.values(rows)
    new, old = insert.excluded, deliveries.c
    changes: dict[str, Any] = {
        n: new[n] for n in ("status", "reason", "errcode", "errmsg", "error_class")
    }
    changes |= {n: func.coalesce(new[n], old[n]) for n in ("msgid", "client_msg_id", "sent_at")}
    changes["attempts"] = old.attempts + new.attempts
    changes["first_attempt_at"] = case(
        (old.first_attempt_at.is_(None), new.first_attempt_at),
        (new.first_attempt_at.is_(None), old.first_attempt_at),
        (new.first_attempt_at < old.first_attempt_at, new.first_attempt_at),
        else_=old.first_attempt_at,
    )
    changes["last_attempt_at"] = func.coalesce(new.last_attempt_at, old.last_attempt_at)
    changes["updated_at"] = new.updated_at
    return insert.on_conflict_do_update(
        index_elements=[old.campaign_id, old.openid],
        set_=changes,
        where=or_(old.status == "pending", and_(old.status == "failed", new.status != "pending")),
    )


def _dicts(campaign_id: str, batch: Sequence[DeliveryOutcome]) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {"campaign_id": campaign_id, **{k: getattr(o, k) for k in FIELDS}}
        | {"status": str(o.status), "updated_at": now}
        for o in batch
    ]


def core_executemany(conn: Connection, campaign_id: str, batch: Sequence[DeliveryOutcome]) -> None:
    conn.execute(_core_upsert(conn.dialect.name, None), _dicts(campaign_id, batch))


def core_multivalues(conn: Connection, campaign_id: str, batch: Sequence[DeliveryOutcome]) -> None:
    conn.execute(_core_upsert(conn.dialect.name, _dicts(campaign_id, batch)))


def bench_ledger(engine: Engine, batches: int) -> None:
    modes: tuple[tuple[str, Recorder], ...] = (
        ("wxpush record_outcomes", ledger.record_outcomes),
        ("Core executemany", core_executemany),
        ("Core multi-VALUES", core_multivalues),
    )
    for label, record in modes:
        campaign = f"bench-{time.time_ns()}"
        with engine.begin() as conn:
            create_or_resume(
                conn,
                campaign_id=campaign,
                name="bench",
                app="bench",
                kind="template",
                template_id="T",
                parameters={},
                audience_sql="SELECT 1",
            )
        for phase, status in (("insert", DeliveryStatus.FAILED), ("update", DeliveryStatus.SENT)):
            data = [_outcomes(f"o{b:04d}-", 500, status) for b in range(batches)]
            started = time.perf_counter()
            for batch in data:
                with engine.begin() as conn:
                    record(conn, campaign, batch)
            took = time.perf_counter() - started
            print(
                f"{engine.dialect.name:10} ledger {label:22} {phase:6}: "
                f"{batches * 500 / took:>8,.0f} rows/s ({took / batches * 1000:5.1f} ms per batch)"
            )


def bench_stream(engine: Engine, n: int) -> None:
    app = f"bench-{n}"
    with engine.connect() as conn:
        have = conn.execute(
            text("SELECT count(*) FROM recipients WHERE app_id = :a"), {"a": app}
        ).scalar()
    if have != n:
        started = time.perf_counter()
        with engine.begin() as conn:
            seeded = seed_recipients(conn, app_id=app, count=n, replace=True)
        print(
            f"{engine.dialect.name:10} seed {n:,} recipients + {seeded.interactions:,} "
            f"interactions: {time.perf_counter() - started:.1f} s"
        )
    process = psutil.Process()
    before = process.memory_info().rss
    peak, rows, first = before, 0, None
    started = time.perf_counter()
    for batch in stream_audience(
        engine,
        DEFAULT_AUDIENCE_SQL,
        {"app_id": app},
        ledger=engine,
        campaign_id="bench-stream",
        window_hours=48,
        now=datetime.now(UTC),
        batch_size=500,
        timeout_seconds=300,
    ):
        if first is None:
            first = time.perf_counter() - started
        rows += len(batch)
        if rows % 20_000 < 500:
            peak = max(peak, process.memory_info().rss)
    took = time.perf_counter() - started
    print(
        f"{engine.dialect.name:10} stream {rows:,} rows: first batch {first or 0:.2f} s, "
        f"{rows / took:,.0f} rows/s, RSS {before / 1e6:.0f} → peak {peak / 1e6:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="database URL (it gets the wxpush schema)")
    parser.add_argument("--batches", type=int, default=40, help="500-row ledger batches")
    parser.add_argument("--stream", type=int, nargs="*", default=[100_000], help="audience sizes")
    args = parser.parse_args()
    # The stream's speed on the URL given, often a superuser; campaigns run the audience SQL
    # as a read-only role (docs/database.md), which reads at the same speed.
    upgrade(args.url)
    engine = make_engine(args.url)
    try:
        bench_ledger(engine, args.batches)
        with overridden(allow_superuser_audience=True):
            for n in args.stream:
                bench_stream(engine, n)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
