"""The audience SQL: read-only with a timeout, clear errors, streamed in batches with the skip
reason computed in SQL, final ledger rows left out, flat memory."""

from __future__ import annotations

import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.exc import DBAPIError

from db.audience import (
    DEFAULT_AUDIENCE_SQL,
    AudienceQueryError,
    count_audience,
    preview_audience,
    read_only,
    stream_audience,
)
from db.audience_role import ALLOW_SUPERUSER_ENV
from db.campaigns import create_or_resume
from db.engine import make_engine
from db.ledger import record_outcomes
from db.models import recipients
from db.outcomes import DeliveryOutcome, DeliveryStatus, SkipReason

APP = "wx-test-app"
NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(hours=48)


def _add(engine: Engine, *rows: dict[str, Any]) -> None:
    defaults = {
        "app_id": APP,
        "subscribed": True,
        "nickname": "小王",
        "city": "上海",
        "attributes": {"vip_level": 2},
        "created_at": NOW,
        "updated_at": NOW,
        "last_interaction_at": NOW - timedelta(hours=1),
    }
    with engine.begin() as connection:
        connection.execute(recipients.insert(), [defaults | row for row in rows])


def _stream(
    engines: tuple[Engine, Engine], sql: str = DEFAULT_AUDIENCE_SQL, **options: Any
) -> list[list[Any]]:
    """Stream through the audience engine, the ledger read through the main one."""
    return list(_stream_iter(engines, sql, **options))


def _stream_iter(
    engines: tuple[Engine, Engine], sql: str = DEFAULT_AUDIENCE_SQL, **options: Any
) -> Iterator[list[Any]]:
    audience, ledger = engines
    settings: dict[str, Any] = {
        "ledger": ledger,
        "campaign_id": "camp",
        "window_hours": 48,
        "now": NOW,
        "batch_size": 100,
    }
    params = options.pop("params", {"app_id": APP})
    return stream_audience(audience, sql, params, **(settings | options))


def _flat(batches: list[list[Any]]) -> dict[str, Any]:
    return {row.openid: row for batch in batches for row in batch}


def _state(engine: Engine) -> tuple[int, list[str]]:
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(recipients)).scalar_one()
        cities = connection.execute(select(recipients.c.city).order_by(recipients.c.openid))
        return count, list(cities.scalars())


def _campaign(engine: Engine, campaign_id: str = "camp") -> None:
    with engine.begin() as connection:
        create_or_resume(
            connection,
            campaign_id=campaign_id,
            name="audience test",
            app="default",
            kind="template",
            template_id="T1",
            parameters={},
            audience_sql=DEFAULT_AUDIENCE_SQL,
        )


# -- preview ------------------------------------------------------------------------------------


def test_preview_gives_the_same_plain_values_on_both_databases(
    db_engine: Engine, audience_engine: Engine
) -> None:
    seen = NOW - timedelta(hours=3, microseconds=7)
    _add(db_engine, {"openid": "o-1", "last_interaction_at": seen, "blocked": "refuse"})
    preview = preview_audience(
        audience_engine, DEFAULT_AUDIENCE_SQL, {"app_id": APP}, window_hours=48
    )
    assert preview.columns == [
        "openid",
        "nickname",
        "city",
        "subscribed",
        "blocked",
        "last_interaction_at",
        "attributes",
    ]
    assert preview.rows == [
        {
            "openid": "o-1",
            "nickname": "小王",
            "city": "上海",
            "subscribed": True,
            "blocked": "refuse",
            "last_interaction_at": seen,
            "attributes": {"vip_level": 2},
        }
    ]
    assert preview.rows[0]["last_interaction_at"].tzinfo == UTC


WRITES = [
    "DELETE FROM recipients",
    "UPDATE recipients SET city = 'x'; SELECT openid FROM recipients",
    "WITH gone AS (DELETE FROM recipients RETURNING openid) SELECT openid FROM gone",
    "INSERT INTO recipients (app_id, openid) VALUES ('a', 'b')",
    "DROP TABLE recipients",
    "SELECT openid FROM recipients FOR UPDATE",
    # closes the wrapper's parenthesis to smuggle a second statement in
    "SELECT openid FROM recipients) AS x; DELETE FROM recipients; SELECT * FROM (SELECT 1",
    "select openid from recipients;\n-- the end\ndelete from recipients",
]


