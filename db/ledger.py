"""The delivery ledger: one row per (campaign, openid). The only place that writes
`deliveries` for a send; every function takes the connection (or session) first and never
commits.

Two writes per message, one statement per call each (docs/architecture.md, decision 5; the
send path marks 128 rows per call and writes up to 500 answers per call):

- `record_attempts`, committed before the sends start: the row is `pending` with reason
  `in_flight`, its client_msg_id and when the attempt began;
- `record_outcomes`, once WeChat answered: the answer replaces the in-flight mark.

A row still in flight after a crash was sent or not; nobody knows. A re-send carrying the
same client_msg_id within WeChat's 10-minute dedupe window cannot deliver twice, so a resume
sends it again while that holds, and otherwise records it `unknown` and leaves it alone
(`settle_unanswered`, and `record_attempts` itself) until the operator asks for it
(`reopen_unknown`).

Precedence, enforced in the upserts' `DO UPDATE … WHERE`, so no order of writers can break it:

- a `sent`, `skipped` or `invalid` row never changes again (receipts use their own columns);
- a `failed` or `unknown` row changes only to another final status (a retry round's answer);
- a `pending` row takes whatever comes next;
- `attempts` adds up, `first_attempt_at` keeps the earliest, msgid/client_msg_id/sent_at are
  kept when the new outcome has none.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, column, func, or_, select, table, update
from sqlalchemy.orm import Session

from db.audience import RETRYABLE_ERROR_CLASSES
from db.models import RECEIPT_STATUSES, deliveries
from db.outcomes import (
    FINAL_STATUSES,
    RESEND_SAFE_FOR,
    TOP_REASONS,
    Attempt,
    DeliveryOutcome,
    DeliveryStatus,
    PendingReason,
    UnknownReason,
)
from db.types import sqlite_text, utcnow

Executor = Connection | Session
# Statuses that never change once stored.
SETTLED_STATUSES = (DeliveryStatus.SENT, DeliveryStatus.SKIPPED, DeliveryStatus.INVALID)
_MAX_ROWS_PER_STATEMENT = 500  # record_attempts, final_openids: IN lists of at most 500

# -- the upsert ---------------------------------------------------------------------------------
# Written once, as SQL, identical on both databases except for how rows arrive: SQLite gets a
# driver executemany of one prepared statement (in-process, no round trips); PostgreSQL one
# statement per batch with a binary array per column (`unnest`), i.e. one round trip. Values are
# converted here exactly as db.types.UTCDateTime would (aware UTC; SQLite's canonical text):
# going through SQLAlchemy's per-value type processing cost 4x more (see docs/database.md).

_COLUMNS: tuple[tuple[str, str], ...] = (  # (column, PostgreSQL array element type)
    ("campaign_id", "text"),
    ("openid", "text"),
    ("status", "text"),
    ("reason", "text"),
    ("errcode", "integer"),
    ("errmsg", "text"),
    ("error_class", "text"),
    ("msgid", "bigint"),
    ("client_msg_id", "text"),
    ("attempts", "integer"),
    ("first_attempt_at", "timestamptz"),
    ("last_attempt_at", "timestamptz"),
    ("sent_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
_TIMESTAMPS = frozenset({"first_attempt_at", "last_attempt_at", "sent_at", "updated_at"})

_ON_CONFLICT = f"""
ON CONFLICT (campaign_id, openid) DO UPDATE SET
  status = excluded.status,
  reason = excluded.reason,
  errcode = excluded.errcode,
  errmsg = excluded.errmsg,
  error_class = excluded.error_class,
  msgid = COALESCE(excluded.msgid, deliveries.msgid),
  client_msg_id = COALESCE(excluded.client_msg_id, deliveries.client_msg_id),
  sent_at = COALESCE(excluded.sent_at, deliveries.sent_at),
  attempts = deliveries.attempts + excluded.attempts,
  first_attempt_at = CASE
    WHEN deliveries.first_attempt_at IS NULL THEN excluded.first_attempt_at
    WHEN excluded.first_attempt_at IS NULL THEN deliveries.first_attempt_at
    WHEN excluded.first_attempt_at < deliveries.first_attempt_at THEN excluded.first_attempt_at
    ELSE deliveries.first_attempt_at END,
  last_attempt_at = COALESCE(excluded.last_attempt_at, deliveries.last_attempt_at),
  updated_at = excluded.updated_at
