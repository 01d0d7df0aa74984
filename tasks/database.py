"""One SQLAlchemy engine per process for the flows and tasks (its pool is shared by threads)."""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from db.engine import database_url, make_engine

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine(url: str | None = None) -> Engine:
    """The engine for `url` (default: WXPUSH_DATABASE_URL), created once per process."""
    key = url or database_url()
    with _lock:
        found = _engines.get(key)
        if found is None:
            found = _engines[key] = make_engine(key)
        return found


def dispose_all() -> None:
    """Close every pooled connection (tests; a process about to fork)."""
    with _lock:
        for item in _engines.values():
            item.dispose()
        _engines.clear()