@pytest.mark.parametrize("sql", WRITES)
def test_a_statement_that_writes_is_rejected_and_nothing_changes(
    db_engine: Engine, audience_engine: Engine, sql: str
) -> None:
    _add(db_engine, {"openid": "o-1"}, {"openid": "o-2"})
    before = _state(db_engine)
    with pytest.raises(AudienceQueryError, match=r"must only read|must be one SELECT"):
        preview_audience(audience_engine, sql, {})
    with pytest.raises(AudienceQueryError, match=r"must only read|must be one SELECT"):
        _stream((audience_engine, db_engine), sql, params={})
    assert _state(db_engine) == before == (2, ["上海", "上海"])


class _Signal(BaseException):
    """Like KeyboardInterrupt or Prefect's TerminationSignal: not an Exception."""


def test_a_signal_inside_a_read_only_fetch_is_not_masked_by_the_cleanup(
    db_engine: Engine, audience_engine: Engine
) -> None:
    """SQLAlchemy invalidates (closes) a connection a signal interrupted; undoing the
    read-only settings on it raised "closed database" over the signal, so a SIGTERM ended a
    campaign `failed` with a ProgrammingError instead of pausing it."""
    _add(db_engine, {"openid": "o-1"})
    with audience_engine.connect() as connection:
        with pytest.raises(_Signal), read_only(connection, 5):
            connection.execute(text("SELECT openid FROM recipients")).all()
            connection.invalidate()  # what SQLAlchemy does when an exit exception hits a fetch
            raise _Signal
        assert connection.invalidated