WHERE deliveries.status = '{DeliveryStatus.PENDING}'
   OR (deliveries.status IN ('{DeliveryStatus.FAILED}', '{DeliveryStatus.UNKNOWN}')
       AND excluded.status <> '{DeliveryStatus.PENDING}')"""

_NAMES = ", ".join(name for name, _ in _COLUMNS)
UPSERT_SQL = {
    "sqlite": f"INSERT INTO deliveries ({_NAMES}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
    + _ON_CONFLICT,
    "postgresql": f"INSERT INTO deliveries ({_NAMES}) SELECT * FROM unnest("
    + ", ".join(f"%b::{kind}[]" for _, kind in _COLUMNS)
    + ")"
    + _ON_CONFLICT,
}


def _connection(executor: Executor) -> Connection:
    return executor.connection() if isinstance(executor, Session) else executor


def _utc(value: datetime | None, sqlite: bool) -> Any:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the ledger stores aware UTC timestamps")
    return sqlite_text(value) if sqlite else value


def _row(
    campaign_id: str, outcome: DeliveryOutcome, now: datetime, sqlite: bool
) -> tuple[Any, ...]:
    return (
        campaign_id,
        outcome.openid,
        str(DeliveryStatus(outcome.status)),
        outcome.reason,
        outcome.errcode,
        outcome.errmsg,
        outcome.error_class,
        outcome.msgid,
        outcome.client_msg_id,
        outcome.attempts,
        _utc(outcome.first_attempt_at, sqlite),
        _utc(outcome.last_attempt_at, sqlite),
        _utc(outcome.sent_at, sqlite),
        _utc(now, sqlite),
    )


def _merge(first: DeliveryOutcome, then: DeliveryOutcome) -> DeliveryOutcome:
    """Two outcomes for one openid in one batch, combined by the ledger's own rules (a single
    INSERT … ON CONFLICT cannot touch a row twice)."""
    if first.status in SETTLED_STATUSES or (
        first.status in (DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN)
        and then.status == DeliveryStatus.PENDING
    ):
        winner, other = first, then
    else:
        winner, other = then, first
    starts = [t for t in (first.first_attempt_at, then.first_attempt_at) if t is not None]
    return DeliveryOutcome(
        openid=winner.openid,
        status=winner.status,
        reason=winner.reason,
        errcode=winner.errcode,
        errmsg=winner.errmsg,
        error_class=winner.error_class,
        msgid=winner.msgid if winner.msgid is not None else other.msgid,
        client_msg_id=winner.client_msg_id or other.client_msg_id,
        attempts=first.attempts + then.attempts,
        first_attempt_at=min(starts) if starts else None,
        last_attempt_at=winner.last_attempt_at or other.last_attempt_at,
        sent_at=winner.sent_at or other.sent_at,
    )


def record_outcomes(
    executor: Executor, campaign_id: str, outcomes: Sequence[DeliveryOutcome]
) -> int:
    """Upsert a batch of outcomes into the ledger in one statement and return how many rows
    were inserted or changed (rows the precedence rules protect are not counted).

    Call it only with answers WeChat gave (or decisions taken: skipped/invalid), never
    before sending. Two outcomes for one openid in the batch are merged first.
    """
    if not outcomes:
        return 0
    unique: dict[str, DeliveryOutcome] = {}
    for outcome in outcomes:
        earlier = unique.get(outcome.openid)
        unique[outcome.openid] = outcome if earlier is None else _merge(earlier, outcome)
    connection = _connection(executor)
    dialect = connection.dialect.name
    sqlite = dialect == "sqlite"
    now = utcnow()
    rows = [_row(campaign_id, outcome, now, sqlite) for outcome in unique.values()]
    parameters: Any = rows if sqlite else tuple(list(column) for column in zip(*rows, strict=True))
    result = connection.exec_driver_sql(
        UPSERT_SQL[dialect], parameters, execution_options={"preserve_rowcount": True}
    )
    return max(result.rowcount, 0)


# -- before the send: attempts ------------------------------------------------------------------

_PENDING, _UNKNOWN = str(DeliveryStatus.PENDING), str(DeliveryStatus.UNKNOWN)
_IN_FLIGHT = str(PendingReason.IN_FLIGHT)

# The in-flight mark. `last_attempt_at` is when the unanswered attempts began: marking a row
# already in flight keeps its stamp, since WeChat's window runs from the first send it took.
_MARK_SET = f"""
ON CONFLICT (campaign_id, openid) DO UPDATE SET
  status = '{_PENDING}',
  reason = '{_IN_FLIGHT}',
  client_msg_id = excluded.client_msg_id,
  last_attempt_at = CASE
    WHEN deliveries.status = '{_PENDING}' AND deliveries.reason = '{_IN_FLIGHT}'
      THEN deliveries.last_attempt_at
    ELSE excluded.last_attempt_at END,
  updated_at = excluded.updated_at"""
_MARK_INTO = (
    "INSERT INTO deliveries (campaign_id, openid, client_msg_id, last_attempt_at, updated_at, "
    "status, reason, attempts)"
)
_MARK_CONSTANTS = f"'{_PENDING}', '{_IN_FLIGHT}', 0"
# SQLite: the keyed read judged every row first (`_verdict`); the upsert only guards statuses.
MARK_SQL = (
    f"{_MARK_INTO} VALUES (?, ?, ?, ?, ?, {_MARK_CONSTANTS})"
    + _MARK_SET
    + f"\nWHERE deliveries.status IN ('{_PENDING}', '{DeliveryStatus.FAILED}')"
)


@functools.cache
def _judging_mark_sql(*, retry_failed: bool, safe_for: timedelta) -> str:
    """PostgreSQL's mark with `_verdict` in its ON CONFLICT WHERE, RETURNING what it marked:
    the conflict goes through the unique (campaign_id, openid) index, the arbiter, so no
    statistics can turn it into a read of the whole campaign (a SELECT of the same openids
    can: docs/database.md, "Plans that must not depend on statistics")."""
    failed = (
        f" OR (deliveries.status = '{DeliveryStatus.FAILED}' AND deliveries.error_class IN "
        f"({', '.join(repr(c) for c in RETRYABLE_ERROR_CLASSES)}))"
        if retry_failed
        else ""
    )
    return f"""{_MARK_INTO} SELECT c, o, m, a, u, {_MARK_CONSTANTS} FROM unnest(
  %b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[]) AS t(c, o, m, a, u)
{_MARK_SET}
WHERE (deliveries.status = '{_PENDING}' AND deliveries.reason IS DISTINCT FROM '{_IN_FLIGHT}')
   OR (deliveries.status = '{_PENDING}' AND deliveries.client_msg_id IS NOT NULL
       AND deliveries.last_attempt_at >= excluded.last_attempt_at
           - interval '{safe_for.total_seconds():.6f} seconds'){failed}
