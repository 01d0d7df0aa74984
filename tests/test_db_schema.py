"""Migrations, the models they must match, settings, and values that must round-trip exactly."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from db.engine import database_url, make_engine
from db.migrate import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)
from db.models import Base, campaigns, deliveries
from db.types import sqlite_text

ROOT = Path(__file__).resolve().parents[1]
BIG_MSGID = 3662956322040938501  # a real-looking 64-bit msgid, > 2^53


def _campaign(connection: object, campaign_id: str = "c1") -> None:
    now = datetime.now(UTC)
    connection.execute(  # type: ignore[attr-defined]
        campaigns.insert().values(
            id=campaign_id,
            name="n",
            app="default",
            kind="template",
            audience_sql="SELECT 1",
            status="running",
            parameters={},
            audience_count=0,
            eligible_count=0,
            sent_count=0,
            failed_count=0,
            skipped_count=0,
            invalid_count=0,
            pending_count=0,
            run_count=1,
            created_at=now,
            updated_at=now,
        )
    )


# -- migrations ---------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_once_and_matches_the_models(blank_db_url: str) -> None:
    assert current_revision(blank_db_url) is None
    first = upgrade(blank_db_url)
    assert (first.before, first.after) == (None, head_revision())
    assert "upgraded from an empty database" in first.describe()
    second = upgrade(blank_db_url)
    assert not second.changed and "already at the latest schema" in second.describe()

    engine = make_engine(blank_db_url)
    try:
        with engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
            assert {"recipients", "interactions", "campaigns", "deliveries"} <= names
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            indexes = {ix["name"] for ix in inspect(connection).get_indexes("deliveries")}
            assert {"ix_deliveries_campaign_id_status", "ix_deliveries_msgid"} <= indexes
    finally:
        engine.dispose()


@pytest.mark.process
def test_migrations_run_from_any_working_directory(tmp_path: Path) -> None:
    code = "from db.migrate import upgrade\nprint(upgrade('sqlite:///here.db').describe())\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "upgraded from an empty database to" in done.stdout
    assert (tmp_path / "here.db").exists()
    assert MIGRATIONS_DIR.is_absolute() and (MIGRATIONS_DIR / "env.py").exists()


def test_cli_db_upgrade_and_current(blank_db_url: str) -> None:
    import typer

    from cli import db as db_cli

    app = typer.Typer()
    db_cli.register(app)
    runner = CliRunner()
    before = runner.invoke(app, ["db", "current", "--database-url", blank_db_url])
    assert before.exit_code == 1 and "not migrated" in before.output
    done = runner.invoke(app, ["db", "upgrade", "--database-url", blank_db_url])
    assert done.exit_code == 0, done.output
    assert f"to {head_revision()}" in done.output
    again = runner.invoke(app, ["db", "upgrade", "--database-url", blank_db_url])
    assert again.exit_code == 0 and "already at the latest schema" in again.output
    after = runner.invoke(app, ["db", "current", "--database-url", blank_db_url])
    assert after.exit_code == 0 and f"{head_revision()} (latest)" in after.output


# -- settings -----------------------------------------------------------------------------------


def test_database_url_defaults_and_normalises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WXPUSH_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert database_url() == f"sqlite:///{tmp_path / 'wxpush.db'}"
    monkeypatch.setenv("WXPUSH_DATABASE_URL", "postgresql://u@h:5432/d")
    assert database_url() == "postgresql+psycopg://u@h:5432/d"
    assert database_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ValueError, match="supports SQLite and PostgreSQL"):
        make_engine("mysql://u@h/d")


def test_sqlite_engine_is_set_up_for_concurrent_writers(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        with engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            }
        assert pragma == {"journal_mode": "wal", "busy_timeout": 30000, "foreign_keys": 1}
        assert engine.pool.size() >= 8  # type: ignore[attr-defined]
    finally:
        engine.dispose()


# -- values -------------------------------------------------------------------------------------


def test_msgid_and_timestamps_round_trip_exactly(db_engine: Engine) -> None:
    shanghai = timezone(timedelta(hours=8))
    sent = datetime(2026, 11, 26, 18, 30, 15, 123456, tzinfo=shanghai)
    with db_engine.begin() as connection:
        _campaign(connection)
        connection.execute(
            deliveries.insert().values(
                campaign_id="c1",
                openid="o1",
                status="sent",
                msgid=BIG_MSGID,
                attempts=1,
                sent_at=sent,
                updated_at=sent,
            )
        )
    with db_engine.connect() as connection:
        row = connection.execute(select(deliveries.c.msgid, deliveries.c.sent_at)).one()
        by_msgid = connection.execute(
            select(deliveries.c.openid).where(deliveries.c.msgid == BIG_MSGID)
        ).scalar_one()
        raw = connection.execute(text("SELECT sent_at FROM deliveries")).scalar_one()
    assert row.msgid == BIG_MSGID and isinstance(row.msgid, int)
    assert row.sent_at == sent and row.sent_at.tzinfo == UTC
    assert row.sent_at.hour == 10  # 18:30 in Shanghai is 10:30 UTC
    assert by_msgid == "o1"
    if db_engine.dialect.name == "sqlite":
        assert raw == "2026-11-26 10:30:15.123456" == sqlite_text(sent)


def test_naive_datetimes_are_refused(db_engine: Engine) -> None:
    with pytest.raises(Exception, match="naive datetime"), db_engine.begin() as connection:
        _campaign(connection)
        connection.execute(
            campaigns.update().values(started_at=datetime(2026, 1, 1, 12, 0))  # no tzinfo
        )


def _columns(connection: Any, name: str) -> list[str]:
    return [column["name"] for column in inspect(connection).get_columns(name)]


def test_migration_0004_round_trip_keeps_rows_and_never_reopens_unknown(blank_db_url: str) -> None:
    """0004 adds `unknown` (status, campaigns.unknown_count, campaign_stats.unknown); down to
    0003 an unknown row becomes a classless failure, which an older wxpush never re-sends;
    up again, the schema matches the models. Rows, indexes and the views survive both ways
    (SQLite rebuilds `deliveries` to change its CHECK constraint)."""
    upgrade(blank_db_url)
    engine = make_engine(blank_db_url, poolclass=NullPool)
    stamp = "2026-11-28 08:00:00.000000"
    try:
        with engine.begin() as connection:
            _campaign(connection)
            for openid, status, error_class in (
                ("s", "sent", None),
                ("u", "unknown", "RETRY"),  # retried once, then in doubt
                ("p", "pending", None),
            ):
                connection.execute(
                    text(
                        "INSERT INTO deliveries (campaign_id, openid, status, error_class, "
                        "attempts, updated_at) VALUES ('c1', :o, :s, :e, 1, :t)"
                    ),
                    {"o": openid, "s": status, "e": error_class, "t": stamp},
                )
        command.downgrade(alembic_config(blank_db_url), "0003")
        with engine.begin() as connection:
            rows = dict(
                connection.execute(
                    text(
                        "SELECT openid, status || '/' || coalesce(error_class, '-') FROM deliveries"
                    )
                ).all()
            )
            assert rows == {"s": "sent/-", "u": "failed/-", "p": "pending/-"}
            assert "unknown_count" not in _columns(connection, "campaigns")
            assert "unknown" not in _columns(connection, "campaign_stats")
            stats = connection.execute(text("SELECT sent, failed, pending FROM campaign_stats"))
            assert tuple(stats.one()) == (1, 1, 1)
            indexes = {ix["name"] for ix in inspect(connection).get_indexes("deliveries")}
            assert {"ix_deliveries_campaign_id_status", "ix_deliveries_msgid"} <= indexes
        with pytest.raises(Exception, match=r"(?i)check"), engine.begin() as connection:
            connection.execute(text("UPDATE deliveries SET status = 'unknown' WHERE openid = 's'"))
        assert upgrade(blank_db_url).after == head_revision()
        with engine.begin() as connection:
            connection.execute(text("UPDATE deliveries SET status = 'unknown' WHERE openid = 'p'"))
            assert "unknown" in _columns(connection, "campaign_stats")
            stats = connection.execute(
                text("SELECT sent, failed, pending, unknown FROM campaign_stats")
            )
            assert tuple(stats.one()) == (1, 1, 0, 1)
            unknown_count = connection.execute(text("SELECT unknown_count FROM campaigns"))
            assert unknown_count.scalar_one() == 0
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            foreign = inspect(connection).get_foreign_keys("deliveries")
            assert [fk["referred_table"] for fk in foreign] == ["campaigns"]
    finally:
        engine.dispose()