def test_the_read_only_transaction_itself_refuses_writes(
    db_engine: Engine, audience_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the lexical check: the database refuses, whatever the text looked like, even
    for a session that may write (a superuser the operator allowed, the SQLite file)."""
    monkeypatch.setenv(ALLOW_SUPERUSER_ENV, "1")
    _add(db_engine, {"openid": "o-1"})
    with db_engine.connect() as connection:
        with pytest.raises(DBAPIError), read_only(connection, 5):
            connection.execute(text("DELETE FROM recipients"))
        connection.rollback()
    if db_engine.dialect.name == "postgresql":
        with db_engine.begin() as connection:
            connection.execute(
                text(
                    "CREATE FUNCTION wipe() RETURNS integer LANGUAGE sql AS "
                    "'DELETE FROM recipients; SELECT 1'"
                )
            )
        sql = "SELECT openid FROM recipients WHERE wipe() = 1"  # a SELECT that writes
        for engine in (db_engine, audience_engine):
            with pytest.raises(AudienceQueryError, match=r"must only read.*read-only transaction"):
                preview_audience(engine, sql, {})
    assert _state(db_engine)[0] == 1


def test_sqlite_connection_settings_are_restored_for_the_pool(db_url: str) -> None:
    engine = make_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        if engine.dialect.name != "sqlite":
            pytest.skip("PRAGMA query_only and the authorizer are SQLite's")
        with pytest.raises(AudienceQueryError):
            preview_audience(engine, "SELECT openid FROM no_such_table", {})
        preview_audience(engine, "SELECT 'x' AS openid", {})
        _add(engine, {"openid": "o-1"})  # the same (only) connection can write again
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA query_only").scalar() == 0
            # ... and read the ledger tables the authorizer hid from the audience SQL
            assert connection.exec_driver_sql("SELECT count(*) FROM campaigns").scalar() == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT openid FROM no_such_table", r"is not valid: .*no_such_table"),
        ("SELECT openid FROM recipients WHERE", r"is not valid: .*syntax error"),
        ("SELEC openid FROM recipients", r"is not valid: it must be a SELECT .* SELEC openid"),
        ("SELECT app_id FROM recipients", r"must return an `openid` column.*returned: app_id"),
        ("SELECT openid FROM recipients WHERE app_id = :app", r"needs a value.*'app'"),
        ("  -- nothing here\n ; ", r"is empty"),
    ],
)
def test_bad_sql_gets_a_message_an_operator_understands(
    audience_engine: Engine, sql: str, message: str
) -> None:
    with pytest.raises(AudienceQueryError, match=message):
        preview_audience(audience_engine, sql, {})


def test_a_missing_window_column_is_an_error_not_a_silent_send(
    db_engine: Engine, audience_engine: Engine
) -> None:
    _add(db_engine, {"openid": "o-1"})
    sql = "SELECT openid, nickname FROM recipients"
    engines = (audience_engine, db_engine)
    with pytest.raises(AudienceQueryError, match="no `last_interaction_at` column"):
        preview_audience(audience_engine, sql, {}, window_hours=48)
    with pytest.raises(AudienceQueryError, match="no `last_interaction_at` column"):
        _stream(engines, sql, params={})
    rows = _flat(_stream(engines, sql, params={}, window_hours=0))
    assert rows["o-1"].skip_reason is None and rows["o-1"].values == {
        "openid": "o-1",
        "nickname": "小王",
    }


def _slow_sql(dialect: str) -> str:
    if dialect == "postgresql":
        return "SELECT 'x' AS openid FROM pg_sleep(10)"
    return (
        "SELECT 'x' AS openid FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
        "SELECT i + 1 FROM n WHERE i < 2000000000) SELECT max(i) AS m FROM n)"
    )


def test_the_statement_timeout_stops_a_slow_query(
    db_engine: Engine, audience_engine: Engine
) -> None:
    sql = _slow_sql(db_engine.dialect.name)
    started = time.monotonic()
    with pytest.raises(AudienceQueryError, match="took longer than the 1 s timeout"):
        preview_audience(audience_engine, sql, {}, timeout_seconds=1)
    assert time.monotonic() - started < 5
    started = time.monotonic()
    with pytest.raises(AudienceQueryError, match="took longer than the 1 s timeout"):
        count_audience(audience_engine, sql, {}, timeout_seconds=1)
    assert time.monotonic() - started < 5
    started = time.monotonic()
    with pytest.raises(AudienceQueryError, match=r"took longer than the 0\.5 s timeout"):
        _stream((audience_engine, db_engine), sql, params={}, window_hours=0, timeout_seconds=0.5)
    assert time.monotonic() - started < 5


def test_percent_signs_and_bind_parameters(db_engine: Engine, audience_engine: Engine) -> None:
    _add(db_engine, {"openid": "o-1", "city": "北京"}, {"openid": "o-2", "city": "上海"})
    sql = "SELECT openid FROM recipients WHERE app_id = :app_id AND city LIKE '%京%'"
    rows = preview_audience(audience_engine, sql, {"app_id": APP}).rows
    assert [r["openid"] for r in rows] == ["o-1"]


# -- stream -------------------------------------------------------------------------------------


def test_batches_and_skip_reasons_at_the_window_boundary(
    db_engine: Engine, audience_engine: Engine
) -> None:
    engines = (audience_engine, db_engine)
    _add(
        db_engine,
        {"openid": "a-exactly-48h", "last_interaction_at": CUTOFF},
        {"openid": "b-48h-and-1us", "last_interaction_at": CUTOFF - timedelta(microseconds=1)},
        {"openid": "c-1us-inside", "last_interaction_at": CUTOFF + timedelta(microseconds=1)},
        {"openid": "d-never", "last_interaction_at": None},
        {"openid": "e-unsubscribed", "subscribed": False},
        {"openid": "f-unsubscribed-old", "subscribed": False, "last_interaction_at": CUTOFF},
        {"openid": "g-recent"},
        {"openid": "h-other-app", "app_id": "another"},
    )
    batches = _stream(engines, batch_size=3)
    assert [len(batch) for batch in batches] == [3, 3, 1]
    rows = [row for batch in batches for row in batch]
    assert len(rows) == len({row.openid for row in rows})
    assert {row.openid: row.skip_reason for row in rows} == {
        "a-exactly-48h": None,
        "b-48h-and-1us": SkipReason.OUTSIDE_WINDOW,
        "c-1us-inside": None,
        "d-never": SkipReason.OUTSIDE_WINDOW,
        "e-unsubscribed": SkipReason.UNSUBSCRIBED,
        "f-unsubscribed-old": SkipReason.UNSUBSCRIBED,
        "g-recent": None,
    }
    no_window = _flat(_stream(engines, window_hours=0))
    assert no_window["b-48h-and-1us"].skip_reason is None
    assert no_window["e-unsubscribed"].skip_reason == SkipReason.UNSUBSCRIBED
    assert no_window["g-recent"].values["last_interaction_at"] == NOW - timedelta(hours=1)


def test_a_custom_query_brings_its_own_interaction_time(
    db_engine: Engine, audience_engine: Engine
) -> None:
    """ISO text with an offset, text without microseconds, a 'T' separator: all compared as
    instants, not as text (on SQLite a plain text comparison gets most of these wrong)."""
    values = [
        ("inside-offset", "2026-11-24T16:00:00+08:00"),  # = the cutoff, 08:00 UTC
        ("outside-offset", "2026-11-24T15:59:59+08:00"),
        ("inside-no-micro", "2026-11-24 08:00:00"),
        ("outside-t", "2026-11-24T07:59:59"),
        ("inside-z", "2026-11-24T08:00:01Z"),
    ]
    sql = " UNION ALL ".join(
        f"SELECT '{openid}' AS openid, '{stamp}' AS last_interaction_at" for openid, stamp in values
    )
    if db_engine.dialect.name == "sqlite":
        epoch = int(CUTOFF.timestamp())
        sql += (
            f" UNION ALL SELECT 'inside-unix', {epoch} UNION ALL SELECT 'outside-unix', {epoch - 1}"
        )
    rows = _flat(_stream((audience_engine, db_engine), sql, params={}))
    reasons = {openid: row.skip_reason for openid, row in rows.items()}
    assert {k for k, v in reasons.items() if v is None} == {k for k in reasons if "inside" in k}
    assert all(v == SkipReason.OUTSIDE_WINDOW for k, v in reasons.items() if "outside" in k)


def test_final_ledger_rows_are_left_out_and_retry_failed_brings_some_back(
    db_engine: Engine, audience_engine: Engine
) -> None:
    engines = (audience_engine, db_engine)
    _add(db_engine, *({"openid": name} for name in "abcdefghi"))
    _campaign(db_engine)

    def failed(openid: str, error_class: str | None) -> DeliveryOutcome:
        return DeliveryOutcome(openid, DeliveryStatus.FAILED, errcode=1, error_class=error_class)

    with db_engine.begin() as connection:
        record_outcomes(
            connection,
            "camp",
            [
                DeliveryOutcome("a", DeliveryStatus.SENT, msgid=1),
                DeliveryOutcome("b", DeliveryStatus.SKIPPED, reason="outside_window"),
                failed("c", "RETRY"),
                failed("d", "QUOTA"),
                failed("e", "RECIPIENT"),
                DeliveryOutcome("f", DeliveryStatus.PENDING, attempts=1),
                DeliveryOutcome("g", DeliveryStatus.INVALID, reason="thing1 too long"),
                failed("i", None),  # a failure of no known class is not retried
            ],
        )
    assert sorted(_flat(_stream(engines))) == ["f", "h"]
    assert sorted(_flat(_stream(engines, retry_failed=True))) == ["c", "d", "f", "h"]
    assert sorted(_flat(_stream(engines, campaign_id="other"))) == list("abcdefghi")
    # Batches are filtered one by one: final rows leave no empty batch behind.
    assert [len(b) for b in _stream(engines, batch_size=2)] == [1, 1]


def test_duplicate_openids_give_one_row_and_null_openids_are_dropped(
    db_engine: Engine, audience_engine: Engine
) -> None:
    sql = (
        "SELECT column1 AS openid, column2 AS label FROM (VALUES "
        "('x', 'one', 2), ('x', 'two', 1), ('y', 'only', 3), (NULL, 'nobody', 0)"
        ") AS v"
    )
    batches = _stream((audience_engine, db_engine), sql, params={}, window_hours=0)
    rows = [row for batch in batches for row in batch]
    assert sorted(row.openid for row in rows) == ["x", "y"]
    labels = {row.openid: row.values["label"] for row in rows}
    assert labels["x"] in ("one", "two") and labels["y"] == "only"


def test_closing_the_stream_gives_its_connection_back(
    db_url: str, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW_SUPERUSER_ENV, "1")  # a pool of one the test can also write with
    engine = make_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=3)
    try:
        _add(engine, *({"openid": f"o-{i:03d}"} for i in range(50)))
        stream = stream_audience(
            engine,
            DEFAULT_AUDIENCE_SQL,
            {"app_id": APP},
            ledger=db_engine,
            campaign_id="camp",
            window_hours=48,
            now=NOW,
            batch_size=10,
        )
        first = next(stream)
        assert len(first) == 10 and all(row.openid.startswith("o-") for row in first)
        stream.close()
        _add(engine, {"openid": "after"})  # the single pooled connection writes again
        assert _state(engine)[0] == 51
    finally:
        engine.dispose()


def test_streaming_200k_rows_keeps_memory_flat(db_engine: Engine, audience_engine: Engine) -> None:
    total = 200_000
    if db_engine.dialect.name == "postgresql":
        sql = "SELECT 'o' || lpad(i::text, 27, '0') AS openid FROM generate_series(1, :n) AS i"
    else:
        sql = (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n) "
            "SELECT printf('o%027d', i) AS openid FROM n"
        )
    tracemalloc.start()
    try:
        rows = batches = 0
        stream = stream_audience(
            audience_engine,
            sql,
            {"n": total},
            ledger=db_engine,
            campaign_id="camp",
            window_hours=0,
            now=NOW,
            batch_size=1000,
            timeout_seconds=60,
        )
        for batch in stream:
            rows += len(batch)
            batches += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (rows, batches) == (total, 200)
    # All 200k rows at once would be ~80 MB of AudienceRow + dict + str; a batch is ~0.4 MB.
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB while streaming"


def test_worker_threads_write_the_ledger_while_the_audience_streams(
    db_engine: Engine, audience_engine: Engine
) -> None:
    """The campaign's shape: one connection streams (a read transaction stays open), batch
    tasks record outcomes from other threads at the same time; nobody waits for a lock."""
    _add(db_engine, *({"openid": f"o-{i:04d}"} for i in range(400)))
    _campaign(db_engine)
    stream = stream_audience(
        audience_engine,
        DEFAULT_AUDIENCE_SQL,
        {"app_id": APP},
        ledger=db_engine,
        campaign_id="camp",
        window_hours=48,
        now=NOW,
        batch_size=50,
    )

    def record(batch: list[Any]) -> int:
        with db_engine.begin() as connection:
            sent = [DeliveryOutcome(row.openid, DeliveryStatus.SENT, msgid=1) for row in batch]
            return record_outcomes(connection, "camp", sent)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = []
        for batch in stream:  # each write finishes while the stream's statement is still open
            futures.append(pool.submit(record, batch))
            if len(futures) % 2 == 0:
                futures[-1].result()
        written = sum(future.result() for future in futures)
    assert written == 400
    assert time.monotonic() - started < 10
    assert _flat(_stream((audience_engine, db_engine))) == {}  # everything is final now


# -- a batch costs the same at the end of a campaign as at its start (issue 15) -----------------


@contextmanager
def _planned(*engines: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every SELECT or INSERT the engines run, with the plan the database chose for it, read
    on the same connection right after it ran (the stream's temporary table exists only
    there): PostgreSQL's EXPLAIN (FORMAT JSON), SQLite's EXPLAIN QUERY PLAN lines."""
    seen: list[tuple[str, Any]] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "INSERT", "WITH")):
            return
        raw = conn.connection.driver_connection
        if conn.dialect.name == "postgresql":
            plan = raw.execute("EXPLAIN (FORMAT JSON) " + statement, parameters).fetchone()[0]
        else:
            plan = [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters)]
        seen.append((statement, plan))

    for engine in engines:
        event.listen(engine, "after_cursor_execute", explain)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "after_cursor_execute", explain)