RETURNING openid"""


@dataclass(frozen=True, slots=True)
class RecordedAttempts:
    """What `record_attempts` did: the openids now marked in flight (send these and only
    these) and those it recorded `unknown` instead (a re-send would not be deduped)."""

    marked: frozenset[str]
    unknown: frozenset[str]


def _verdict(stored: Any, attempt: Attempt, *, retry_failed: bool, safe_for: timedelta) -> str:
    """What to do with one attempt, given the row the ledger holds: mark, unknown or final."""
    if stored is None or (stored.status == _PENDING and stored.reason != _IN_FLIGHT):
        return "mark"
    if stored.status == _PENDING:  # in flight: an earlier attempt never got its answer
        began = stored.last_attempt_at
        if stored.client_msg_id is None or began is None or attempt.attempted_at - began > safe_for:
            return "unknown"
        return "mark"
    return "final" if _final_for_rerun(stored, retry_failed=retry_failed) else "mark"


def record_attempts(
    executor: Executor,
    campaign_id: str,
    attempts: Sequence[Attempt],
    *,
    retry_failed: bool = False,
    safe_for: timedelta = RESEND_SAFE_FOR,
) -> RecordedAttempts:
    """Record that these sends are about to start; commit it before the first of them.

    Each row becomes `pending` with reason `in_flight`, the attempt's client_msg_id and its
    time in `last_attempt_at`, until `record_outcomes` writes the answer. Returns the
    openids marked; send those and no others. Not marked:

    - a final row (`sent`, `skipped`, `invalid`, `unknown`, and `failed` unless
      `retry_failed` and its class is retryable, as `_final_for_rerun` judges);
    - a row still in flight from an earlier attempt whose answer was never recorded, when
      the new attempt comes more than `safe_for` after it (WeChat would no longer drop the
      repeat) or the kind has no client_msg_id at all: it is recorded `unknown` (reason
      `no_answer`) and reported as such. Inside the window it is marked and may be sent:
      the repeat carries the same client_msg_id, so WeChat sends it once.

    Asks by (campaign_id, openid) only. SQLite: one keyed read, then at most two writes.
    PostgreSQL: one upsert that judges in its ON CONFLICT clause (`_judge_and_mark`), and an
    UPDATE of rows in doubt only when there are any.
    """
    wanted: dict[str, Attempt] = {}
    for attempt in attempts:
        if attempt.attempted_at.tzinfo is None:
            raise ValueError(f"naive attempted_at for {attempt.openid!r}: use aware UTC")
        earlier = wanted.get(attempt.openid)
        if earlier is None or attempt.attempted_at < earlier.attempted_at:
            wanted[attempt.openid] = attempt
    if not wanted:
        return RecordedAttempts(frozenset(), frozenset())
    connection = _connection(executor)
    if connection.dialect.name != "sqlite":
        return _judge_and_mark(connection, campaign_id, wanted, retry_failed, safe_for)
    # SQLite: a keyed read, each row judged here, then the marks.
    query = select(
        deliveries.c.openid,
        deliveries.c.status,
        deliveries.c.reason,
        deliveries.c.error_class,
        deliveries.c.client_msg_id,
        deliveries.c.last_attempt_at,
    ).where(
        deliveries.c.campaign_id == campaign_id,
        deliveries.c.openid.in_(bindparam("openids", expanding=True)),
    )
    openids = list(wanted)
    stored: dict[str, Any] = {}
    for start in range(0, len(openids), _MAX_ROWS_PER_STATEMENT):
        chunk = openids[start : start + _MAX_ROWS_PER_STATEMENT]
        stored.update((row.openid, row) for row in connection.execute(query, {"openids": chunk}))
    verdicts = {
        openid: _verdict(stored.get(openid), attempt, retry_failed=retry_failed, safe_for=safe_for)
        for openid, attempt in wanted.items()
    }
    now = utcnow()
    unknown = [openid for openid, verdict in verdicts.items() if verdict == "unknown"]
    for start in range(0, len(unknown), _MAX_ROWS_PER_STATEMENT):
        connection.execute(
            _to_unknown(campaign_id, now).where(
                deliveries.c.openid.in_(unknown[start : start + _MAX_ROWS_PER_STATEMENT])
            )
        )
    marked = [wanted[openid] for openid, verdict in verdicts.items() if verdict == "mark"]
    if marked:
        rows = [
            (
                campaign_id,
                a.openid,
                a.client_msg_id,
                _utc(a.attempted_at, sqlite=True),
                _utc(now, sqlite=True),
            )
            for a in marked
        ]
        connection.exec_driver_sql(MARK_SQL, rows)
    return RecordedAttempts(frozenset(a.openid for a in marked), frozenset(unknown))


def _judge_and_mark(
    connection: Connection,
    campaign_id: str,
    wanted: dict[str, Attempt],
    retry_failed: bool,
    safe_for: timedelta,
) -> RecordedAttempts:
    """`record_attempts` on PostgreSQL: one upsert that marks what `_verdict` would and
    returns it; of the rest, the rows still in flight (an attempt too old to repeat, or
    without a client_msg_id) become `unknown`. A new campaign's chunk is one statement."""
    now = utcnow()
    rows = [(campaign_id, a.openid, a.client_msg_id, a.attempted_at, now) for a in wanted.values()]
    columns = tuple(list(column) for column in zip(*rows, strict=True))
    sql = _judging_mark_sql(retry_failed=retry_failed, safe_for=safe_for)
    marked = frozenset(row[0] for row in connection.exec_driver_sql(sql, columns))
    rest = [openid for openid in wanted if openid not in marked]
    unknown: list[str] = []
    for start in range(0, len(rest), _MAX_ROWS_PER_STATEMENT):
        chunk = rest[start : start + _MAX_ROWS_PER_STATEMENT]
        statement = _to_unknown(campaign_id, now).where(deliveries.c.openid.in_(chunk))
        unknown += connection.execute(statement.returning(deliveries.c.openid)).scalars()
    return RecordedAttempts(marked, frozenset(unknown))


