"""Where the database is and how to connect to it: `database_url()` and `make_engine()`.

One settings source (`WXPUSH_DATABASE_URL`, read through config/) for the app, the CLI,
Alembic and the tests.
The default is a SQLite file next to the operator (docs/architecture.md, decision 10);
PostgreSQL is the same code with a different URL. Audience and digest SQL run through their
own connection, `WXPUSH_AUDIENCE_DATABASE_URL` (default: the ledger's URL), ideally a
read-only role (docs/database.md, "Who the audience SQL runs as").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from config import env_var, settings

ENV_VAR = env_var("database_url")
AUDIENCE_ENV_VAR = env_var("audience_database_url")
DEFAULT_SQLITE_FILE = "wxpush.db"
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0


class UnsupportedDatabase(ValueError):
    """The URL names a database wxpush does not support; the message says what to set."""


def database_url(url: str | None = None) -> str:
    """The database URL: `url`, else `$WXPUSH_DATABASE_URL`, else `sqlite:///<cwd>/wxpush.db`.

    `postgresql://` and `postgres://` (what most tools print) become `postgresql+psycopg://`,
    the driver wxpush ships with.
    """
    raw = url or settings().database_url
    if not raw:
        return f"sqlite:///{Path.cwd() / DEFAULT_SQLITE_FILE}"
    for prefix in ("postgresql://", "postgres://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def audience_database_url(url: str | None = None) -> str:
    """The URL audience and digest SQL run through: `url`, else
    `$WXPUSH_AUDIENCE_DATABASE_URL`, else the ledger's `database_url()` (zero configuration
    on SQLite; on PostgreSQL a superuser there is refused, see db/audience_role.py)."""
    raw = url or settings().audience_database_url
    return database_url(raw) if raw else database_url()


def make_audience_engine(url: str | None = None) -> Engine:
    """An engine for the audience SQL (default: `audience_database_url()`) that never pools:
    each audience call gets a fresh session and closing it ends everything the SQL may have
    left behind (advisory locks, session settings, a cancelled statement's state)."""
    return make_engine(audience_database_url(url), poolclass=NullPool)


def display_url(url: str | URL) -> str:
    """The URL with its password masked, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """A sync engine for `url` (default: `database_url()`), tuned for wxpush's workload.

    SQLite: WAL (readers never block the ledger writer), a 30 s busy timeout (several worker
    threads write the ledger), foreign keys on, a pool big enough for the stream plus the
    batch writers. PostgreSQL: session time zone UTC, pre-ping, a modest pool.
    Extra `kwargs` go to `create_engine` (tests use them; the app does not).
    """
    resolved = make_url(database_url(url))
    backend = resolved.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(resolved, **kwargs)
    if backend == "postgresql":
        return _postgresql_engine(resolved, **kwargs)
    raise UnsupportedDatabase(
        f"wxpush supports SQLite and PostgreSQL; {display_url(resolved)} is {backend}. "
        f"Set {ENV_VAR} to sqlite:///path/to/wxpush.db or postgresql://user@host/db."
    )


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    memory = url.database in (None, "", ":memory:")
    options: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
    }
    if not memory and "poolclass" not in kwargs:
        options |= {"pool_size": 8, "max_overflow": 16}
    engine = create_engine(url, **(options | kwargs))

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


def _postgresql_engine(url: URL, **kwargs: Any) -> Engine:
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        # Naive `timestamp` values in a custom audience are read as UTC, like everything else.
        "connect_args": {"options": "-c timezone=UTC"},
    }
    if "poolclass" not in kwargs:
        options |= {"pool_size": 5, "max_overflow": 10, "pool_recycle": 1800}
    if "options" in url.query:
        # The URL already carries libpq options (e.g. a search_path): keep them, add UTC.
        options["connect_args"] = {"options": f"{url.query['options']} -c timezone=UTC"}
    return create_engine(url, **(options | kwargs))