def _is_ledger(name: str) -> bool:
    """`deliveries`, or the stream's snapshot of its final rows (db.audience.final_snapshot)."""
    return name == "deliveries" or name.startswith("_wx_final_")


def _ledger_reads(plan: Any) -> list[tuple[str, bool]]:
    """Each read of the ledger in a plan: (what it is, whether it sits inside a loop over
    the rows of another table). PostgreSQL: the scan nodes and their index condition,
    inside a loop when on the inner side of a Nested Loop. SQLite: its SCAN/SEARCH lines;
    every join there is a nested loop, so a read beside another table's read is inside one."""
    if all(isinstance(line, str) for line in plan):  # SQLite (an empty plan too)
        reads = [line for line in plan if line.startswith(("SCAN ", "SEARCH "))]
        ledger = [line for line in reads if _is_ledger(line.split()[1])]
        return [(line, len(reads) > 1) for line in ledger]
    found: list[tuple[str, bool]] = []

    def walk(node: dict[str, Any], inner: bool) -> None:
        name = node.get("Relation Name", "")
        if _is_ledger(name):
            condition = node.get("Index Cond") or node.get("Recheck Cond") or "no condition"
            found.append((f"{node['Node Type']} on {name}: {condition}", inner))
        for child in node.get("Plans", []):
            looped = node["Node Type"] == "Nested Loop" and child["Parent Relationship"] == "Inner"
            walk(child, inner or looped)

    walk(plan[0]["Plan"], False)
    return found