def _to_unknown(campaign_id: str, now: datetime) -> Any:
    """The UPDATE that records the campaign's in-flight rows `unknown` (add the WHERE)."""
    return (
        update(deliveries)
        .where(
            deliveries.c.campaign_id == campaign_id,
            deliveries.c.status == _PENDING,
            deliveries.c.reason == _IN_FLIGHT,
        )
        .values(status=_UNKNOWN, reason=str(UnknownReason.NO_ANSWER), updated_at=now)
        .execution_options(preserve_rowcount=True)
    )


def settle_unanswered(
    executor: Executor,
    campaign_id: str,
    *,
    older_than: timedelta = RESEND_SAFE_FOR,
    now: datetime | None = None,
) -> int:
    """At a resume: record `unknown` the campaign's rows still in flight (their answer was
    never recorded) that began more than `older_than` before `now`, or that carry no
    client_msg_id (a kind WeChat does not dedupe: no re-send is safe). Returns how many.

    Rows in flight for less long stay `pending`: the resume sends them again with the same
    client_msg_id, and `record_attempts` repeats this judgement at that moment. One UPDATE
    on the (campaign_id, status) index, once per run.
    """
    moment = now or utcnow()
    if moment.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    cutoff = moment - older_than
    statement = _to_unknown(campaign_id, utcnow()).where(
        or_(
            deliveries.c.client_msg_id.is_(None),
            deliveries.c.last_attempt_at.is_(None),
            deliveries.c.last_attempt_at < cutoff,
        )
    )
    return max(_connection(executor).execute(statement).rowcount, 0)


