"""Least privilege for the audience SQL: it runs as a role that can only read the audience
tables (PostgreSQL) or under an authorizer (SQLite); the probes of issue 9 are refused or
leave nothing behind; a superuser is refused unless allowed; the wall-clock limit holds
whatever the session sets; database error texts reach the operator without values."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from db.audience import (
    AudienceQueryError,
    count_audience,
    preview_audience,
    stream_audience,
)
from db.audience_role import ALLOW_SUPERUSER_ENV, LEDGER_TABLES
from db.models import recipients
from tasks import database
from tests.waiting import wait_until

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def _pg_only(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL roles and functions")


def _add(engine: Engine, openid: str, nickname: str = "小王") -> None:
    with engine.begin() as connection:
        connection.execute(
            recipients.insert(),
            {
                "app_id": "app",
                "openid": openid,
                "nickname": nickname,
                "subscribed": True,
                "created_at": NOW,
                "updated_at": NOW,
            },
        )


def _stream(engine: Engine, ledger: Engine, sql: str, **options: Any) -> list[Any]:
    settings: dict[str, Any] = {
        "campaign_id": "camp",
        "window_hours": 0,
        "now": NOW,
        "batch_size": 100,
        "ledger": ledger,
    }
    return list(stream_audience(engine, sql, {}, **(settings | options)))


def _refused(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> str:
    """The message of the refusal, the same from the preview and the count."""
    with pytest.raises(AudienceQueryError) as preview:
        preview_audience(engine, sql, params or {})
    with pytest.raises(AudienceQueryError) as count:
        count_audience(engine, sql, params or {})
    assert str(preview.value) == str(count.value)
    return str(preview.value)


# -- the probes of issue 9, as the audience role ---------------------------------------------


def test_a_replication_slot_cannot_be_created(audience_engine: Engine, db_engine: Engine) -> None:
    _pg_only(db_engine)
    slot = f"wx_probe_{uuid.uuid4().hex[:8]}"
    sql = f"SELECT 'x' AS openid FROM pg_create_physical_replication_slot('{slot}')"
    assert "SQLSTATE 42501" in _refused(audience_engine, sql)
    with db_engine.connect() as connection:
        slots = connection.execute(
            text("SELECT count(*) FROM pg_replication_slots WHERE slot_name = :s"), {"s": slot}
        ).scalar_one()
    assert slots == 0


def test_another_backend_cannot_be_terminated(audience_engine: Engine, db_engine: Engine) -> None:
    _pg_only(db_engine)
    with db_engine.connect() as victim:
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
        sql = "SELECT 'x' AS openid WHERE pg_terminate_backend(:pid) OR pg_cancel_backend(:pid)"
        assert "SQLSTATE 42501" in _refused(audience_engine, sql, {"pid": pid})
        assert victim.execute(text("SELECT 1")).scalar_one() == 1, "the victim lives"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'x' AS openid WHERE pg_reload_conf()",
        "SELECT pg_read_file('/etc/passwd') AS openid",
        "SELECT rolname::text AS openid FROM pg_authid",
        "SELECT id AS openid FROM campaigns",
        "SELECT openid FROM deliveries",
        "SELECT openid FROM callback_events",
        "SELECT name AS openid FROM campaign_stats",
    ],
)
def test_superuser_functions_and_the_ledger_are_refused(
    audience_engine: Engine, db_engine: Engine, sql: str
) -> None:
    _pg_only(db_engine)
    message = _refused(audience_engine, sql)
    assert "SQLSTATE 42501" in message and "permission denied" in message
    assert "root" not in message


def test_locks_and_settings_do_not_outlive_the_audience_call(db_engine: Engine) -> None:
    """Through the engine the campaign flow uses: an advisory lock and a session setting
    taken by the audience SQL are gone once the call returns."""
    _pg_only(db_engine)
    engine = database.audience_engine()
    key = int(uuid.uuid4().int % 2**31)
    sql = (
        "SELECT 'x' AS openid FROM (SELECT pg_advisory_lock(:key), "
        "set_config('wxpush.probe', 'left', false)) AS probe"
    )
    for _ in range(3):  # a pool would hand the same session back
        assert count_audience(engine, sql, {"key": key}) == 1

    def released() -> bool:
        # The server ends a closed connection's backend (and frees its locks) just after
        # the client has gone: on a busy machine the lock can outlive the call by a moment.
        with db_engine.connect() as connection:
            held = connection.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :key"),
                {"key": key},
            ).scalar_one()
        return held == 0

    wait_until(released, "the audience call's advisory lock is released", timeout=5)
    seen = preview_audience(
        engine, "SELECT coalesce(current_setting('wxpush.probe', true), 'unset') AS openid", {}
    )
    assert seen.rows == [{"openid": "unset"}]


# -- the wall-clock limit ---------------------------------------------------------------------


def test_set_config_cannot_extend_the_time_limit(
    audience_engine: Engine, db_engine: Engine
) -> None:
    """The first batch switches the session's statement_timeout off; the next fetch sleeps
    past the limit and is cancelled from outside, close to the limit."""
    _pg_only(db_engine)
    sql = (
        "SELECT openid, CASE openid WHEN 'a' THEN set_config('statement_timeout', '0', true) "
        "WHEN 'c' THEN pg_sleep(8)::text ELSE 'quick' END AS probe "
        "FROM (VALUES ('a'), ('b'), ('c'), ('d')) AS v(openid) ORDER BY openid"
    )
    started = time.monotonic()
    seen: list[str] = []
    with pytest.raises(AudienceQueryError, match=r"took longer than the 1 s timeout"):
        for batch in stream_audience(
            audience_engine,
            sql,
            {},
            campaign_id="camp",
            window_hours=0,
            now=NOW,
            batch_size=1,
            timeout_seconds=1,
            ledger=db_engine,
        ):
            seen += [row.openid for row in batch]
    elapsed = time.monotonic() - started
    assert seen[:1] == ["a"], "the setting ran in an earlier fetch"
    assert elapsed < 2.5, f"cancelled after {elapsed:.1f} s"


# -- superuser --------------------------------------------------------------------------------


def test_audience_sql_as_a_superuser_is_refused_unless_allowed(
    db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pg_only(db_engine)
    monkeypatch.delenv(ALLOW_SUPERUSER_ENV, raising=False)
    message = _refused(db_engine, "SELECT 'x' AS openid")
    assert "superuser postgres" in message and ALLOW_SUPERUSER_ENV in message
    assert "wxpush db audience-role" in message and "\n" not in message
    with pytest.raises(AudienceQueryError, match="superuser"):
        _stream(db_engine, db_engine, "SELECT 'x' AS openid")
    monkeypatch.setenv(ALLOW_SUPERUSER_ENV, "1")
    assert count_audience(db_engine, "SELECT 'x' AS openid", {}) == 1
    assert [r.openid for b in _stream(db_engine, db_engine, "SELECT 'x' AS openid") for r in b] == [
        "x"
    ]


def test_a_member_of_a_superuser_role_is_refused(db_url: str, db_engine: Engine) -> None:
    _pg_only(db_engine)
    role = f"wxpush_test_member_{uuid.uuid4().hex[:8]}"
    with db_engine.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{role}" LOGIN IN ROLE postgres'))
    member = create_engine(db_url.replace("postgres@", f"{role}@", 1), poolclass=NullPool)
    try:
        message = _refused(member, "SELECT 'x' AS openid")
        assert f"{role} (a member of the superuser postgres)" in message
    finally:
        member.dispose()
        with db_engine.begin() as connection:
            connection.execute(text(f'DROP ROLE "{role}"'))


# -- error texts ------------------------------------------------------------------------------


def test_error_texts_carry_no_values(
    audience_engine: Engine, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pg_only(db_engine)
    _add(db_engine, "o-1", nickname="secret-nick-4711")
    with pytest.raises(AudienceQueryError) as caught:
        preview_audience(
            audience_engine, "SELECT CAST(nickname AS int)::text AS openid FROM recipients", {}
        )
    message = str(caught.value)
    assert "secret-nick-4711" not in message
    assert "SQLSTATE 22P02" in message and "audience SQL failed" in message
    # The database's own text is not chained in either (tracebacks print the chain).
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    monkeypatch.setenv(ALLOW_SUPERUSER_ENV, "1")
    with pytest.raises(AudienceQueryError) as caught:
        count_audience(
            db_engine, "SELECT CAST(pg_read_file('/etc/passwd') AS int)::text AS openid", {}
        )
    assert "root" not in str(caught.value) and "SQLSTATE 22P02" in str(caught.value)


def test_errors_about_the_sql_text_keep_their_detail(audience_engine: Engine) -> None:
    """Names and syntax come from the operator's own text, not from data: still quoted."""
    message = _refused(audience_engine, "SELECT openid FROM no_such_table")
    assert "no_such_table" in message