def _by_openid(read: str) -> bool:
    return "openid" in read


def _assert_batches_do_not_read_the_campaign(seen: list[tuple[str, Any]]) -> None:
    """No statement reads the ledger by campaign_id alone inside a loop over other rows, and
    no statement run per batch (more than once) reads it other than by openid."""
    runs = Counter(statement for statement, _ in seen)
    for statement, plan in seen:
        for read, looped in _ledger_reads(plan):
            assert _by_openid(read) or not looped, f"{read} inside a loop:\n{statement}"
            assert _by_openid(read) or runs[statement] == 1, f"{read} per batch:\n{statement}"


def _analyze(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE deliveries")


@pytest.fixture
def ledger_statistics(db_engine: Engine) -> Iterator[None]:
    """The test analyzes `deliveries`; SQLite's statistics go afterwards, since they outlive
    the rows and would change the plans later tests of the session read."""
    yield
    if db_engine.dialect.name == "sqlite":
        with db_engine.begin() as connection:
            tables = connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE name LIKE 'sqlite_stat%'"
            ).scalars()
            for name in list(tables):
                connection.exec_driver_sql(f"DELETE FROM {name} WHERE tbl = 'deliveries'")


@pytest.mark.usefixtures("ledger_statistics")
def test_a_batch_never_reads_the_ledger_by_campaign_alone(
    db_engine: Engine, audience_engine: Engine
) -> None:
    """The plans of every statement the stream runs, on an empty ledger and on a half-done
    one whose statistics know another campaign only (the state in which PostgreSQL read the
    whole campaign per batch through `(campaign_id, status)`)."""
    engines = (audience_engine, db_engine)
    _add(db_engine, *({"openid": f"o-{i:03d}"} for i in range(300)))
    _campaign(db_engine)
    _analyze(db_engine)  # the statistics say: no ledger rows at all
    with _planned(*engines) as seen:
        batches = _stream(engines, batch_size=50)
    assert [len(batch) for batch in batches] == [50] * 6
    assert any("_wx_w" in statement for statement, _ in seen), "the stream statement was read"
    _assert_batches_do_not_read_the_campaign(seen)
    runs = Counter(statement for statement, _ in seen)
    assert [s for s, n in runs.items() if n > 1] == [], "a new campaign asks nothing per batch"

    _campaign(db_engine, "old")
    old = [DeliveryOutcome(f"x-{i:04d}", DeliveryStatus.SENT, msgid=i) for i in range(2000)]
    half = [DeliveryOutcome(f"o-{i:03d}", DeliveryStatus.SENT, msgid=i) for i in range(0, 300, 2)]
    with db_engine.begin() as connection:
        record_outcomes(connection, "old", old)
    _analyze(db_engine)  # the statistics know "old" only
    with db_engine.begin() as connection:
        record_outcomes(connection, "camp", half)
    with _planned(*engines) as seen:
        batches = _stream(engines, batch_size=50)
    assert sorted(_flat(batches)) == [f"o-{i:03d}" for i in range(1, 300, 2)]
    per_batch = [s for s, n in Counter(s for s, _ in seen).items() if n > 1]
    assert per_batch, "final rows were asked batch by batch"
    _assert_batches_do_not_read_the_campaign(seen)
    asked = [read for s, plan in seen if s in per_batch for read, _ in _ledger_reads(plan)]
    assert asked and all("_wx_final_" in read and _by_openid(read) for read in asked), asked


