"""One SQLAlchemy engine per process for the flows and tasks (its pool is shared by threads),
and one for the audience SQL (`WXPUSH_AUDIENCE_DATABASE_URL`, never pooled)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import Engine

from db.engine import audience_database_url, database_url, make_audience_engine, make_engine

_engines: dict[tuple[str, str], Engine] = {}
_lock = threading.Lock()


def engine(url: str | None = None) -> Engine:
    """The ledger engine for `url` (default: WXPUSH_DATABASE_URL), created once per process."""
    key = url or database_url()
    return _cached(("ledger", key), lambda: make_engine(key))


def audience_engine(url: str | None = None) -> Engine:
    """The engine audience and digest SQL run through (default: WXPUSH_AUDIENCE_DATABASE_URL,
    else the ledger's URL): a separate, unpooled connection per call (db/audience_role.py)."""
    key = audience_database_url(url)
    return _cached(("audience", key), lambda: make_audience_engine(key))


def _cached(key: tuple[str, str], create: Callable[[], Engine]) -> Engine:
    with _lock:
        found = _engines.get(key)
        if found is None:
            found = _engines[key] = create()
        return found


def dispose_all() -> None:
    """Close every pooled connection (tests; a process about to fork)."""
    with _lock:
        for item in _engines.values():
            item.dispose()
        _engines.clear()