def reopen_unknown(executor: Executor, campaign_id: str) -> int:
    """The operator's explicit re-send: the campaign's `unknown` rows become `pending`
    (reason `resend_unknown`), so this run sends them again. Each may then reach its
    recipient twice; that is the operator's call. Returns how many."""
    statement = (
        update(deliveries)
        .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == _UNKNOWN)
        .values(status=_PENDING, reason=str(PendingReason.RESEND_UNKNOWN), updated_at=utcnow())
        .execution_options(preserve_rowcount=True)
    )
    return max(_connection(executor).execute(statement).rowcount, 0)


def final_openids(
    executor: Executor,
    campaign_id: str,
    openids: Iterable[str],
    *,
    retry_failed: bool = False,
) -> set[str]:
    """Which of `openids` the ledger already marks final for this campaign (the send path no
    longer asks: `record_attempts` refuses final rows itself). With `retry_failed`,
    failures of a retryable class (RETRY, QUOTA) do not count as final, matching
    `stream_audience(retry_failed=True)`."""
    wanted = list(dict.fromkeys(openids))
    if not wanted:
        return set()
    # Select by (campaign_id, openid) only and judge the status here: with the status in
    # the WHERE clause SQLite picks the (campaign_id, status) index and reads every final
    # row of the campaign per batch (968 ms per batch at 1M sent rows, against 6 ms).
    query = select(deliveries.c.openid, deliveries.c.status, deliveries.c.error_class).where(
        deliveries.c.campaign_id == campaign_id,
        deliveries.c.openid.in_(bindparam("openids", expanding=True)),
    )
    found: set[str] = set()
    for start in range(0, len(wanted), _MAX_ROWS_PER_STATEMENT):
        chunk = wanted[start : start + _MAX_ROWS_PER_STATEMENT]
        for row in executor.execute(query, {"openids": chunk}):
            if _final_for_rerun(row, retry_failed=retry_failed):
                found.add(row.openid)
    return found


