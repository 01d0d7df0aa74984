"""Alembic environment: the URL and the metadata come from wxpush itself (`db.engine`,
`db.models`), never from an ini file, so `wxpush db upgrade`, the flows and the tests
migrate the same database the app uses.

Concurrent upgrades are serialised: PostgreSQL takes a transaction-level advisory lock,
SQLite runs the whole upgrade in one `BEGIN IMMEDIATE` transaction. The second process
then finds the schema at head and does nothing.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, event, text
from sqlalchemy.pool import NullPool

from db.engine import database_url, make_engine
from db.models import Base

# Any constant: the advisory lock that serialises concurrent upgrades on one PostgreSQL db.
_PG_LOCK_KEY = 0x77787075736800  # "wxpush"

config = context.config


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=sqlite,  # SQLite cannot ALTER most things: copy-and-move tables
        transactional_ddl=True,  # SQLite runs DDL in a transaction too (see module doc)
    )


def run_migrations_online() -> None:
    given: Connection | None = config.attributes.get("connection")
    if given is not None:
        _configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return

    engine = make_engine(config.attributes.get("url") or database_url(), poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        # pysqlite only opens a transaction before INSERT/UPDATE/DELETE, so DDL would run in
        # autocommit; take the write lock explicitly instead.
        @event.listens_for(engine, "connect")
        def _no_implicit_transactions(dbapi_connection: object, _record: object) -> None:
            dbapi_connection.isolation_level = None  # type: ignore[attr-defined]

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY}
                    )
                context.run_migrations()
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=config.attributes.get("url") or database_url(),
        target_metadata=Base.metadata,
        literal_binds=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
