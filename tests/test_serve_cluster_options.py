"""`wxpush serve --workers N --database-url … --prefect-database-url …`: where the Prefect
server's database is, the databases created when missing, and the refusals, each one line.
The cluster itself runs in tests/test_scale_accounts.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from cli.cluster import check_workers, ensure_database, prefect_database_url
from cli.errors import OperatorError
from cli.main import app
from cli.serve import worker_names
from tests.fixtures.database import POSTGRES_ENV

LEDGER = "postgresql+psycopg://wx:pw@db.internal:5433/wxpush?options=-csearch_path%3Dx"


@pytest.fixture
def prefect_default_database() -> Iterator[None]:
    """Prefect's database setting as an operator who never set it has it: the session's
    Prefect test harness (in the same xdist worker) sets it for its own server."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_SERVER_DATABASE_CONNECTION_URL}):
        yield


def test_a_postgresql_ledger_puts_prefect_in_a_database_beside_it(
    prefect_default_database: None,
) -> None:
    url = make_url(prefect_database_url(LEDGER, None) or "")
    assert url.drivername == "postgresql+asyncpg", "asyncpg: the driver Prefect ships with"
    assert (url.host, url.port, url.username, url.password) == ("db.internal", 5433, "wx", "pw")
    assert url.database == "wxpush_prefect"
    assert dict(url.query) == {}, "the ledger's libpq options are not asyncpg's"


def test_sqlite_ledger_keeps_prefects_own_default() -> None:
    assert prefect_database_url("sqlite:////tmp/wxpush.db", None) is None


def test_an_explicit_prefect_database_wins_and_gets_prefects_drivers() -> None:
    given = prefect_database_url(LEDGER, "postgresql://p@other:5432/prefect")
    assert given == "postgresql+asyncpg://p@other:5432/prefect"
    assert prefect_database_url("sqlite:///x.db", "sqlite:////tmp/p.db") == (
        "sqlite+aiosqlite:////tmp/p.db"
    )
    with pytest.raises(OperatorError, match="Prefect runs on PostgreSQL or SQLite"):
        prefect_database_url(LEDGER, "mysql://u:secret@h/db")


def test_prefects_own_setting_is_left_to_the_server(prefect_default_database: None) -> None:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    chosen = {PREFECT_SERVER_DATABASE_CONNECTION_URL: "postgresql+asyncpg://p@elsewhere/prefect"}
    with temporary_settings(updates=chosen):
        assert prefect_database_url(LEDGER, None) is None, "the server inherits it"
    assert prefect_database_url(LEDGER, None) is not None


def test_several_workers_need_postgresql() -> None:
    check_workers(1, "sqlite:///x.db")
    check_workers(3, LEDGER)
    with pytest.raises(OperatorError, match="--workers 2 needs a PostgreSQL ledger"):
        check_workers(2, "sqlite:///x.db")


def test_one_worker_keeps_its_old_name_several_are_numbered() -> None:
    assert worker_names(1) == [None]
    assert worker_names(2) == ["wxpush-worker-1", "wxpush-worker-2"]


def test_serve_refuses_two_workers_on_sqlite_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("WXPUSH_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("WXPUSH_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "needs a PostgreSQL ledger" in lines[0] and "--database-url" in lines[0]


def test_serve_help_explains_the_cluster_options() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--workers", "--worker-limit", "--database-url", "--prefect-database-url"):
        assert option in result.output
    assert "needs a PostgreSQL --database-url" in " ".join(result.output.split())


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV}")
    return url


def test_a_missing_database_is_created_once(postgres_url: str) -> None:
    name = f"wxpush_test_created_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    admin = create_engine(postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        assert ensure_database(url, "the test") is True
        assert ensure_database(url, "the test") is False, "it exists now"
        with admin.connect() as connection:
            found = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar()
        assert found == 1
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_a_database_that_cannot_be_reached_is_one_line(postgres_url: str) -> None:
    url = make_url(postgres_url).set(username="wxpush_no_such_role", password="hunter2")
    with pytest.raises(OperatorError) as refused:
        ensure_database(url.render_as_string(hide_password=False), "the Prefect server")
    message = str(refused.value)
    assert "cannot reach the Prefect server's database" in message
    assert 'role "wxpush_no_such_role" does not exist' in message
    assert "hunter2" not in message and "\n" not in message


def test_serve_warns_at_start_when_audience_sql_would_run_as_a_superuser(
    db_backend: str, db_url: str, audience_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test server's user is the superuser `postgres`: without an audience URL every
    campaign would fail, and `serve` says so before anything runs."""
    from cli.cluster import audience_warning

    if db_backend != "postgresql":
        assert audience_warning(db_url) is None, "SQLite has no roles"
        return
    monkeypatch.delenv("WXPUSH_AUDIENCE_DATABASE_URL")
    monkeypatch.delenv("WXPUSH_ALLOW_SUPERUSER_AUDIENCE", raising=False)
    warning = audience_warning(db_url) or ""
    assert warning.startswith("campaigns will fail: the audience SQL would run as")
    assert "wxpush db audience-role" in warning
    monkeypatch.setenv("WXPUSH_AUDIENCE_DATABASE_URL", audience_db_url)
    assert audience_warning(db_url) is None, "the audience role is set"
    monkeypatch.delenv("WXPUSH_AUDIENCE_DATABASE_URL")
    monkeypatch.setenv("WXPUSH_ALLOW_SUPERUSER_AUDIENCE", "1")
    assert audience_warning(db_url) is None, "the operator allowed it"