# -- the ledger tables on both databases ------------------------------------------------------


@pytest.mark.parametrize("table", LEDGER_TABLES)
def test_the_ledger_tables_are_not_readable(audience_engine: Engine, table: str) -> None:
    message = _refused(audience_engine, f"SELECT 'x' AS openid FROM {table}")
    assert any(word in message for word in ("permission denied", "prohibited", "not authorized"))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT name AS openid FROM sqlite_master",
        "SELECT name AS openid FROM pragma_table_info('campaigns')",
        "SELECT 'x' AS openid FROM pragma_database_list",
    ],
)
def test_sqlite_catalog_and_pragmas_are_refused(audience_engine: Engine, sql: str) -> None:
    if audience_engine.dialect.name != "sqlite":
        pytest.skip("SQLite's authorizer")
    message = _refused(audience_engine, sql)
    assert "SQLITE_AUTH" in message and ("not authorized" in message or "prohibited" in message)


def test_the_audience_tables_and_an_operator_table_are_readable(
    audience_engine: Engine, db_engine: Engine
) -> None:
    _add(db_engine, "o-1")
    table = f"orders_{uuid.uuid4().hex[:8]}"
    with db_engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {table} (openid VARCHAR(64))"))
        connection.execute(text(f"INSERT INTO {table} VALUES ('o-1')"))
        if db_engine.dialect.name == "postgresql":  # what docs/database.md tells operators
            user = audience_engine.url.username
            connection.execute(text(f'GRANT SELECT ON {table} TO "{user}"'))
    try:
        sql = (
            f"SELECT r.openid, count(i.id) AS n FROM recipients r JOIN {table} o "
            "ON o.openid = r.openid LEFT JOIN interactions i ON i.openid = r.openid "
            "GROUP BY r.openid"
        )
        assert preview_audience(audience_engine, sql, {}).rows == [{"openid": "o-1", "n": 0}]
        assert [r.openid for b in _stream(audience_engine, db_engine, sql) for r in b] == ["o-1"]
    finally:
        with db_engine.begin() as connection:
            connection.execute(text(f"DROP TABLE {table}"))


