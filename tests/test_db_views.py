"""The analyst views (`campaign_stats`, `delivery_failures`), the `errcodes` reference table,
and every example query of docs/analytics.md, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, func, inspect, select, text
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from db.engine import make_engine
from db.errcodes import ErrcodeEntry, sync_errcodes
from db.migrate import alembic_config, current_revision, head_revision, upgrade
from db.models import campaigns, deliveries, errcodes, recipients
from db.types import sqlite_text
from tasks.reference import errcode_entries, sync_errcodes_table
from wechat.errors import OFFICIAL_ACCOUNT, WECOM_OVERRIDES, lookup

ROOT = Path(__file__).resolve().parents[1]
ANALYTICS_DOC = ROOT / "docs" / "analytics.md"
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
VIEWS = ("campaign_stats", "delivery_failures")
COUNT_COLUMNS = (
    "audience",
    "eligible",
    "skipped",
    "skipped_outside_window",
    "skipped_unsubscribed",
    "skipped_nothing_to_send",
    "skipped_frequency_cap",
    "sent",
    "failed",
    "failed_retry",
    "failed_refresh",
    "failed_recipient",
    "failed_request",
    "failed_quota",
    "failed_config",
    "invalid",
    "pending",
    "unknown",
    "delivered",
    "blocked",
    "freq_limited",
    "system_failed",
    "receipts_pending",
)


# -- fixture data -------------------------------------------------------------------------------


def _campaign(
    connection: Connection, campaign_id: str, created_at: datetime = T0, **changes: Any
) -> None:
    values: dict[str, Any] = {
        "id": campaign_id,
        "name": f"name of {campaign_id}",
        "app": "default",
        "kind": "template",
        "template_id": "TPL1",
        "audience_sql": "SELECT openid FROM recipients",
        "status": "completed",
        "parameters": {},
        "audience_count": 0,
        "eligible_count": 0,
        "sent_count": 0,
        "failed_count": 0,
        "skipped_count": 0,
        "invalid_count": 0,
        "pending_count": 0,
        "run_count": 1,
        "created_at": created_at,
        "updated_at": created_at,
    }
    connection.execute(campaigns.insert().values(values | changes))


def _rows(connection: Connection, campaign_id: str, rows: Iterable[dict[str, Any]]) -> None:
    defaults: dict[str, Any] = {
        "campaign_id": campaign_id,
        "reason": None,
        "errcode": None,
        "errmsg": None,
        "error_class": None,
        "attempts": 1,
        "first_attempt_at": T0,
        "last_attempt_at": T0,
        "sent_at": None,
        "receipt_status": None,
        "updated_at": T0,
    }
    connection.execute(deliveries.insert(), [defaults | row for row in rows])


def _sent(openid: str, at: datetime, receipt: str | None = None) -> dict[str, Any]:
    return {
        "openid": openid,
        "status": "sent",
        "first_attempt_at": at,
        "last_attempt_at": at,
        "sent_at": at,
        "receipt_status": receipt,
    }


def _failed(
    openid: str,
    errcode: int | None,
    error_class: str | None,
    attempts: int = 1,
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "openid": openid,
        "status": "failed",
        "errcode": errcode,
        "errmsg": None if errcode is None else f"errmsg {errcode} rid: 1-2-3",
        "error_class": error_class,
        "reason": reason,
        "attempts": attempts,
        "first_attempt_at": T0,
        "last_attempt_at": T0 + attempts * SECOND,
    }


# openid → (errcode, error_class, attempts, reason, the meaning delivery_failures must show)
FAILURES: dict[str, tuple[int | None, str | None, int, str | None, str | None]] = {
    "f-recipient": (43004, "RECIPIENT", 1, None, lookup(43004).meaning),
    "f-retry": (45011, "RETRY", 5, "gave up after 5 attempts", lookup(45011).meaning),
    "f-timeout": (None, "RETRY", 3, "gave up after 3 attempts: timeout", None),
    "f-refresh": (40001, "REFRESH", 2, None, lookup(40001).meaning),
    "f-request": (40037, "REQUEST", 1, None, lookup(40037).meaning),
    "f-unknown": (99999, "REQUEST", 1, "errcode 99999 (unknown errcode)", None),
    "f-quota": (45009, "QUOTA", 1, None, lookup(45009).meaning),
    # 48002: RECIPIENT for an Official Account, CONFIG for WeCom; the class decides.
    "f-oa-48002": (48002, "RECIPIENT", 1, None, lookup(48002).meaning),
    "f-wecom-48002": (48002, "CONFIG", 1, None, lookup(48002, "wecom").meaning),
}


def _load_fixture(engine: Engine) -> None:
    """Four campaigns whose every figure is known: a full one, one without rows, one whose
    sends all happened in the same instant, and one that only skipped."""
    with engine.begin() as connection:
        _campaign(connection, "full", T0 - 3600 * SECOND, status="completed_with_failures")
        _rows(
            connection,
            "full",
            [
                _sent("s1", T0, "delivered"),
                _sent("s2", T0 + 10 * SECOND, "delivered"),
                _sent("s3", T0 + 20 * SECOND, "user_block"),
                _sent("s4", T0 + 30 * SECOND, "system_failed"),
                _sent("s5", T0 + 40250 * SECOND / 1000),  # no receipt yet; 40.25 s after s1
                *(_failed(openid, *spec[:4]) for openid, spec in FAILURES.items()),
                {"openid": "k1", "status": "skipped", "reason": "outside_window"},
                {"openid": "k2", "status": "skipped", "reason": "outside_window"},
                {"openid": "k3", "status": "skipped", "reason": "unsubscribed"},
                {"openid": "k4", "status": "skipped", "reason": "nothing_to_send"},
                {"openid": "k5", "status": "skipped", "reason": "frequency_cap"},
                {"openid": "i1", "status": "invalid", "reason": "thing1: longer than 20"},
                {"openid": "p1", "status": "pending", "errcode": 45009, "error_class": "QUOTA"},
                {"openid": "u1", "status": "unknown", "reason": "no_answer"},
            ],
        )
        _campaign(connection, "empty", T0, status="created", template_id=None, kind="subscribe")
        _campaign(connection, "instant", T0 + SECOND, kind="customer_service", template_id=None)
        _rows(connection, "instant", [_sent("a", T0), _sent("b", T0)])
        _campaign(connection, "skips", T0 + 2 * SECOND)
        _rows(connection, "skips", [{"openid": "x", "status": "skipped", "reason": "unsubscribed"}])


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_COLUMNS, 0)


def _no_sends() -> dict[str, Any]:
    return {
        "success_rate": None,
        "delivery_rate": None,
        "first_sent_at": None,
        "last_sent_at": None,
        "duration_seconds": None,
        "messages_per_second": None,
    }


def _expected_stats() -> dict[str, dict[str, Any]]:
    full = _zero_counts() | {
        "audience": 5 + len(FAILURES) + 5 + 1 + 1 + 1,
        "eligible": 5 + len(FAILURES) + 1 + 1 + 1,
        "skipped": 5,
        "skipped_outside_window": 2,
        "skipped_unsubscribed": 1,
        "skipped_nothing_to_send": 1,
        "skipped_frequency_cap": 1,
        "sent": 5,
        "failed": 9,
        "failed_retry": 2,
        "failed_refresh": 1,
        "failed_recipient": 2,
        "failed_request": 2,
        "failed_quota": 1,
        "failed_config": 1,
        "invalid": 1,
        "pending": 1,
        "unknown": 1,  # in doubt: left out of success_rate, like pending
        "delivered": 2,
        "blocked": 1,
        "system_failed": 1,
        "receipts_pending": 1,
        "success_rate": 0.3333,  # 5 / (5 + 9 + 1)
        "delivery_rate": 0.5,  # 2 delivered of 4 receipts
        "first_sent_at": T0,
        "last_sent_at": T0 + 40250 * SECOND / 1000,
        "duration_seconds": 40.25,
        "messages_per_second": 0.1242,  # 5 / 40.25
    }
    instant = (
        _zero_counts()
        | _no_sends()
        | {
            "audience": 2,
            "eligible": 2,
            "sent": 2,
            "receipts_pending": 2,
            "success_rate": 1.0,
            "first_sent_at": T0,
            "last_sent_at": T0,
            "duration_seconds": 0.0,
        }
    )
    skips = _zero_counts() | _no_sends() | {"audience": 1, "skipped": 1, "skipped_unsubscribed": 1}
    campaign = {"name": "", "app": "default", "kind": "template", "template_id": "TPL1"}
    return {
        "empty": campaign
        | {"kind": "subscribe", "template_id": None, "status": "created", "created_at": T0}
        | _zero_counts()
        | _no_sends(),
        "full": campaign
        | {"status": "completed_with_failures", "created_at": T0 - 3600 * SECOND}
        | full,
        "instant": campaign
        | {"kind": "customer_service", "template_id": None, "status": "completed"}
        | {"created_at": T0 + SECOND}
        | instant,
        "skips": campaign | {"status": "completed", "created_at": T0 + 2 * SECOND} | skips,
    }


def _stamp(value: Any, dialect: str) -> datetime | None:
    """A view's timestamp as an aware datetime, checking the raw form on the way: SQLite must
    give the canonical text (comparable with the table columns), PostgreSQL a timestamptz."""
    if value is None:
        return None
    if dialect == "sqlite":
        assert isinstance(value, str), value
        parsed = datetime.fromisoformat(value).replace(tzinfo=UTC)
        assert value == sqlite_text(parsed), f"{value!r} is not the canonical text"
        return parsed
    assert isinstance(value, datetime) and value.tzinfo is not None, value
    return value


def _view(connection: Connection, sql: str) -> list[dict[str, Any]]:
    return [dict(row) for row in connection.execute(text(sql)).mappings()]


# -- campaign_stats -----------------------------------------------------------------------------


def test_campaign_stats_every_figure(db_engine: Engine) -> None:
    _load_fixture(db_engine)
    dialect = db_engine.dialect.name
    with db_engine.connect() as connection:
        rows = _view(connection, "SELECT * FROM campaign_stats ORDER BY campaign_id")
    expected = _expected_stats()
    assert [row["campaign_id"] for row in rows] == sorted(expected)
    columns = list(rows[0])
    assert columns[:7] == [
        "campaign_id",
        "name",
        "app",
        "kind",
        "template_id",
        "status",
        "created_at",
    ]
    assert set(columns) == {"campaign_id", *expected["full"]}
    for row in rows:
        campaign_id = row["campaign_id"]
        want = expected[campaign_id] | {"name": f"name of {campaign_id}"}
        got = dict(row)
        for column in ("created_at", "first_sent_at", "last_sent_at"):
            got[column] = _stamp(got[column], dialect)
        for column, value in want.items():
            # Integers come back as integers, rates as floats (never Decimal or text).
            if isinstance(value, int):
                assert type(got[column]) is int, (campaign_id, column, got[column])
            elif isinstance(value, float):
                assert type(got[column]) is float, (campaign_id, column, got[column])
        assert {k: got[k] for k in want} == want, campaign_id


def test_campaign_stats_agrees_with_the_ledger_functions(db_engine: Engine) -> None:
    from db.ledger import status_counts

    _load_fixture(db_engine)
    with db_engine.connect() as connection:
        for row in _view(connection, "SELECT * FROM campaign_stats"):
            counts = status_counts(connection, row["campaign_id"])
            assert {status: row[status] for status in counts} == counts
            assert row["audience"] == sum(counts.values())


def test_campaign_stats_filters_before_reading_the_ledger(db_engine: Engine) -> None:
    """A filter on a campaign column reaches the campaigns scan (the point of grouping by
    every campaign column): the plan looks the ledger up by campaign_id, never scans it."""
    _load_fixture(db_engine)
    sqlite = db_engine.dialect.name == "sqlite"
    since = sqlite_text(T0) if sqlite else T0.isoformat()
    with db_engine.connect() as connection:
        rows = _view(connection, f"SELECT * FROM campaign_stats WHERE created_at >= '{since}'")
        if sqlite:
            sql = "EXPLAIN QUERY PLAN SELECT * FROM campaign_stats WHERE created_at >= ?"
            plan = " | ".join(row[-1] for row in connection.exec_driver_sql(sql, (since,)))
            assert "SEARCH d USING INDEX ix_deliveries_campaign_id_status" in plan, plan
            assert "SCAN d" not in plan, plan
    assert sorted(row["campaign_id"] for row in rows) == ["empty", "instant", "skips"]


# -- delivery_failures --------------------------------------------------------------------------


def test_delivery_failures_every_row(db_engine: Engine) -> None:
    _load_fixture(db_engine)
    dialect = db_engine.dialect.name
    with db_engine.connect() as connection:
        rows = _view(connection, "SELECT * FROM delivery_failures ORDER BY openid")
    assert list(rows[0]) == [
        "campaign_id",
        "campaign_name",
        "openid",
        "errcode",
        "errmsg",
        "error_class",
        "meaning",
        "reason",
        "attempts",
        "first_attempt_at",
        "last_attempt_at",
    ]
    expected = [
        {
            "campaign_id": "full",
            "campaign_name": "name of full",
            "openid": openid,
            "errcode": errcode,
            "errmsg": None if errcode is None else f"errmsg {errcode} rid: 1-2-3",
            "error_class": error_class,
            "meaning": meaning,
            "reason": reason,
            "attempts": attempts,
            "first_attempt_at": T0,
            "last_attempt_at": T0 + attempts * SECOND,
        }
        for openid, (errcode, error_class, attempts, reason, meaning) in sorted(FAILURES.items())
    ]
    for row in rows:
        row["first_attempt_at"] = _stamp(row["first_attempt_at"], dialect)
        row["last_attempt_at"] = _stamp(row["last_attempt_at"], dialect)
    assert rows == expected
    # Sent, skipped, invalid, pending (it has an errcode) and unknown rows are not failures.
    assert {row["openid"] for row in rows} == set(FAILURES)


def test_every_errcode_of_wechat_errors_explains_itself(db_engine: Engine) -> None:
    """Each row of wechat/errors.py, recorded with the class the sender would give it for
    that account kind, shows the meaning `lookup` gives: the view's WeCom/Official Account
    choice by class holds for the whole table (and would catch an override that keeps the
    Official Account's class but changes the meaning)."""
    cases: dict[str, tuple[int, str, str]] = {}
    for kind, table in (("official_account", OFFICIAL_ACCOUNT), ("wecom", WECOM_OVERRIDES)):
        for code in table:
            row = lookup(code, kind)  # type: ignore[arg-type]
            cases[f"{kind}-{code}"] = (code, str(row.error_class), row.meaning)
    for code in OFFICIAL_ACCOUNT.keys() - WECOM_OVERRIDES.keys():
        row = lookup(code, "wecom")
        cases[f"wecom-{code}"] = (code, str(row.error_class), row.meaning)
    with db_engine.begin() as connection:
        _campaign(connection, "all-codes")
        _rows(connection, "all-codes", (_failed(key, c, cls) for key, (c, cls, _) in cases.items()))
    with db_engine.connect() as connection:
        shown = {
            row["openid"]: row["meaning"]
            for row in _view(connection, "SELECT openid, meaning FROM delivery_failures")
        }
    assert shown == {key: meaning for key, (_, _, meaning) in cases.items()}


# -- the errcodes table -------------------------------------------------------------------------


def _stored(connection: Connection) -> set[tuple[str, int, str, str]]:
    query = select(
        errcodes.c.account_kind, errcodes.c.errcode, errcodes.c.error_class, errcodes.c.meaning
    )
    return {tuple(row) for row in connection.execute(query)}  # type: ignore[misc]


def test_the_fixture_database_has_every_errcode(db_engine: Engine) -> None:
    entries = errcode_entries()
    assert len(entries) == len(OFFICIAL_ACCOUNT) + len(WECOM_OVERRIDES)
    with db_engine.connect() as connection:
        assert _stored(connection) == {tuple(entry) for entry in entries}
    again = sync_errcodes_table(db_engine)
    assert not again.changed and "already up to date" in again.describe()


def test_sync_errcodes_adds_changes_and_removes(blank_db_url: str) -> None:
    upgrade(blank_db_url)
    engine = make_engine(blank_db_url, poolclass=NullPool)
    try:
        first = [
            ErrcodeEntry("official_account", -1, "RETRY", "system busy"),
            ErrcodeEntry("official_account", 43004, "RECIPIENT", "not a follower"),
            ErrcodeEntry("wecom", 40001, "CONFIG", "invalid secret"),
        ]
        with engine.begin() as connection:
            done = sync_errcodes(connection, first)
        assert (done.rows, done.inserted, done.updated, done.deleted) == (3, 3, 0, 0)
        assert "3 added" in done.describe()
        second = [
            ("official_account", -1, "RETRY", "system busy, retry later"),  # changed
            ("wecom", 40001, "CONFIG", "invalid secret"),  # same
            ("wecom", 12345, "CONFIG", "made up"),  # new; 43004 is gone
        ]
        with engine.begin() as connection:
            done = sync_errcodes(connection, second)
            assert _stored(connection) == set(second)
        assert (done.inserted, done.updated, done.deleted) == (1, 1, 1)
        with engine.begin() as connection:
            assert not sync_errcodes(connection, second).changed
        with pytest.raises(ValueError, match="listed twice"), engine.begin() as connection:
            sync_errcodes(connection, [*second, ("wecom", 12345, "CONFIG", "again")])
        with pytest.raises(ValueError, match="account kind"), engine.begin() as connection:
            sync_errcodes(connection, [("miniprogram", 1, "RETRY", "x")])
        full = sync_errcodes_table(engine)
        # -1 and WeCom's 40001 are already right; the made-up 12345 goes.
        rows = len(errcode_entries())
        assert (full.rows, full.inserted, full.updated, full.deleted) == (rows, rows - 2, 0, 1)
    finally:
        engine.dispose()


# -- migration and CLI --------------------------------------------------------------------------


def _views_and_errcodes(url: str) -> tuple[set[str], set[str], int | None]:
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            tables = set(inspector.get_table_names())
            views = set(inspector.get_view_names()) & set(VIEWS)
            count = (
                connection.execute(select(func.count()).select_from(errcodes)).scalar_one()
                if "errcodes" in tables
                else None
            )
        return views, tables, count
    finally:
        engine.dispose()


def test_cli_db_upgrade_creates_the_views_and_fills_errcodes(blank_db_url: str) -> None:
    import typer

    from cli import db as db_cli

    app = typer.Typer()
    db_cli.register(app)
    runner = CliRunner()
    done = runner.invoke(app, ["db", "upgrade", "--database-url", blank_db_url])
    assert done.exit_code == 0, done.output
    rows = len(errcode_entries())
    assert f"to {head_revision()}" in done.output
    assert f"errcodes: {rows} rows ({rows} added, 0 changed, 0 removed)." in done.output
    views, _tables, count = _views_and_errcodes(blank_db_url)
    assert views == set(VIEWS) and count == rows
    again = runner.invoke(app, ["db", "upgrade", "--database-url", blank_db_url])
    assert again.exit_code == 0, again.output
    assert "already at the latest schema" in again.output
    assert f"errcodes: {rows} rows, already up to date." in again.output


def test_migration_downgrades_and_upgrades_again(blank_db_url: str) -> None:
    upgrade(blank_db_url)
    assert current_revision(blank_db_url) == head_revision()
    command.downgrade(alembic_config(blank_db_url), "0002")
    assert set(VIEWS) <= _views_and_errcodes(blank_db_url)[0]
    command.downgrade(alembic_config(blank_db_url), "0001")
    views, tables, _count = _views_and_errcodes(blank_db_url)
    assert current_revision(blank_db_url) == "0001"
    assert views == set() and "errcodes" not in tables and "deliveries" in tables
    command.downgrade(alembic_config(blank_db_url), "base")
    assert _views_and_errcodes(blank_db_url)[1] <= {"alembic_version"}
    upgrade(blank_db_url)
    views, tables, count = _views_and_errcodes(blank_db_url)
    assert views == set(VIEWS) and "errcodes" in tables and count == 0  # filled by the sync


# -- the example queries of docs/analytics.md ---------------------------------------------------


@dataclass(frozen=True)
class DocQuery:
    heading: str
    dialects: tuple[str, ...]
    sql: str
    line: int


_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_DIALECTS = ("sqlite", "postgresql")


def doc_queries() -> list[DocQuery]:
    """Every ```sql block of the doc: `sql` runs on both databases, `sql sqlite` or `sql
    postgresql` on one. Any other SQL-looking block is an error, so none goes untested."""
    doc = ANALYTICS_DOC.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(doc):
        info = match.group(1).split()
        if not info or info[0] != "sql":
            assert not info or info[0] not in ("sqlite", "postgresql", "psql"), info
            continue
        line = doc.count("\n", 0, match.start()) + 1
        assert len(info) <= 2 and set(info[1:]) <= set(_DIALECTS), f"line {line}: {info}"
        before = doc[: match.start()]
        heading = re.findall(r"^#+ (.+)$", before, re.MULTILINE)[-1]
        sql = match.group(2).strip()
        assert sql.rstrip(";").count(";") == 0, f"line {line}: one statement per block"
        found.append(DocQuery(heading, tuple(info[1:]) or _DIALECTS, sql, line))
    return found


def _load_doc_fixture(engine: Engine, now: datetime) -> dict[str, set[str]]:
    """Campaigns either side of yesterday's boundaries (Beijing and UTC) and recipients either
    side of "a sent message this week"; returns the ids each checked query must find."""
    beijing = timezone(timedelta(hours=8))  # Asia/Shanghai: UTC+8, no daylight saving time
    bj_today = now.astimezone(beijing).replace(hour=0, minute=0, second=0, microsecond=0)
    utc_today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    half = timedelta(minutes=30)
    day = timedelta(days=1)
    created = {
        "bj-before": bj_today - day - half,
        "bj-yesterday-early": bj_today - day + half,
        "bj-yesterday-late": bj_today - half,
        "bj-today": bj_today + half,
        "utc-before": utc_today - day - half,
        "utc-yesterday-early": utc_today - day + half,
        "utc-yesterday-late": utc_today - half,
        "utc-today": utc_today + half,
    }
    with engine.begin() as connection:
        for campaign_id, at in created.items():
            _campaign(connection, campaign_id, at)
        _campaign(connection, "week", now - 10 * day)
        _rows(
            connection,
            "week",
            [
                _sent("r-sent-2-days-ago", now - 2 * day),
                _sent("r-sent-6-days-23-hours-ago", now - 7 * day + timedelta(hours=1)),
                _sent("r-sent-10-days-ago", now - 10 * day),
            ],
        )
        # In a campaign of the last 7 days, so both "failures by reason" queries find it.
        _rows(connection, "utc-yesterday-late", [_failed("r-failed-yesterday", 43004, "RECIPIENT")])
        connection.execute(
            recipients.insert(),
            [
                {"app_id": "wxapp", "openid": openid, "subscribed": True, "attributes": {}}
                for openid in (
                    "r-sent-2-days-ago",
                    "r-sent-6-days-23-hours-ago",
                    "r-sent-10-days-ago",
                    "r-failed-yesterday",
                    "r-never",
                )
            ],
        )
    return {
        "bj": {"bj-yesterday-early", "bj-yesterday-late"},
        "utc": {"utc-yesterday-early", "utc-yesterday-late"},
        "week": {"r-sent-10-days-ago", "r-failed-yesterday", "r-never"},
    }


def _only(prefix: str, want: set[str]) -> Callable[[list[dict[str, Any]]], None]:
    def check(rows: list[dict[str, Any]]) -> None:
        got = {row["campaign_id"] for row in rows if row["campaign_id"].startswith(prefix)}
        assert got == want

    return check


def _nothing_this_week(want: set[str]) -> Callable[[list[dict[str, Any]]], None]:
    def check(rows: list[dict[str, Any]]) -> None:
        assert {row["openid"] for row in rows} == want

    return check


def _failures_by_reason(rows: list[dict[str, Any]]) -> None:
    assert [(r["errcode"], r["error_class"], r["meaning"], r["failures"]) for r in rows] == [
        (43004, "RECIPIENT", lookup(43004).meaning, 1)
    ]


def test_doc_marks_every_query(db_backend: str) -> None:
    queries = doc_queries()
    mine = [q for q in queries if db_backend in q.dialects]
    assert len(mine) >= 9, [q.heading for q in mine]
    for heading in _CHECKED:
        assert any(q.heading == heading for q in mine), f"no {db_backend} query under {heading}"


_CHECKED: dict[str, str] = {  # heading → which expectation of _load_doc_fixture
    "Yesterday's campaigns (Beijing time)": "bj",
    "Yesterday's campaigns (UTC)": "utc",
    "Recipients who got nothing this week": "week",
    "Failures by reason": "failures",
}


@pytest.mark.parametrize("query", doc_queries(), ids=lambda q: f"line{q.line}")
def test_doc_example_query_runs(db_engine: Engine, query: DocQuery) -> None:
    dialect = db_engine.dialect.name
    if dialect not in query.dialects:
        pytest.skip(f"a {'/'.join(query.dialects)} query")
    now = datetime.now(UTC)
    expect = _load_doc_fixture(db_engine, now)
    checks: Mapping[str, Callable[[list[dict[str, Any]]], None]] = {
        "bj": _only("bj-", expect["bj"]),
        "utc": _only("utc-", expect["utc"]),
        "week": _nothing_this_week(expect["week"]),
        "failures": _failures_by_reason,
    }
    with db_engine.connect() as connection:
        # The driver gets the text as an analyst's client would: no bind-parameter parsing.
        result = connection.exec_driver_sql(query.sql)
        rows = [dict(row) for row in result.mappings()]
    which = _CHECKED.get(query.heading)
    if which is not None:
        checks[which](rows)
