"""The shards of a campaign split across workers (`shards` > 1): who sends which part.

One `campaign_shards` row per (campaign, shard). The parent run prepares the rows and
assigns each shard the flow run it started (`assign`); that run claims its row (`claim`)
and only it may beat, finish or lose it, so two runs of one shard never send at once: a
second run of a shard whose row names another run is refused, and a run the parent
declared crashed finds its heartbeat refused and stops. Times are the database's clock
(`now()`), so workers on other machines need no synchronised clocks. PostgreSQL only, like
sharding itself. Every function takes the connection first and never commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects import postgresql

from db.models import campaign_shards

#: A shard's run is sending (or about to) and owns its row.
LIVE = ("starting", "running")
#: How a shard's run ended, as it reports it (plus `crashed`, the parent's verdict).
ENDINGS = ("completed", "paused", "failed", "cancelled")


class ShardTaken(RuntimeError):
    """Another flow run owns this shard; this one must not send it."""


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """A snapshot of a `campaign_shards` row; `heartbeat_age` is seconds since its last
    heartbeat on the database's clock (None: never beat)."""

    campaign_id: str
    shard: int
    shards: int
    status: str
    reason: str | None
    flow_run_id: str | None
    runs: int
    worker: str | None
    heartbeat_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    sent: int
    http_attempts: int
    errcodes: dict[str, Any]
    heartbeat_age: float | None = None


def _age() -> Any:
    return func.extract("epoch", func.now() - campaign_shards.c.heartbeat_at).label("heartbeat_age")


def read_shards(conn: Connection, campaign_id: str) -> list[ShardRecord]:
    """The campaign's shard rows, by shard."""
    rows = conn.execute(
        select(campaign_shards, _age())
        .where(campaign_shards.c.campaign_id == campaign_id)
        .order_by(campaign_shards.c.shard)
    )
    names = [f.name for f in fields(ShardRecord)]
    return [
        ShardRecord(**{name: getattr(row, name) for name in names if name in row._fields})
        for row in rows
    ]


def prepare(conn: Connection, campaign_id: str, shards: int, *, stale_after: float) -> None:
    """Make the campaign's rows the `shards` of this parent run, none owned yet.

    Refuses (ShardTaken) when a shard still has a live run that beat less than
    `stale_after` seconds ago: an earlier parent's shard is still sending, and starting
    the same shard again would send it twice at once."""
    for record in read_shards(conn, campaign_id):
        age = record.heartbeat_age
        if record.status in LIVE and age is not None and age < stale_after:
            raise ShardTaken(
                f"shard {record.shard} of campaign {campaign_id} is still being sent by flow "
                f"run {record.flow_run_id} (its heartbeat is {age:.0f} s old); wait for it to "
                "end or cancel it, then run the campaign again"
            )
    conn.execute(
        delete(campaign_shards).where(
            campaign_shards.c.campaign_id == campaign_id, campaign_shards.c.shard >= shards
        )
    )
    fresh = {
        "shards": shards,
        "status": "starting",
        "reason": None,
        "flow_run_id": None,
        "runs": 0,
        "worker": None,
        "heartbeat_at": None,
        "started_at": None,
        "finished_at": None,
        "sent": 0,
        "http_attempts": 0,
        "errcodes": {},
    }
    statement = postgresql.insert(campaign_shards).values(
        [{"campaign_id": campaign_id, "shard": shard, **fresh} for shard in range(shards)]
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[campaign_shards.c.campaign_id, campaign_shards.c.shard],
            set_={key: statement.excluded[key] for key in fresh},
        )
    )


def assign(conn: Connection, campaign_id: str, shard: int, flow_run_id: str) -> None:
    """Give the shard to the flow run the parent just started (a first run or a re-run)."""
    conn.execute(
        update(campaign_shards)
        .where(campaign_shards.c.campaign_id == campaign_id, campaign_shards.c.shard == shard)
        .values(
            flow_run_id=flow_run_id,
            status="starting",
            reason=None,
            runs=campaign_shards.c.runs + 1,
            heartbeat_at=None,
            finished_at=None,
        )
    )


def _owned(campaign_id: str, shard: int, flow_run_id: str) -> Any:
    return (
        campaign_shards.c.campaign_id == campaign_id,
        campaign_shards.c.shard == shard,
        campaign_shards.c.flow_run_id == flow_run_id,
    )


def claim(conn: Connection, campaign_id: str, shard: int, flow_run_id: str, worker: str) -> None:
    """The shard's run starts sending: its row says `running`, where, and beats now.
    Raises ShardTaken when the row names another run (or none), or has ended."""
    done = conn.execute(
        update(campaign_shards)
        .where(*_owned(campaign_id, shard, flow_run_id), campaign_shards.c.status.in_(LIVE))
        .values(status="running", worker=worker, heartbeat_at=func.now(), started_at=func.now())
        .execution_options(preserve_rowcount=True)
    ).rowcount
    if done == 1:
        return
    row = conn.execute(
        select(campaign_shards.c.flow_run_id, campaign_shards.c.status).where(
            campaign_shards.c.campaign_id == campaign_id, campaign_shards.c.shard == shard
        )
    ).first()
    if row is None:
        raise ShardTaken(
            f"campaign {campaign_id} has no shard {shard}: start it from its push-campaign run"
        )
    owner = "no run" if row.flow_run_id is None else f"flow run {row.flow_run_id}"
    raise ShardTaken(
        f"shard {shard} of campaign {campaign_id} belongs to {owner} ({row.status}); "
        "only the run its push-campaign run started may send it"
    )


def beat(conn: Connection, campaign_id: str, shard: int, flow_run_id: str) -> bool:
    """A heartbeat of the shard's run; False when the run no longer owns the shard (the
    parent declared it crashed and started another): it must stop sending."""
    done = conn.execute(
        update(campaign_shards)
        .where(*_owned(campaign_id, shard, flow_run_id), campaign_shards.c.status == "running")
        .values(heartbeat_at=func.now())
        .execution_options(preserve_rowcount=True)
    ).rowcount
    return done == 1


def finish(
    conn: Connection,
    campaign_id: str,
    shard: int,
    flow_run_id: str,
    status: str,
    reason: str | None,
    *,
    sent: int = 0,
    http_attempts: int = 0,
    errcodes: Mapping[str, int] | None = None,
) -> bool:
    """Record how the shard's run ended (one of ENDINGS), if it still owns the shard."""
    if status not in ENDINGS:
        raise ValueError(f"a shard ends {', '.join(ENDINGS)}, not {status!r}")
    done = conn.execute(
        update(campaign_shards)
        .where(*_owned(campaign_id, shard, flow_run_id), campaign_shards.c.status.in_(LIVE))
        .values(
            status=status,
            reason=reason,
            finished_at=func.now(),
            sent=sent,
            http_attempts=http_attempts,
            errcodes=dict(errcodes or {}),
        )
        .execution_options(preserve_rowcount=True)
    ).rowcount
    return done == 1


def mark_crashed(
    conn: Connection, campaign_id: str, shard: int, flow_run_id: str, reason: str
) -> bool:
    """The parent's verdict on a run that stopped beating or died without ending: crashed,
    and no longer the shard's owner's to finish (its late writes are refused)."""
    done = conn.execute(
        update(campaign_shards)
        .where(*_owned(campaign_id, shard, flow_run_id), campaign_shards.c.status.in_(LIVE))
        .values(status="crashed", reason=reason, finished_at=func.now())
        .execution_options(preserve_rowcount=True)
    ).rowcount
    return done == 1
