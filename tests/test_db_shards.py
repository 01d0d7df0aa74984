"""Shards in the database: the audience split by md5(openid) in SQL (disjoint, whole, the
same as `shard_of`), refused on SQLite; the `campaign_shards` rows that let only the run a
shard was given send it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from db import shards as shard_rows
from db.audience import (
    DEFAULT_AUDIENCE_SQL,
    AudienceQueryError,
    Shard,
    count_audience,
    shard_of,
    stream_audience,
)
from db.campaigns import create_or_resume
from db.seed import seed_recipients

APP = "wx-shards"


def _seed(engine: Engine, count: int) -> None:
    with engine.begin() as conn:
        seed_recipients(conn, app_id=APP, count=count, seed=3)


def _openids(audience: Engine, ledger: Engine, shard: Shard | None) -> list[str]:
    batches = stream_audience(
        audience,
        DEFAULT_AUDIENCE_SQL,
        {"app_id": APP},
        ledger=ledger,
        campaign_id="c-shards",
        window_hours=0,
        now=datetime.now(UTC),
        batch_size=97,
        shard=shard,
    )
    return [row.openid for batch in batches for row in batch]


def test_shards_are_disjoint_whole_and_match_shard_of(
    db_backend: str, db_engine: Engine, audience_engine: Engine
) -> None:
    if db_backend != "postgresql":
        pytest.skip("shards need PostgreSQL; the SQLite refusal has its own test")
    _seed(db_engine, 600)
    everyone = _openids(audience_engine, db_engine, None)
    assert len(everyone) == 600
    for count in (2, 3):
        parts = [_openids(audience_engine, db_engine, Shard(k, count)) for k in range(count)]
        seen = [openid for part in parts for openid in part]
        assert sorted(seen) == sorted(everyone)  # whole, and nobody twice
        for k, part in enumerate(parts):
            assert part, f"shard {k} of {count} is empty"
            assert {shard_of(openid, count) for openid in part} == {k}
            counted = count_audience(
                audience_engine, DEFAULT_AUDIENCE_SQL, {"app_id": APP}, shard=Shard(k, count)
            )
            assert counted == len(part)


def test_shards_on_sqlite_are_refused(
    db_backend: str, db_engine: Engine, audience_engine: Engine
) -> None:
    if db_backend != "sqlite":
        pytest.skip("the refusal is SQLite's")
    _seed(db_engine, 10)
    with pytest.raises(AudienceQueryError, match="needs PostgreSQL"):
        _openids(audience_engine, db_engine, Shard(0, 2))
    with pytest.raises(AudienceQueryError, match="needs PostgreSQL"):
        count_audience(audience_engine, DEFAULT_AUDIENCE_SQL, {"app_id": APP}, shard=Shard(1, 2))


def test_shard_must_exist() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Shard(2, 2)


def _campaign(engine: Engine) -> str:
    with engine.begin() as conn:
        return create_or_resume(
            conn,
            campaign_id=None,
            name="sharded",
            app="default",
            kind="template",
            template_id="t",
            parameters={},
            audience_sql=DEFAULT_AUDIENCE_SQL,
        ).id


def test_only_the_assigned_run_sends_a_shard(db_backend: str, db_engine: Engine) -> None:
    if db_backend != "postgresql":
        pytest.skip("shards need PostgreSQL")
    campaign_id = _campaign(db_engine)
    with db_engine.begin() as conn:
        shard_rows.prepare(conn, campaign_id, 2, stale_after=10)
        shard_rows.assign(conn, campaign_id, 0, "run-a")
    with db_engine.begin() as conn, pytest.raises(shard_rows.ShardTaken, match="run-a"):
        shard_rows.claim(conn, campaign_id, 0, "run-b", "host:2")  # a second run of shard 0
    with db_engine.begin() as conn, pytest.raises(shard_rows.ShardTaken, match="no run"):
        shard_rows.claim(conn, campaign_id, 1, "run-b", "host:2")  # shard 1 given to nobody
    with db_engine.begin() as conn:
        shard_rows.claim(conn, campaign_id, 0, "run-a", "host:1")
        assert shard_rows.beat(conn, campaign_id, 0, "run-a")
    # Running and beating: a new parent run may not take it over.
    taken = pytest.raises(shard_rows.ShardTaken, match="still being sent by flow run run-a")
    with db_engine.begin() as conn, taken:
        shard_rows.prepare(conn, campaign_id, 2, stale_after=10)
    with db_engine.begin() as conn:
        # The parent's verdict: crashed. The old run's heartbeat and ending are refused.
        assert shard_rows.mark_crashed(conn, campaign_id, 0, "run-a", "no heartbeat")
        shard_rows.assign(conn, campaign_id, 0, "run-c")
        assert not shard_rows.beat(conn, campaign_id, 0, "run-a")
        assert not shard_rows.finish(conn, campaign_id, 0, "run-a", "completed", None)
        shard_rows.claim(conn, campaign_id, 0, "run-c", "host:3")
        assert shard_rows.finish(
            conn, campaign_id, 0, "run-c", "completed", None, sent=5, errcodes={"0": 5}
        )
    with db_engine.connect() as conn:
        first, second = shard_rows.read_shards(conn, campaign_id)
    assert (first.status, first.runs, first.worker, first.sent) == ("completed", 2, "host:3", 5)
    assert first.heartbeat_age is not None and first.heartbeat_age >= 0
    assert (second.status, second.flow_run_id, second.runs) == ("starting", None, 0)
    with db_engine.begin() as conn:
        shard_rows.prepare(conn, campaign_id, 1, stale_after=10)  # fewer shards on a resume
        assert [r.shard for r in shard_rows.read_shards(conn, campaign_id)] == [0]
