"""The bench audience: seeded recipients (and simulator followers) until the audience SQL has
enough rows, and the rows a bare loop reads before it starts."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, text

from bench.campaign.common import ELIGIBLE_SHARE, audience_sql, say
from bench.campaign.services import Bench
from cli.seed import follower_payload
from db.seed import analyze, seed_recipients


def eligible_count(engine: Engine, app_id: str) -> int:
    sql = f"SELECT count(*) FROM ({audience_sql(10**9)}) AS q"
    with engine.connect() as conn:
        return int(conn.execute(text(sql), {"app_id": app_id}).scalar_one())


class SeedTimeUp(Exception):
    """Raised from seed_recipients' chunk callback when `--max-seed-seconds` is over."""


def seed_population(
    bench: Bench, app_id: str, need: int, *, register: bool, deadline: float
) -> int:
    """Seed until the audience SQL has `need` rows (or time is up); returns how many it has.

    One `seed_recipients` call per round (a new seed value each: disjoint openids), committed
    chunk by chunk so a time-out keeps what was written. With `register`, every chunk also
    becomes followers in the simulator (as `wxpush seed --simulator-url` does).
    """
    have = eligible_count(bench.engine, app_id)
    round_ = 0
    while have < need and time.monotonic() < deadline:
        count = math.ceil((need - have) / ELIGIBLE_SHARE)
        started = time.perf_counter()
        written = seed_round(bench, app_id, count, 1000 + round_, register, deadline)
        seconds = time.perf_counter() - started
        have = eligible_count(bench.engine, app_id)
        bench.report.seeding.append(
            {"app_id": app_id, "rows": written, "seconds": round(seconds, 1), "eligible": have}
        )
        say(
            f"  seeded {written:,} recipients of {app_id} in {seconds:.1f} s "
            f"({written / seconds:,.0f}/s{', + simulator followers' if register else ''}); "
            f"{have:,} sendable"
        )
        round_ += 1
    return have


def seed_round(
    bench: Bench, app_id: str, count: int, seed: int, register: bool, deadline: float
) -> int:
    """One `seed_recipients` call, committed after every chunk (its callback commits the
    connection opened below), stopped at `deadline`; returns the rows written."""
    written = 0

    def on_chunk(chunk: Sequence[Any]) -> None:
        nonlocal written
        if register:
            bench.sim.admin.add_followers(follower_payload(r) for r in chunk)
        written += len(chunk)
        conn.commit()
        if time.monotonic() > deadline:
            raise SeedTimeUp

    with bench.engine.connect() as conn:
        try:
            seed_recipients(conn, app_id=app_id, count=count, seed=seed, on_chunk=on_chunk)
        except SeedTimeUp:
            analyze(conn)  # seed_recipients' own ANALYZE did not run: the campaigns need it
        conn.commit()
    return written


def audience_rows(engine: Engine, app_id: str, n: int) -> list[dict[str, Any]]:
    """The first `n` audience rows, read before a bare loop starts (the loop has no DB)."""
    with engine.connect() as conn:
        result = conn.execute(text(audience_sql(n)), {"app_id": app_id}).mappings()
        return [dict(row) for row in result]