_FINAL = frozenset(str(status) for status in FINAL_STATUSES)


def _final_for_rerun(row: Any, *, retry_failed: bool) -> bool:
    """Whether a re-run leaves this ledger row (its `status` and `error_class`) alone: every
    status but `pending`; with `retry_failed`, not a failure of a RETRY or QUOTA class.
    (db.audience says the same in SQL for the stream's snapshot.)"""
    if row.status not in _FINAL:
        return False
    return not (
        retry_failed
        and row.status == DeliveryStatus.FAILED
        and row.error_class in RETRYABLE_ERROR_CLASSES
    )


def status_counts(executor: Executor, campaign_id: str) -> dict[str, int]:
    """Rows per delivery status for the campaign, every status present (0 when none)."""
    counts = {str(status): 0 for status in DeliveryStatus}
    query = (
        select(deliveries.c.status, func.count())
        .where(deliveries.c.campaign_id == campaign_id)
        .group_by(deliveries.c.status)
    )
    for status, n in executor.execute(query):
        counts[status] = int(n)
    return counts


# `receipt_counts` keys: the three receipt statuses plus the sent rows still waiting for one.
AWAITING_RECEIPT = "awaiting"


def receipt_counts(executor: Executor, campaign_id: str) -> dict[str, int]:
    """Sent rows per delivery receipt (`RECEIPT_STATUSES`: `delivered`, `user_block`,
    `freq_limited`, `system_failed`) and `awaiting` (sent, no receipt yet), every key
    present (0 when none).

    Receipts (TEMPLATESENDJOBFINISH) arrive by callback after the send, so these grow after the
    run ends; only `sent` rows count, as in the `campaign_stats` view, so the five add up to
    the campaign's sent rows. One grouped query on the (campaign_id, status) index.
    """
    counts = {status: 0 for status in RECEIPT_STATUSES}
    counts[AWAITING_RECEIPT] = 0
    query = (
        select(deliveries.c.receipt_status, func.count())
        .where(
            deliveries.c.campaign_id == campaign_id,
            deliveries.c.status == str(DeliveryStatus.SENT),
        )
        .group_by(deliveries.c.receipt_status)
    )
    for receipt_status, n in executor.execute(query):
        key = AWAITING_RECEIPT if receipt_status is None else receipt_status
        counts[key] = counts.get(key, 0) + int(n)
    return counts


def reason_counts(
    executor: Executor, campaign_id: str, status: DeliveryStatus, limit: int = TOP_REASONS
) -> list[tuple[str | None, int]]:
    """The most frequent reasons of the campaign's rows of `status`: why they were skipped
    (`outside_window`, …) or which field rules made them invalid. (reason, rows), most
    frequent first, at most `limit`; grouped in SQL on the (campaign_id, status) index."""
    n = func.count().label("n")
    query = (
        select(deliveries.c.reason, n)
        .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == str(status))
        .group_by(deliveries.c.reason)
        .order_by(n.desc(), deliveries.c.reason)
        .limit(limit)
    )
    return [(reason, int(count)) for reason, count in executor.execute(query)]


