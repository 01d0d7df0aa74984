"""Who the audience SQL runs as: the tables it may read, the superuser refusal, SQLite's
authorizer, and the PostgreSQL login role `wxpush db audience-role` creates.

The audience and digest SQL is written by an operator and runs through its own connection
(`WXPUSH_AUDIENCE_DATABASE_URL`, db/engine.py). On PostgreSQL the privileges of that login
decide what the SQL can touch, so wxpush gives it a role that may only SELECT the audience
tables and refuses to run it as a superuser unless `WXPUSH_ALLOW_SUPERUSER_AUDIENCE=1`. SQLite
has no roles: there an authorizer on the audience connection refuses everything but reads of
tables other than wxpush's ledger (docs/database.md, "Who the audience SQL runs as").
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from config import env_var, settings
from db.models import Base

#: The tables audience and digest SQL are meant to read (the digest reads both).
AUDIENCE_TABLES = ("recipients", "interactions")
#: wxpush's tables and views that are not for audiences: the ledger, the campaigns, the raw
#: callbacks, the reference table, the analyst views, Alembic's bookkeeping.
LEDGER_TABLES = tuple(
    sorted(
        {
            *Base.metadata.tables,
            "campaign_stats",
            "delivery_failures",
            "api_message_stats",
            "alembic_version",
        }
        - set(AUDIENCE_TABLES)
    )
)
ALLOW_SUPERUSER_ENV = env_var("allow_superuser_audience")
DEFAULT_ROLE_NAME = "wxpush_audience"
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def superuser_allowed() -> bool:
    """Whether the operator allowed audience SQL to run as a PostgreSQL superuser."""
    return settings().allow_superuser_audience


def superuser_behind(connection: Connection) -> str | None:
    """The superuser role the session's user is or can become (SET ROLE to a superuser it is
    a member of), or None. PostgreSQL only."""
    found = connection.execute(
        text(
            "SELECT r.rolname FROM pg_roles AS r "
            "WHERE r.rolsuper AND pg_has_role(current_user, r.oid, 'MEMBER') "
            "ORDER BY r.rolname = current_user DESC, r.rolname LIMIT 1"
        )
    ).scalar()
    return str(found) if found is not None else None


def superuser_refusal(role: str, user: str) -> str:
    """The one-line message for audience SQL that would run as a superuser."""
    who = user if role == user else f"{user} (a member of the superuser {role})"
    return (
        f"the audience SQL would run as the PostgreSQL superuser {who}; run "
        "`wxpush db audience-role` and set WXPUSH_AUDIENCE_DATABASE_URL to the URL it prints, "
        f"or set {ALLOW_SUPERUSER_ENV}=1 to allow it"
    )


# -- SQLite ---------------------------------------------------------------------------------------

_SQLITE_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_SQLITE_DENIED_TABLES = frozenset(LEDGER_TABLES)


def sqlite_authorizer(
    action: int, arg1: str | None, _arg2: str | None, _db: str | None, _source: str | None
) -> int:
    """SQLite's stand-in for a read-only role, called when a statement is prepared (not per
    row): SELECTs, functions and recursive CTEs are allowed, and reads of any table except
    wxpush's ledger tables, SQLite's own (`sqlite_*`) and PRAGMA table functions; everything
    else (writes, ATTACH, PRAGMA, DDL, transactions) is refused."""
    if action == sqlite3.SQLITE_READ:
        table = (arg1 or "").lower()
        if table in _SQLITE_DENIED_TABLES or table.startswith(("sqlite_", "pragma_")):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


# -- the PostgreSQL role --------------------------------------------------------------------------


class AudienceRoleError(RuntimeError):
    """The role cannot be set up; the message says why in an operator's words."""


@dataclass(frozen=True, slots=True)
class AudienceRole:
    """What `ensure_audience_role` did. `url` carries the password: print it once, never log."""

    name: str
    schema: str
    created: bool
    granted: tuple[str, ...]
    url: str


def ensure_audience_role(
    admin: Engine, name: str = DEFAULT_ROLE_NAME, password: str | None = None
) -> AudienceRole:
    """Create (or bring back in line) a PostgreSQL login role that may only SELECT the
    audience tables of the schema `admin`'s URL reaches, and return the URL to log in as it.

    Idempotent: an existing role keeps its name, gets the password (a new random one unless
    given), loses every attribute beyond LOGIN and any privilege on wxpush's other tables.
    The password reaches the server only as a SCRAM hash, so a statement log never holds it.
    """
    if admin.dialect.name != "postgresql":
        raise AudienceRoleError("database roles exist on PostgreSQL only")
    if not _ROLE_NAME.fullmatch(name):
        raise AudienceRoleError(
            f"role name {name!r} is not allowed; use lower-case letters, digits and _ "
            "(at most 63, not starting with a digit)"
        )
    password = password or secrets.token_urlsafe(24)
    quoted = f'"{name}"'
    with admin.begin() as connection:
        schema = connection.execute(
            text(
                "SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n "
                "ON n.oid = c.relnamespace WHERE c.oid = to_regclass('recipients')"
            )
        ).scalar()
        if schema is None:
            raise AudienceRoleError(
                "the database has no recipients table; run `wxpush db upgrade` first"
            )
        created = not connection.execute(
            text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": name}
        ).scalar()
        raw = connection.connection.driver_connection
        hashed = raw.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256")
        secret = hashed.decode().replace("'", "''")
        attributes = (
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
            f"PASSWORD '{secret}'"
        )
        verb = "CREATE ROLE" if created else "ALTER ROLE"
        connection.exec_driver_sql(f"{verb} {quoted} {attributes}")
        # A second lock: every transaction of this role starts read-only.
        connection.exec_driver_sql(f"ALTER ROLE {quoted} SET default_transaction_read_only = on")
        database = connection.execute(text("SELECT current_database()")).scalar_one()
        connection.exec_driver_sql(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {quoted}")
        connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {quoted}")
        present = set(
            connection.execute(
                text(
                    "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = :schema"
                ),
                {"schema": schema},
            ).scalars()
        )
        granted = tuple(t for t in AUDIENCE_TABLES if t in present)
        revoked = [t for t in LEDGER_TABLES if t in present]
        if revoked:
            names = ", ".join(f"{_ident(schema)}.{_ident(t)}" for t in revoked)
            connection.exec_driver_sql(f"REVOKE ALL ON {names} FROM {quoted}")
        names = ", ".join(f"{_ident(schema)}.{_ident(t)}" for t in granted)
        connection.exec_driver_sql(f"GRANT SELECT ON {names} TO {quoted}")
    url = make_url(admin.url).set(username=name, password=password)
    return AudienceRole(
        name=name,
        schema=str(schema),
        created=created,
        granted=granted,
        url=url.render_as_string(hide_password=False),
    )


def _ident(name: str) -> str:
    """A quoted SQL identifier (database and schema names come from the server)."""
    return '"' + name.replace('"', '""') + '"'