def test_closing_a_resumed_stream_gives_the_snapshot_connection_back(
    db_url: str, db_engine: Engine, audience_engine: Engine
) -> None:
    """The snapshot of final rows lives in a temporary table of one ledger connection: a
    stream closed half-way returns that connection to the pool without its table, and a new
    campaign's stream (nothing final) holds none."""
    _add(db_engine, *({"openid": f"o-{i:03d}"} for i in range(100)))
    _campaign(db_engine)
    with db_engine.begin() as connection:
        record_outcomes(connection, "camp", [DeliveryOutcome("o-000", DeliveryStatus.SENT)])
    ledger = make_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=3)
    try:
        fresh = _stream_iter((audience_engine, ledger), batch_size=10, campaign_id="new")
        assert len(next(fresh)) == 10
        assert ledger.pool.checkedout() == 0  # nothing final: nothing kept
        fresh.close()
        stream = _stream_iter((audience_engine, ledger), batch_size=10)
        assert [row.openid for row in next(stream)] == [f"o-{i:03d}" for i in range(1, 10)]
        assert ledger.pool.checkedout() == 1  # the snapshot's connection, while it streams
        stream.close()
        with ledger.connect() as connection:  # the pool's only connection: not kept
            if connection.dialect.name == "postgresql":
                sql = "SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
            else:
                sql = "SELECT name FROM sqlite_temp_master"
            left = list(connection.exec_driver_sql(sql).scalars())
        assert not [name for name in left if name.startswith("_wx_final_")], left
    finally:
        ledger.dispose()
