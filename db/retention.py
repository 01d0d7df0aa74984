"""Retention: delete ledger rows, callback events and interactions older than a cutoff
(`wxpush db prune --older-than 180d`, docs/database.md "Retention").

What goes, and what stays:

- `deliveries` of campaigns that ENDED (completed, completed_with_failures, cancelled,
  failed) before the cutoff, by `finished_at`. Never those of a running or paused
  campaign: a paused campaign is resumed, and its ledger is what stops a resume from
  messaging the same followers twice. An ended campaign can be resumed too (`wxpush
  campaign resume` / `retry-failed`), so before its first row goes the campaign is marked
  (`ledger_pruned_at`, committed, with its count snapshot refreshed from the ledger) and
  `db.campaigns.create_or_resume` refuses it from then on. The `campaigns` row stays: its
  stored counts are the campaign's history, a few hundred bytes each.
- `callback_events` received before the cutoff.
- `interactions` that occurred before the cutoff, except the latest of each (app_id,
  openid): the interaction window and custom audience SQL (`max(occurred_at)`) need it.

Each chunk selects at most `chunk_size` ids (in id order, after the previous chunk's last)
and deletes them in one statement. The functions that take a
connection never commit (the caller owns the transaction); `prune` takes the engine and runs
each chunk in its own transaction, so a large prune never holds one long transaction or
lock.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import aliased

from db.campaigns import COUNT_KEYS, set_status
from db.ledger import status_counts
from db.models import callback_events, campaigns, deliveries, interactions
from db.outcomes import CampaignStatus
from db.types import utcnow

DEFAULT_CHUNK_SIZE = 5_000
MINIMUM_AGE = timedelta(days=7)
# Ended for good as far as sending goes; `paused` is left out on purpose (it is resumed).
PRUNABLE_STATUSES = (
    CampaignStatus.COMPLETED,
    CampaignStatus.COMPLETED_WITH_FAILURES,
    CampaignStatus.CANCELLED,
    CampaignStatus.FAILED,
)
TABLES = ("deliveries", "callback_events", "interactions")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_DURATION = re.compile(r"([1-9][0-9]{0,5})([hdw])")


class BadDuration(ValueError):
    """`--older-than` is not a number followed by h, d or w."""


def parse_duration(text: str) -> timedelta:
    """`180d`, `12h`, `2w` → a timedelta; anything else raises BadDuration."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise BadDuration(
            f"--older-than {text!r} is not a duration; give a whole number and a unit: "
            "h (hours), d (days) or w (weeks), e.g. 180d, 12h, 2w"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(slots=True)
class PruneResult:
    """Rows deleted (or, in a dry run, that would be) per table, and the campaigns whose
    ledger went."""

    cutoff: datetime
    dry_run: bool
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    campaigns: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The operator's summary, one line."""
        verb = "would delete" if self.dry_run else "deleted"
        tables = ", ".join(f"{self.rows[t]:,} {t}" for t in TABLES)
        return (
            f"Older than {self.cutoff:%Y-%m-%d %H:%M} UTC: {verb} {tables} "
            f"({len(self.campaigns)} ended campaigns' ledgers; their campaign rows are kept)."
        )


# -- the selections --------------------------------------------------------------------------


def _ended_before(cutoff: datetime) -> Any:
    return and_(
        campaigns.c.status.in_([str(s) for s in PRUNABLE_STATUSES]),
        func.coalesce(campaigns.c.finished_at, campaigns.c.updated_at) < cutoff,
    )


def prunable_campaigns(conn: Connection, cutoff: datetime) -> list[str]:
    """Ids of the campaigns that ended before `cutoff` and still have ledger rows."""
    has_rows = exists().where(deliveries.c.campaign_id == campaigns.c.id)
    query = (
        select(campaigns.c.id)
        .where(_ended_before(cutoff), has_rows)
        .order_by(campaigns.c.finished_at, campaigns.c.id)
    )
    return list(conn.execute(query).scalars())


def _old_events(cutoff: datetime) -> Any:
    return callback_events.c.received_at < cutoff


def _old_interactions(cutoff: datetime) -> Any:
    """Older than the cutoff and not the latest of its follower (a newer one exists)."""
    newer = aliased(interactions)
    return and_(
        interactions.c.occurred_at < cutoff,
        exists().where(
            newer.c.app_id == interactions.c.app_id,
            newer.c.openid == interactions.c.openid,
            or_(
                newer.c.occurred_at > interactions.c.occurred_at,
                and_(
                    newer.c.occurred_at == interactions.c.occurred_at,
                    newer.c.id > interactions.c.id,
                ),
            ),
        ),
    )


def count_prunable(conn: Connection, cutoff: datetime) -> PruneResult:
    """What a prune at `cutoff` would delete, counted, nothing changed (the dry run)."""
    ids = prunable_campaigns(conn, cutoff)
    result = PruneResult(cutoff=cutoff, dry_run=True, campaigns=ids)
    ended = select(campaigns.c.id).where(_ended_before(cutoff))
    result.rows["deliveries"] = conn.execute(
        select(func.count()).select_from(deliveries).where(deliveries.c.campaign_id.in_(ended))
    ).scalar_one()
    result.rows["callback_events"] = conn.execute(
        select(func.count()).select_from(callback_events).where(_old_events(cutoff))
    ).scalar_one()
    result.rows["interactions"] = conn.execute(
        select(func.count()).select_from(interactions).where(_old_interactions(cutoff))
    ).scalar_one()
    return result


