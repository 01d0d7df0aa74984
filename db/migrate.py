"""Bring a database to the current schema: `upgrade()`, used by `wxpush db upgrade`, `wxpush
seed`, the campaign flow's startup check and the tests.

The Alembic scripts live inside the package (`db/migrations`), located from this file rather
than from the working directory, so an installed wxpush migrates from anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.pool import NullPool

from db.engine import database_url, display_url, make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What `upgrade` did: the revision before and after (None = an empty database)."""

    url: str
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        """One line for an operator."""
        where = display_url(self.url)
        if not self.changed:
            return f"{where}: already at the latest schema ({self.after})."
        start = self.before or "an empty database"
        return f"{where}: upgraded from {start} to {self.after}."


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts and at `url` (default: the app's)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    # Passed as an attribute, not a main option: configparser would mangle a '%' in a password.
    config.attributes["url"] = database_url(url)
    return config


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        raise RuntimeError(f"no migration scripts found in {MIGRATIONS_DIR}")
    return head


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None: never migrated)."""
    engine = make_engine(database_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str | None = None) -> MigrationResult:
    """Migrate the database at `url` (default: `WXPUSH_DATABASE_URL`) to the newest schema.

    Cheap when there is nothing to do (one query), so callers may run it at every start.
    Safe to run from several processes at once (see db/migrations/env.py).
    """
    resolved = database_url(url)
    before = current_revision(resolved)
    if before == head_revision():
        return MigrationResult(resolved, before, before)
    command.upgrade(alembic_config(resolved), "head")
    return MigrationResult(resolved, before, current_revision(resolved))
