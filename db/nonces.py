"""The receivers' shared replay memory: table `callback_nonces`, one row per signed push that
some receiver process stored.

A captured push replayed within the timestamp window carries a valid signature; only its
(timestamp, nonce) gives it away. Each process keeps a cache of the pairs it has seen
(receiver/replay.py), but a replay sent to another process is decided here:

- `claim` inserts the keys `ON CONFLICT DO NOTHING` and returns the ones it inserted; a key
  it did not insert was claimed before, so that push is a replay. It runs in the caller's
  transaction, the one that stores the pushes (receiver/writer.py): a key is committed if
  and only if its push is, so a push whose write failed stays receivable (WeChat may retry
  it with the same timestamp and nonce), and a push that was stored is refused again by
  every process. Two processes claiming one key at once: PostgreSQL makes the second insert
  wait for the first transaction, then skips it (committed) or inserts it (rolled back).
  Keys are inserted in sorted order, so two batches never wait on each other in a cycle.
- `forget_before` deletes rows older than a cutoff, a bounded number at a time; the
  receivers call it every second or so with a cutoff two timestamp windows back, beyond
  which the timestamp check refuses a replay by itself, and so does the push API (api/),
  whose request nonces live here too. Whoever calls it, no key younger than
  MIN_RETENTION_SECONDS goes: a receiver configured with a short window must not forget
  the API's keys (two of its 300 s windows) early.

The key is the SHA-256 of "app_id, timestamp, nonce" in hex (64 characters, the column's
width): unkeyed, so every process computes the same one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from db.types import sqlite_text, utcnow

Executor = Connection | Session

_CHUNK = 500  # keys per multi-row SQLite statement
#: Keys are kept at least this long, whoever prunes: two of the push API's 300 s windows.
MIN_RETENTION_SECONDS = 600

_PG_CLAIM = (
    "INSERT INTO callback_nonces (key, seen_at) "
    "SELECT k, %b FROM unnest(%b::text[]) AS t(k) ORDER BY k "
    "ON CONFLICT (key) DO NOTHING RETURNING key"
)
_PG_FORGET = (
    "DELETE FROM callback_nonces WHERE key IN ("
    "SELECT key FROM callback_nonces WHERE seen_at < %b ORDER BY seen_at LIMIT %b "
    "FOR UPDATE SKIP LOCKED)"
)
_SQLITE_FORGET = (
    "DELETE FROM callback_nonces WHERE key IN ("
    "SELECT key FROM callback_nonces WHERE seen_at < ? ORDER BY seen_at LIMIT ?)"
)


def replay_key(app_id: str, timestamp: str, nonce: str) -> str:
    """The row key of one signed request: the same in every process."""
    return hashlib.sha256(f"{app_id}\n{timestamp}\n{nonce}".encode()).hexdigest()


def _connection(executor: Executor) -> Connection:
    return executor.connection() if isinstance(executor, Session) else executor


def claim(executor: Executor, keys: Iterable[str], now: datetime | None = None) -> set[str]:
    """Insert `keys` (in the caller's transaction); returns those that were not there yet.
    A key missing from the answer belongs to a push already stored: a replay."""
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    connection = _connection(executor)
    seen_at = now or utcnow()
    if connection.dialect.name == "postgresql":
        result = connection.exec_driver_sql(_PG_CLAIM, (seen_at, wanted))
        return {key for (key,) in result}
    stamp = sqlite_text(seen_at)
    claimed: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        rows = ", ".join("(?, ?)" for _ in chunk)
        result = connection.exec_driver_sql(
            f"INSERT INTO callback_nonces (key, seen_at) VALUES {rows} "
            "ON CONFLICT (key) DO NOTHING RETURNING key",
            tuple(value for key in chunk for value in (key, stamp)),
        )
        claimed.update(key for (key,) in result)
    return claimed


def forget_before(executor: Executor, cutoff: datetime, limit: int) -> int:
    """Delete at most `limit` keys seen before `cutoff`; returns how many went. On
    PostgreSQL rows another receiver is deleting are skipped, not waited for. A cutoff
    later than MIN_RETENTION_SECONDS ago is moved back to it."""
    cutoff = min(cutoff, utcnow() - timedelta(seconds=MIN_RETENTION_SECONDS))
    connection = _connection(executor)
    if connection.dialect.name == "postgresql":
        result = connection.exec_driver_sql(_PG_FORGET, (cutoff, limit))
    else:
        result = connection.exec_driver_sql(_SQLITE_FORGET, (sqlite_text(cutoff), limit))
    return int(result.rowcount or 0)