# -- the writes (each in the caller's transaction) -------------------------------------------


def mark_ledger_pruned(conn: Connection, campaign_id: str, cutoff: datetime) -> bool:
    """Mark the campaign so it is never resumed, and store its counts from the ledger (the
    report's figures once the rows are gone). False when it is no longer prunable (resumed
    meanwhile): then nothing is changed and its rows must stay. Locks the row, as a resume
    does, so the two cannot interleave."""
    row = conn.execute(
        select(campaigns.c.status, campaigns.c.status_reason, campaigns.c.ledger_pruned_at)
        .where(campaigns.c.id == campaign_id, _ended_before(cutoff))
        .with_for_update()
    ).first()
    if row is None:
        return False
    if row.ledger_pruned_at is None:
        counts = status_counts(conn, campaign_id)
        set_status(
            conn,
            campaign_id,
            row.status,
            row.status_reason,
            counts={k: v for k, v in counts.items() if k in COUNT_KEYS},
        )
        conn.execute(
            update(campaigns).where(campaigns.c.id == campaign_id).values(ledger_pruned_at=utcnow())
        )
    return True


@dataclass(frozen=True, slots=True)
class Chunk:
    """One delete: how many rows went, and the highest id looked at (the next chunk starts
    after it, so no chunk walks again past the rows, or dead tuples, of the ones before)."""

    deleted: int
    last_id: int | None


def _chunk(
    conn: Connection, table: Any, condition: Any, chunk_size: int, after: int | None
) -> Chunk:
    query = select(table.c.id).where(condition).order_by(table.c.id).limit(chunk_size)
    if after is not None:
        query = query.where(table.c.id > after)
    ids = list(conn.execute(query).scalars())
    if not ids:
        return Chunk(0, after)
    statement = delete(table).where(table.c.id.in_(ids), condition)
    done = conn.execute(statement.execution_options(preserve_rowcount=True)).rowcount
    return Chunk(int(done), ids[-1])


def delete_ledger_chunk(
    conn: Connection, campaign_id: str, chunk_size: int, after: int | None = None
) -> Chunk:
    """Delete up to `chunk_size` ledger rows (ids above `after`) of a campaign
    `mark_ledger_pruned` marked; an unmarked campaign loses nothing."""
    marked = (
        select(campaigns.c.id)
        .where(campaigns.c.id == campaign_id, campaigns.c.ledger_pruned_at.is_not(None))
        .scalar_subquery()
    )
    return _chunk(conn, deliveries, deliveries.c.campaign_id == marked, chunk_size, after)


def delete_events_chunk(
    conn: Connection, cutoff: datetime, chunk_size: int, after: int | None = None
) -> Chunk:
    """Delete up to `chunk_size` callback events (ids above `after`) received before `cutoff`."""
    return _chunk(conn, callback_events, _old_events(cutoff), chunk_size, after)


def delete_interactions_chunk(
    conn: Connection, cutoff: datetime, chunk_size: int, after: int | None = None
) -> Chunk:
    """Delete up to `chunk_size` interactions (ids above `after`) before `cutoff`, never a
    follower's latest."""
    return _chunk(conn, interactions, _old_interactions(cutoff), chunk_size, after)


# -- the driver ------------------------------------------------------------------------------


def prune(
    engine: Engine,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    now: datetime | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> PruneResult:
    """Delete what is older than `older_than` (the module docstring says what), one
    transaction per chunk; `progress(table, rows)` after each chunk. `dry_run` only counts."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    cutoff = (now or utcnow()) - older_than
    if dry_run:
        with engine.connect() as conn:
            return count_prunable(conn, cutoff)
    with engine.connect() as conn:
        ids = prunable_campaigns(conn, cutoff)
    result = PruneResult(cutoff=cutoff, dry_run=False)
    report = progress or (lambda table, rows: None)

    def drain(table: str, step: Callable[[Connection, int | None], Chunk]) -> None:
        after: int | None = None
        while True:
            with engine.begin() as conn:
                chunk = step(conn, after)
            if chunk.deleted:
                result.rows[table] += chunk.deleted
                report(table, chunk.deleted)
            if chunk.last_id is None or chunk.last_id == after:
                return
            after = chunk.last_id

    for campaign_id in ids:
        with engine.begin() as conn:
            if not mark_ledger_pruned(conn, campaign_id, cutoff):
                continue
        result.campaigns.append(campaign_id)
        drain(
            "deliveries",
            lambda conn, after, c=campaign_id: delete_ledger_chunk(conn, c, chunk_size, after),
        )
    drain(
        "callback_events",
        lambda conn, after: delete_events_chunk(conn, cutoff, chunk_size, after),
    )
    drain(
        "interactions",
        lambda conn, after: delete_interactions_chunk(conn, cutoff, chunk_size, after),
    )
    return result