# -- `wxpush db audience-role` ---------------------------------------------------------------


def test_the_audience_role_command(db_url: str, db_engine: Engine) -> None:
    from cli.main import app as cli

    runner = CliRunner()
    if db_engine.dialect.name == "sqlite":
        out = runner.invoke(cli, ["db", "audience-role", "--database-url", db_url])
        assert out.exit_code == 0, out.output
        assert "no roles" in out.output and "authorizer" in out.output
        return
    name = f"wxpush_test_cli_{uuid.uuid4().hex[:8]}"
    argv = ["db", "audience-role", "--database-url", db_url, "--name", name]
    try:
        first = runner.invoke(cli, [*argv, "--password", "first-pass-123"])
        assert first.exit_code == 0, first.output
        url = first.stdout.strip().splitlines()[-1]
        assert url.startswith(f"postgresql+psycopg://{name}:first-pass-123@")
        assert first.output.count("first-pass-123") == 1, "printed once, in the URL"
        again = runner.invoke(cli, argv)  # idempotent; a new generated password
        assert again.exit_code == 0, again.output
        url = again.stdout.strip().splitlines()[-1]
        assert "first-pass-123" not in url
        engine = create_engine(url, poolclass=NullPool)
        try:
            assert count_audience(engine, "SELECT openid FROM recipients", {}) == 0
            assert "SQLSTATE 42501" in _refused(engine, "SELECT id AS openid FROM campaigns")
        finally:
            engine.dispose()
    finally:
        with db_engine.begin() as connection:
            connection.execute(text(f'DROP OWNED BY "{name}"'))
            connection.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
