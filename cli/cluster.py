"""What `wxpush serve --workers N --database-url postgresql://…` needs beyond one machine's
defaults: where the Prefect server keeps its own database, that database (and the ledger's)
created when missing, and the checks that refuse a cluster that cannot work.

With a PostgreSQL ledger, Prefect runs on PostgreSQL too (docs/scaling.md, "PostgreSQL
everywhere: a local cluster"): by default in a database of its own beside the ledger's,
named `<ledger database>_prefect`, on the same server and as the same user.
"""

from __future__ import annotations

import re

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from cli.errors import OperatorError
from db.engine import display_url

#: The database PostgreSQL always has, to create another one from.
MAINTENANCE_DATABASE = "postgres"
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,62}")


def is_postgresql(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def check_workers(workers: int, ledger_url: str) -> None:
    """More than one worker stands for more than one machine, and machines cannot share a
    SQLite file: refused with how to fix it."""
    if workers > 1 and not is_postgresql(ledger_url):
        raise OperatorError(
            f"--workers {workers} needs a PostgreSQL ledger (the workers stand for separate "
            "machines, which cannot share a SQLite file): add "
            "--database-url postgresql://user@host:5432/wxpush, or use --workers 1"
        )


def prefect_database_url(ledger_url: str, explicit: str | None) -> str | None:
    """The URL the Prefect server should use (`postgresql+asyncpg://…`, or `sqlite+aiosqlite`
    for a `sqlite:///` one given explicitly), or None for Prefect's own default: SQLite under
    its home, as today. Explicit beats `PREFECT_SERVER_DATABASE_CONNECTION_URL`, which beats
    the database beside a PostgreSQL ledger."""
    if explicit:
        return _prefect_driver(make_url(explicit))
    if prefect_database_configured():
        return None  # the server inherits the operator's own choice
    if not is_postgresql(ledger_url):
        return None
    ledger = make_url(ledger_url)
    name = f"{ledger.database or 'wxpush'}_prefect"
    return _prefect_driver(ledger.set(database=name, query={}))


def prefect_database_configured() -> bool:
    """Did the operator choose Prefect's database (PREFECT_SERVER_DATABASE_CONNECTION_URL, its
    older PREFECT_API_ name, or a Prefect profile), rather than leave Prefect's default?"""
    from prefect.settings import get_current_settings

    return "connection_url" in get_current_settings().server.database.model_fields_set


def _prefect_driver(url: URL) -> str:
    backend = url.get_backend_name()
    if backend == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    else:
        raise OperatorError(
            f"--prefect-database-url {display_url(url)}: Prefect runs on PostgreSQL or SQLite; "
            "use postgresql://user@host:5432/prefect"
        )
    return url.render_as_string(hide_password=False)


def ensure_database(url: str, what: str) -> bool:
    """Create the PostgreSQL database `url` names unless it exists (True if created); a
    database that cannot be reached or created is one line naming it (`what`: whose it is)."""
    target = make_url(url)
    if target.get_backend_name() != "postgresql":
        return False
    name = target.database or ""
    sync = target.set(drivername="postgresql+psycopg")
    try:
        _connect(sync)
        return False
    except DBAPIError as exc:
        if f'database "{name}" does not exist' not in str(exc.orig):
            raise OperatorError(
                f"cannot reach {what}'s database {display_url(target)}: {_reason(exc)}"
            ) from None
    if not _DATABASE_NAME.fullmatch(name):
        raise OperatorError(
            f"{what}'s database name {name!r} is not one wxpush creates; create it yourself"
        )
    admin = create_engine(
        sync.set(database=MAINTENANCE_DATABASE, query={}),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",  # CREATE DATABASE cannot run in a transaction
    )
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except DBAPIError as exc:
        raise OperatorError(
            f"cannot create {what}'s database {display_url(target)}: {_reason(exc)}; create "
            f"it yourself (createdb {name}) or name another one"
        ) from None
    finally:
        admin.dispose()
    return True


def _connect(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def _reason(exc: DBAPIError) -> str:
    """The server's own words (host, port, role or database names; never a password)."""
    words = " ".join(str(exc.orig).split())
    return words.split("FATAL:", 1)[-1].strip() or type(exc.orig).__name__


def audience_warning(ledger_url: str) -> str | None:
    """What campaigns will refuse, said at start-up instead of in the first run's failure:
    audience SQL as a PostgreSQL superuser, when no audience URL is set and it is not
    allowed (db/audience_role.py)."""
    from config import settings
    from db.audience_role import superuser_allowed, superuser_behind, superuser_refusal
    from db.engine import make_engine

    if not is_postgresql(ledger_url) or settings().audience_database_url:
        return None
    if superuser_allowed():
        return None
    engine = make_engine(ledger_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            role = superuser_behind(connection)
            user = connection.execute(text("SELECT current_user")).scalar_one()
    finally:
        engine.dispose()
    return None if role is None else f"campaigns will fail: {superuser_refusal(role, str(user))}"