#: The analyst view `send_span` reads (created by migration 0002; docs/analytics.md).
_campaign_stats = table(
    "campaign_stats",
    column("campaign_id"),
    column("duration_seconds"),
    column("messages_per_second"),
)


def send_span(executor: Executor, campaign_id: str) -> tuple[float | None, float | None]:
    """(seconds from the first to the last accepted send, sent ÷ those seconds), read from
    the `campaign_stats` view so a report states exactly the view's figures; (None, None)
    before any send, and a rate of None for a span of 0."""
    query = select(_campaign_stats.c.duration_seconds, _campaign_stats.c.messages_per_second).where(
        _campaign_stats.c.campaign_id == campaign_id
    )
    found = executor.execute(query).first()
    if found is None or found[0] is None:
        return None, None
    return float(found[0]), None if found[1] is None else float(found[1])


@dataclass(frozen=True)
class LedgerFigures:
    """What a campaign's report says about its rows, read together: statuses, receipts, skip
    reasons, the top invalid reasons and the span of the sends."""

    counts: dict[str, int]
    receipts: dict[str, int]
    skipped: dict[str, int]  # skip reason → rows
    invalid_reasons: list[tuple[str | None, int]]  # most frequent first, at most TOP_REASONS
    send_seconds: float | None  # first to last accepted send (`campaign_stats`)
    send_rate: float | None  # sent ÷ send_seconds (`campaign_stats.messages_per_second`)


def ledger_figures(executor: Executor, campaign_id: str) -> LedgerFigures:
    """The campaign's `LedgerFigures`: five grouped queries, none reads more than the
    campaign's own rows (the view is filtered on its campaign column before it reads)."""
    seconds, rate = send_span(executor, campaign_id)
    skipped = reason_counts(executor, campaign_id, DeliveryStatus.SKIPPED, limit=100)
    return LedgerFigures(
        counts=status_counts(executor, campaign_id),
        receipts=receipt_counts(executor, campaign_id),
        skipped={reason or "": n for reason, n in skipped},
        invalid_reasons=reason_counts(executor, campaign_id, DeliveryStatus.INVALID),
        send_seconds=seconds,
        send_rate=rate,
    )


def errcode_counts(
    executor: Executor, campaign_id: str, limit: int = 10
) -> list[tuple[int, str | None, int]]:
    """The most frequent errcodes of the campaign's rows: (errcode, error_class, rows)."""
    n = func.count().label("n")
    query = (
        select(deliveries.c.errcode, deliveries.c.error_class, n)
        .where(deliveries.c.campaign_id == campaign_id, deliveries.c.errcode.is_not(None))
        .group_by(deliveries.c.errcode, deliveries.c.error_class)
        .order_by(n.desc(), deliveries.c.errcode)
        .limit(limit)
    )
    return [(int(code), cls, int(count)) for code, cls, count in executor.execute(query)]


def _literal(campaign_id: str) -> str:
    return "'" + campaign_id.replace("'", "''") + "'"


def failed_rows_sql(campaign_id: str) -> str:
    """The SQL an analyst pastes to list the campaign's failed rows (SQLite and PostgreSQL)."""
    return (
        "SELECT openid, errcode, error_class, errmsg, attempts, last_attempt_at\n"
        "FROM deliveries\n"
        f"WHERE campaign_id = {_literal(campaign_id)} AND status = 'failed'\n"
        "ORDER BY errcode, openid;"
    )


def unknown_rows_sql(campaign_id: str) -> str:
    """The SQL that lists the campaign's `unknown` rows: who may or may not have the
    message, and since when (SQLite and PostgreSQL)."""
    return (
        "SELECT openid, client_msg_id, last_attempt_at, attempts, reason\n"
        "FROM deliveries\n"
        f"WHERE campaign_id = {_literal(campaign_id)} AND status = 'unknown'\n"
        "ORDER BY last_attempt_at, openid;"
    )
