"""One run per campaign: a lock a run holds for its whole life, released by the database or
the kernel the moment its holder dies.

`push-campaign` has no concurrency limit, and `create_or_resume` lets a resume of a row still
`running` through (that is how a killed run is continued). Without this lock a second run of
the same campaign (a double-clicked resume) would send alongside the first. The lock must not
outlive its holder, so a crash-resume never waits on a timer:

- PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a connection of its own,
  taken out of the pool and closed (never returned) at the end. The server drops the lock
  when that session ends: at once when the holder's process dies (its socket closes), within
  about two minutes (TCP keepalives set below) when its machine vanishes.
- SQLite file: an exclusive, non-blocking `flock` on `<database>.locks/<campaign id>.lock`.
  flock belongs to the open file, so two runs in one process conflict too; the kernel drops
  it when the process dies. One machine only, as SQLite is (not on NFS).
- SQLite in memory: the database lives in one process, so a process-wide set of held ids.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.engine import URL

from db.models import campaigns

#: Hashed in front of the campaign id: the 64-bit keys live apart from any other advisory
#: lock (db/migrations/env.py's upgrade lock is a constant, not a hash of this prefix).
_PG_NAMESPACE = b"wxpush campaign run\0"
#: The lock connection's server-side keepalives: a holder whose machine vanished without
#: closing its socket is found dead after idle + interval * count = 60 + 10 * 6 s.
_PG_KEEPALIVES = {"tcp_keepalives_idle": 60, "tcp_keepalives_interval": 10}
_PG_KEEPALIVE_COUNT = 6
LOCK_DIR_SUFFIX = ".locks"

_memory_held: set[tuple[str, str]] = set()
_memory_lock = threading.Lock()


class CampaignBusy(RuntimeError):
    """Another run holds the campaign: the message says which and what to do."""

    def __init__(self, campaign_id: str, flow_run_id: str | None) -> None:
        self.campaign_id = campaign_id
        self.flow_run_id = flow_run_id
        super().__init__(
            f"campaign {campaign_id} is being sent by another run "
            f"(flow run {flow_run_id or 'unknown'}): wait for it or cancel it "
            f"(`wxpush campaign cancel {campaign_id}`); a run that died releases it at once"
        )


def advisory_key(campaign_id: str, schema: str = "public") -> int:
    """The campaign's PostgreSQL advisory-lock key: 64 bits of sha256, signed (bigint).
    Advisory locks are per database, so the schema the campaigns table lives in is part of
    the key: two installs in two schemas of one database never refuse each other's runs."""
    digest = hashlib.sha256(_PG_NAMESPACE + f"{schema}\0{campaign_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_file(database: str, campaign_id: str) -> Path:
    """Where a SQLite database's lock for this campaign lives: beside the database file."""
    path = Path(database).absolute()
    return path.with_name(path.name + LOCK_DIR_SUFFIX) / f"{campaign_id}.lock"


@contextlib.contextmanager
def hold_campaign(engine: Engine, campaign_id: str) -> Iterator[None]:
    """Hold the campaign for the `with` block, or raise CampaignBusy at once (never waits)."""
    database = _sqlite_file(engine.url)
    if engine.url.get_backend_name() == "postgresql":
        holder = _hold_postgresql(engine, campaign_id)
    elif database is not None:
        holder = _hold_file(engine, lock_file(database, campaign_id), campaign_id)
    else:
        holder = _hold_in_process(engine, campaign_id)
    with holder:
        yield


def _holder(engine: Engine, campaign_id: str) -> str | None:
    """The flow run the campaign row names (the holder's, bar a moment before it resumes)."""
    try:
        with engine.connect() as conn:
            return conn.execute(
                select(campaigns.c.flow_run_id).where(campaigns.c.id == campaign_id)
            ).scalar()
    except Exception:  # the refusal still says what to do without it
        return None


@contextlib.contextmanager
def _hold_postgresql(engine: Engine, campaign_id: str) -> Iterator[None]:
    conn: Connection = engine.connect()
    # Closed for real at the end, never pooled with a lock held (the pool's reset would
    # not unlock it).
    conn.detach()
    try:
        for name, seconds in _PG_KEEPALIVES.items():
            conn.exec_driver_sql(f"SET {name} = {seconds}")
        conn.exec_driver_sql(f"SET tcp_keepalives_count = {_PG_KEEPALIVE_COUNT}")
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar() or ""
        got = conn.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": advisory_key(campaign_id, schema)}
        ).scalar()
        conn.commit()  # no transaction stays open for the run's life
        if not got:
            raise CampaignBusy(campaign_id, _holder(engine, campaign_id))
        yield
    finally:
        conn.close()  # ends the session, and with it the lock


@contextlib.contextmanager
def _hold_file(engine: Engine, path: Path, campaign_id: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CampaignBusy(campaign_id, _holder(engine, campaign_id)) from None
        yield
    finally:
        os.close(fd)  # closing the last descriptor of the open file releases the flock


@contextlib.contextmanager
def _hold_in_process(engine: Engine, campaign_id: str) -> Iterator[None]:
    key = (str(engine.url), campaign_id)
    with _memory_lock:
        if key in _memory_held:
            raise CampaignBusy(campaign_id, _holder(engine, campaign_id))
        _memory_held.add(key)
    try:
        yield
    finally:
        with _memory_lock:
            _memory_held.discard(key)


def _sqlite_file(url: URL) -> str | None:
    """A SQLite database's file path; None for an in-memory one or another backend."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):  # a URI filename (`?uri=true`)
        database = database[len("file:") :].split("?", 1)[0]
        return None if database in ("", ":memory:") else database
    return database
