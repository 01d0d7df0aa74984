"""The audience: an operator's SELECT, run read-only with a timeout, streamed in batches
(docs/architecture.md, decision 6).

The query returns `openid` plus any columns the message uses. Three column names have a meaning:

- `last_interaction_at` drives WeChat's interaction window: with `window_hours > 0` a row whose
  value is NULL or older than `now - window_hours` is annotated `outside_window` (a row exactly
  `window_hours` old is still inside). The default audience takes it from `recipients`; a custom
  query may join its own tables and bring its own column, e.g.
  `SELECT o.openid, o.order_no, max(e.at) AS last_interaction_at FROM orders o JOIN events e …`.
  Accepted values: a timestamp/timestamptz (naive = UTC) or ISO-8601 text on PostgreSQL; on
  SQLite ISO-8601 text (with or without an offset; wxpush's own columns are stored as
  `YYYY-MM-DD HH:MM:SS.ffffff` UTC) or unix seconds. With `window_hours > 0` the column is
  required: a query without it is rejected rather than silently sending to everyone.
- `subscribed`, when present, marks rows `unsubscribed` when false (false, 0, 'false', 'f',
  'no'); NULL counts as subscribed.
- `nothing_to_send`, when present, marks rows `nothing_to_send` when true (true, 1, 'true',
  't', 'yes'); NULL and anything else count as having something to send. A digest's query
  (db/digest.py) returns every recipient and marks those without content this way, so the
  ledger records why they got nothing.

A row gets one skip reason, the first that applies: `unsubscribed`, then `nothing_to_send`,
then `outside_window`, then `frequency_cap`.

**Frequency cap** (`FrequencyCap`: at most N messages per follower per H hours, across the
account's campaigns): rows left without a reason are checked batch by batch against the
ledger (`capped_openids`, on the ledger's connection, as the final rows are: the audience
role cannot read the ledger); a follower who already has N messages counted there is
annotated `frequency_cap`. Counted: `sent` and `unknown` rows (an `unknown` message may well
have arrived) of the account's campaigns other than this one, whose `last_attempt_at` (when
the message went out) is at or after `now - H`. So a resumed campaign never caps anyone for
its own sends; two campaigns of one account sending at the same moment each see only what
the other had recorded when their batch was read.

Skipped rows are streamed too (annotated, not dropped) so the ledger records them. Rows already
final in the ledger for this campaign when the stream opens are left out batch by batch: they
are copied once into a temporary table of the ledger's own connection and asked by openid
(`final_snapshot`; the audience connection may not read the ledger, and no statement of the
stream joins it); `pending` rows always come back, and with `retry_failed` so do `failed` rows
whose error class is RETRY or QUOTA.

**Duplicates**: one row per openid. When the query returns an openid more than once, one of
its rows is kept and which one is not defined; if it matters, deduplicate in the query
(`DISTINCT ON (openid) … ORDER BY openid, …` on PostgreSQL, `GROUP BY openid` with
`max(...)`, or a window of your own). Rows with a NULL openid are dropped. Rows come in no
guaranteed order (in practice by openid).

Safety: the SQL must be one statement that reads. It is checked lexically (one statement, no
write keyword, starts with SELECT/WITH/VALUES) for a clear message, then executed wrapped as a
subquery, with a bind parameter (so PostgreSQL refuses several commands), on the audience
connection (`WXPUSH_AUDIENCE_DATABASE_URL`, unpooled: db/engine.py) in a read-only transaction
(PostgreSQL `SET TRANSACTION READ ONLY`; SQLite `PRAGMA query_only` plus an authorizer that
hides wxpush's ledger tables, db/audience_role.py). What else it may read is the role's
privileges: a PostgreSQL superuser is refused unless `WXPUSH_ALLOW_SUPERUSER_AUDIENCE=1`. The
time limit is a watchdog thread that cancels the statement (PostgreSQL cancel request, SQLite
interrupt) when the limit passes, per statement and per fetched batch, whatever the session's
own `statement_timeout` (also set) says. Database errors reach the operator without the values
they may quote (`_translate`).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    column,
    func,
    insert,
    or_,
    select,
    table,
    text,
)
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql.elements import ColumnElement, TextClause
from sqlalchemy.sql.expression import TableClause

from db.audience_role import (
    sqlite_authorizer,
    superuser_allowed,
    superuser_behind,
    superuser_refusal,
)
from db.models import campaigns, deliveries
from db.outcomes import FINAL_STATUSES, DeliveryStatus, SkipReason
from db.types import UTCDateTime
from db.watchdog import Watchdog, canceller

DEFAULT_AUDIENCE_SQL = """\
SELECT openid, nickname, city, subscribed, blocked, last_interaction_at, attributes
FROM recipients
WHERE app_id = :app_id"""

# The texts (lower-cased) of a false `subscribed` and of a true `nothing_to_send`.
_FALSE_TEXTS = ("0", "false", "f", "no")
_TRUE_TEXTS = ("1", "true", "t", "yes")

# Error classes (wechat.errors.ErrorClass values) whose failures `retry_failed` sends again.
RETRYABLE_ERROR_CLASSES = ("RETRY", "QUOTA")

DEFAULT_TIMEOUT_SECONDS = 30.0

#: Which shard an openid falls in, in PostgreSQL: the first 8 hex digits of md5(openid) as
#: an unsigned 32-bit number, modulo the shard count. md5() and the bit-string cast are
#: documented and stable across versions and platforms (`hashtext` is internal and may
#: change); `shard_of` is the same in Python. `{openid}` is the column expression.
SHARD_SQL = "mod(('x' || substr(md5(CAST({openid} AS TEXT)), 1, 8))::bit(32)::bigint, :wx_shards)"


@dataclass(frozen=True, slots=True)
class Shard:
    """One of `count` disjoint parts of an audience, `index` in [0, count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count} does not exist")

    def condition(self, openid: str) -> str:
        """The SQL condition keeping this shard's rows (binds: `binds()`)."""
        return f"{SHARD_SQL.format(openid=openid)} = :wx_shard"

    def binds(self) -> dict[str, int]:
        return {"wx_shards": self.count, "wx_shard": self.index}


def shard_of(openid: str, count: int) -> int:
    """The shard `SHARD_SQL` puts `openid` in (for tests and tools)."""
    return int(hashlib.md5(openid.encode("utf-8")).hexdigest()[:8], 16) % count


def _check_shard(connection: Connection, shard: Shard | None) -> None:
    if shard is not None and connection.dialect.name != "postgresql":
        raise AudienceQueryError(
            "splitting an audience into shards needs PostgreSQL (md5 in SQL); "
            f"this audience database is {connection.dialect.name}"
        )


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most `messages` per follower within `hours`, across the campaigns of the account
    `app_id` (campaigns started before migration 0008 have no AppID stored: they are matched
    by their block name, `app`)."""

    messages: int
    hours: float
    app_id: str
    app: str

    def __post_init__(self) -> None:
        if self.messages < 1 or self.hours <= 0:
            raise ValueError("a frequency cap needs at least 1 message and a positive window")


class AudienceQueryError(ValueError):
    """The audience SQL cannot be used; the message says why in an operator's words."""


@dataclass(frozen=True, slots=True)
class AudienceRow:
    """One recipient: `values` holds every column of the query (openid included), plain
    Python values, timestamps as aware UTC datetimes."""

    openid: str
    skip_reason: SkipReason | None
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AudiencePreview:
    """The query's columns and its first rows, as the campaign will see them."""

    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


# -- checking the text ------------------------------------------------------------------------

# A statement starting with one of these is not a query (the message says "tried to write").
# fmt: off
_WRITE_STARTS = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "TRUNCATE", "DROP", "ALTER",
    "CREATE", "GRANT", "REVOKE", "COPY", "VACUUM", "REINDEX", "ATTACH", "DETACH", "CALL", "DO",
    "LOCK", "COMMIT", "ROLLBACK", "BEGIN", "SET", "RESET",
})
# fmt: on
# Reserved words that only appear in writes; anywhere in the text (a PostgreSQL CTE can write).
_WRITE_ANYWHERE = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})
_READ_STARTS = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass
class _Scan:
    words: list[tuple[str, int]]  # (upper-cased word, offset) outside strings and comments
    statements: list[str]  # the text between top-level semicolons, non-blank ones only


def _scan(sql: str) -> _Scan:
    """Tokenise just enough SQL to find words and top-level semicolons, skipping string
    literals, quoted identifiers, comments (nested /* */ too) and PostgreSQL dollar quotes."""
    words: list[tuple[str, int]] = []
    statements: list[str] = []
    start = 0
    i, n = 0, len(sql)
    has_code = False
    while i < n:
        ch = sql[i]
        if ch in "'\"`[":
            close = {"'": "'", '"': '"', "`": "`", "[": "]"}[ch]
            backslash = ch == "'" and i > 0 and sql[i - 1] in "eE" and not _word_char(sql, i - 2)
            i += 1
            while i < n:
                if backslash and sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == close:
                    if close != "]" and i + 1 < n and sql[i + 1] == close:
                        i += 2  # doubled quote inside the literal
                        continue
                    break
                i += 1
            i += 1
            has_code = True
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif ch == "$" and (tag := _DOLLAR_TAG.match(sql, i)) and not _word_char(sql, i - 1):
            end = sql.find(tag.group(0), tag.end())
            i = n if end < 0 else end + len(tag.group(0))
            has_code = True
        elif ch == ";":
            if has_code:
                statements.append(sql[start:i].strip())
            start, has_code = i + 1, False
            i += 1
        elif word := _WORD.match(sql, i):
            if not _word_char(sql, i - 1):
                words.append((word.group(0).upper(), i))
            i = word.end()
            has_code = True
        else:
            if not ch.isspace():
                has_code = True
            i += 1
    if has_code:
        statements.append(sql[start:].strip())
    return _Scan(words, statements)


def _word_char(sql: str, index: int) -> bool:
    return 0 <= index < len(sql) and (sql[index].isalnum() or sql[index] in "_$")


def checked_sql(sql: str) -> str:
    """The audience SQL without trailing semicolons, or AudienceQueryError saying what is
    wrong with it (empty, several statements, a statement that writes, not a SELECT)."""
    scan = _scan(sql or "")
    if not scan.statements:
        raise AudienceQueryError("the audience SQL is empty; write a SELECT returning openid")
    if len(scan.statements) > 1:
        raise AudienceQueryError(
            f"the audience SQL must be one SELECT; it has {len(scan.statements)} statements "
            f"separated by ';' (the second starts: {_snippet(scan.statements[1])})"
        )
    for index, (word, offset) in enumerate(scan.words):
        if (index == 0 and word in _WRITE_STARTS) or word in _WRITE_ANYWHERE:
            if word == "UPDATE" and index > 0 and scan.words[index - 1][0] == "FOR":
                what = "lock rows (SELECT … FOR UPDATE)"
            else:
                what = f"write: {_snippet(sql[offset:])}"
            raise AudienceQueryError(
                f"the audience SQL must only read (SELECT); it tried to {what}"
            )
    statement = scan.statements[0]
    first = statement.lstrip("( \t\r\n")
    first_word = scan.words[0][0] if scan.words else ""
    if not statement.startswith("(") and first_word not in _READ_STARTS:
        raise AudienceQueryError(
            "the audience SQL is not valid: it must be a SELECT (or WITH … SELECT); it starts "
            f"with {_snippet(first)}"
        )
    return statement


def _snippet(text_: str, limit: int = 60) -> str:
    flat = " ".join(text_.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- running it read-only -----------------------------------------------------------------------


@contextmanager
def read_only(connection: Connection, timeout_seconds: float) -> Iterator[Watchdog]:
    """Make `connection` read-only for the rest of its transaction and yield the watchdog
    that bounds each statement or fetch run inside its `running()` block.

    PostgreSQL: a read-only transaction with `statement_timeout` (a second line: the session
    can change it), refused when the session's user is or can become a superuser, unless
    `WXPUSH_ALLOW_SUPERUSER_AUDIENCE=1`. SQLite: `PRAGMA query_only` and the authorizer of
    db/audience_role.py, both undone here in case the connection is pooled. The caller must
    end the transaction (rollback) afterwards.
    """
    if timeout_seconds <= 0:
        raise ValueError("timeout_seconds must be positive")
    name = connection.dialect.name
    if name not in ("postgresql", "sqlite"):  # pragma: no cover - make_engine refuses others
        raise AudienceQueryError(f"read-only audiences are not implemented for {name}")
    raw = connection.connection.driver_connection
    if name == "postgresql":
        # Must be the first statement of the transaction; both end with it.
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        connection.exec_driver_sql(
            f"SET LOCAL statement_timeout = {max(1, int(timeout_seconds * 1000))}"
        )
        superuser = superuser_behind(connection)
        if superuser is not None and not superuser_allowed():
            user = connection.execute(text("SELECT current_user")).scalar_one()
            raise AudienceQueryError(superuser_refusal(superuser, str(user)))
        watchdog = Watchdog(canceller(name, raw), timeout_seconds)
        try:
            yield watchdog
        finally:
            watchdog.close()
        return
    watchdog = Watchdog(canceller(name, raw), timeout_seconds)
    raw.execute("PRAGMA query_only = ON")
    raw.set_authorizer(sqlite_authorizer)
    try:
        yield watchdog
    finally:
        watchdog.close()
        # A signal (Ctrl-C, Prefect's SIGTERM) inside a fetch makes SQLAlchemy invalidate the
        # connection and close the file: nothing is left to undo, and touching it would raise
        # over the signal ("Cannot operate on a closed database").
        if not connection.invalidated:
            raw.set_authorizer(None)
            raw.execute("PRAGMA query_only = OFF")


#: Wording for SQLSTATEs an operator meets; others get PostgreSQL's condition name.
_SQLSTATE_WORDS = {
    "22P02": "invalid text for the type it is cast to",
    "22003": "a number out of range",
    "22012": "division by zero",
    "22007": "an invalid date or time",
    "22008": "a date or time out of range",
    "22001": "a string too long for its type",
    "22023": "an invalid parameter value",
    "2201B": "an invalid regular expression",
    "22021": "a character not valid in the encoding",
    "53200": "the server ran out of memory",
    "53100": "the server's disk is full",
    "54000": "a program limit was exceeded",
}
_DETAIL_LIMIT = 200


def _timeout_message(timeout_seconds: float) -> str:
    return (
        f"the audience SQL took longer than the {timeout_seconds:g} s timeout; make it faster "
        "(an index, a narrower WHERE) or raise the timeout"
    )


def _condition(sqlstate: str) -> str:
    """A value-free description of a SQLSTATE: ours, else PostgreSQL's condition name."""
    if sqlstate in _SQLSTATE_WORDS:
        return _SQLSTATE_WORDS[sqlstate]
    try:
        from psycopg import errors  # only reached with a PostgreSQL error in hand

        name = errors.lookup(sqlstate).__name__
    except (ImportError, KeyError):
        return "a database error"
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


def _translate(
    exc: DBAPIError | StatementError, timeout_seconds: float, timed_out: bool
) -> AudienceQueryError:
    """The database's complaint, in an operator's words, without the data it may quote.

    Texts end up in `campaigns.status_reason`, logs and artifacts. PostgreSQL's messages for
    data errors (class 22 and most others) can hold a value the query read (`invalid input
    syntax for type integer: "root:x:0:0…"`), so those become SQLSTATE + a generic wording;
    only messages about the SQL text itself (class 42: syntax, names, privileges; 25006) are
    quoted. SQLite's messages name SQL, never data, and are quoted, cut short.
    """
    if timed_out:
        return AudienceQueryError(_timeout_message(timeout_seconds))
    orig = getattr(exc, "orig", None)
    if not isinstance(exc, DBAPIError):
        detail = _BACKGROUND.sub("", str(orig or exc).split("\n")[0])
        if "bind parameter" in detail:
            return AudienceQueryError(f"the audience SQL needs a value: {detail}")
        return AudienceQueryError(f"the audience SQL could not be run: {detail}")
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        return _translate_postgresql(orig, str(sqlstate), timeout_seconds)
    detail = _snippet(str(orig).strip().split("\n")[0], _DETAIL_LIMIT)
    code = getattr(orig, "sqlite_errorname", None) or "SQLite"
    lowered = detail.lower()
    if "readonly database" in lowered:
        return AudienceQueryError(
            f"the audience SQL must only read (SELECT); it tried to write: {detail}"
        )
    if lowered == "interrupted":
        return AudienceQueryError(_timeout_message(timeout_seconds))
    if code == "SQLITE_AUTH" or lowered == "not authorized" or lowered.endswith("is prohibited"):
        # The authorizer's refusal (SQLite reports some as SQLITE_ERROR, e.g. PRAGMA functions).
        return AudienceQueryError(
            f"the audience SQL may not do that: {detail} (SQLITE_AUTH); on SQLite it may read "
            "any table but wxpush's ledger tables, and nothing else (docs/database.md)"
        )
    return AudienceQueryError(f"the audience SQL is not valid: {detail}")


def _translate_postgresql(orig: Any, sqlstate: str, timeout_seconds: float) -> AudienceQueryError:
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(orig).strip().split("\n")[0]
    detail = _snippet(primary, _DETAIL_LIMIT)
    if sqlstate == "57014":
        return AudienceQueryError(_timeout_message(timeout_seconds))
    if sqlstate == "25006":
        return AudienceQueryError(
            f"the audience SQL must only read (SELECT); it tried to write: {detail}"
        )
    if sqlstate == "42501":
        return AudienceQueryError(
            f"the audience SQL may not do that: {detail} (SQLSTATE 42501); its role reads "
            "only the tables granted to it (docs/database.md)"
        )
    if sqlstate.startswith("42"):
        return AudienceQueryError(f"the audience SQL is not valid: {detail} (SQLSTATE {sqlstate})")
    return AudienceQueryError(
        f"the audience SQL failed: {_condition(sqlstate)} (SQLSTATE {sqlstate})"
    )


_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")


@contextmanager
def _guarded(limit: Watchdog, timeout_seconds: float) -> Iterator[None]:
    """Run one statement (or fetch) under the watchdog; database errors become
    AudienceQueryError, not chained (a traceback would print the database's own text)."""
    try:
        with limit.running():
            yield
    except (DBAPIError, StatementError) as exc:
        raise _translate(exc, timeout_seconds, limit.fired) from None
    if limit.fired:
        raise AudienceQueryError(_timeout_message(timeout_seconds))


def _wrapped(sql: str) -> str:
    # Newlines around the user's text: a trailing `-- comment` must not eat the parenthesis.
    return f"SELECT * FROM (\n{sql}\n) AS _wx_q"


def _columns(connection: Connection, sql: str, params: Mapping[str, Any]) -> list[str]:
    """The query's column names, without fetching a row."""
    result = connection.execute(text(_wrapped(sql) + " LIMIT :wx_limit"), {**params, "wx_limit": 0})
    try:
        return list(result.keys())
    finally:
        result.close()


def _require_columns(columns: list[str], window_hours: float) -> None:
    if "openid" not in columns:
        raise AudienceQueryError(
            "the audience SQL must return an `openid` column (alias it: `… AS openid`); it "
            f"returned: {', '.join(columns) or 'no columns'}"
        )
    if window_hours > 0 and "last_interaction_at" not in columns:
        raise AudienceQueryError(
            f"the interaction window is {window_hours:g} h but the audience SQL returns no "
            "`last_interaction_at` column; add one (e.g. join recipients, or your own "
            "`max(event_time) AS last_interaction_at`) or set window_hours to 0"
        )


# -- plain values ---------------------------------------------------------------------------------

_SQLITE_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")


_BOOLEAN_COLUMNS = frozenset({"subscribed", "nothing_to_send"})


def _plain(name: str, value: Any) -> Any:
    """The same Python value from both databases: aware UTC datetimes (SQLite hands back
    wxpush's timestamps as text), JSON `attributes` as dicts (SQLite: text), `subscribed` and
    `nothing_to_send` as bools (SQLite: 0/1)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if name in _BOOLEAN_COLUMNS and type(value) is int and value in (0, 1):
        return bool(value)  # SQLite has no boolean type
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " " and _SQLITE_STAMP.fullmatch(value):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)  # C speed, unlike strptime
        if name == "attributes" and value[:1] in ("{", "["):
            try:
                return json.loads(value)
            except ValueError:
                return value
    return value


def _plain_row(columns: list[str], row: Any) -> dict[str, Any]:
    return {name: _plain(name, value) for name, value in zip(columns, row, strict=False)}


def has_nothing_to_send(row: Mapping[str, Any]) -> bool:
    """Whether the row's `nothing_to_send` column is true, judged as the stream's SQL judges
    it: a preview row the campaign will skip has no content to check."""
    value = row.get("nothing_to_send")
    return value is not None and str(value).lower() in _TRUE_TEXTS


def recipient_row(connection: Connection, app_id: str, openid: str) -> dict[str, Any] | None:
    """One follower's row as the default audience returns it (its columns, the same plain
    values), or None if `recipients` has no such follower: what a test send renders with."""
    result = connection.execute(
        text(DEFAULT_AUDIENCE_SQL + " AND openid = :openid"), {"app_id": app_id, "openid": openid}
    )
    columns = list(result.keys())
    row = result.first()
    return None if row is None else _plain_row(columns, row)


# -- preview --------------------------------------------------------------------------------------


def preview_audience(
    engine: Engine,
    sql: str,
    params: Mapping[str, Any],
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    sample_size: int = 20,
    window_hours: float = 0,
) -> AudiencePreview:
    """Run the audience SQL read-only and return its columns and first `sample_size` rows.

    The campaign's preflight: raises AudienceQueryError (nothing changed) when the SQL writes,
    is invalid, times out, has no `openid` column, or (with `window_hours > 0`) no
    `last_interaction_at` column.
    """
    statement = checked_sql(sql)
    with engine.connect() as connection:
        try:
            with read_only(connection, timeout_seconds) as limit:
                with _guarded(limit, timeout_seconds):
                    result = connection.execute(
                        text(_wrapped(statement) + " LIMIT :wx_limit"),
                        {**params, "wx_limit": max(0, sample_size)},
                    )
                    columns = list(result.keys())
                    fetched = result.all()
                rows = [_plain_row(columns, row) for row in fetched]
        finally:
            connection.rollback()
    _require_columns(columns, window_hours)
    return AudiencePreview(columns=columns, rows=rows)


def count_audience(
    engine: Engine,
    sql: str,
    params: Mapping[str, Any],
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    shard: Shard | None = None,
) -> int:
    """How many rows the audience SQL returns (read-only, with the timeout): the size the
    campaign's progress bar measures against. With `shard`, that shard's rows only."""
    statement = checked_sql(sql)
    where = f" WHERE {shard.condition('_wx_c.openid')}" if shard else ""
    with engine.connect() as connection:
        _check_shard(connection, shard)
        try:
            with read_only(connection, timeout_seconds) as limit:
                with _guarded(limit, timeout_seconds):
                    # Always a bind parameter: psycopg sends a statement without one through
                    # the simple-query protocol, which would run a smuggled second command.
                    count = connection.execute(
                        text(
                            f"SELECT count(*) FROM (\n{statement}\n) AS _wx_c{where} LIMIT :wx_one"
                        ),
                        {**params, "wx_one": 1, **(shard.binds() if shard else {})},
                    ).scalar_one()
                return int(count)
        finally:
            connection.rollback()


# -- stream ---------------------------------------------------------------------------------------


def _skip_reason_sql(columns: list[str], dialect: str, window_hours: float) -> str:
    """CASE … END giving the skip reason of a row of `_wx_w` (NULL = send it)."""
    whens = []
    if "subscribed" in columns:
        whens.append(
            f"WHEN lower(CAST(_wx_w.subscribed AS TEXT)) IN ({_sql_list(_FALSE_TEXTS)}) "
            f"THEN '{SkipReason.UNSUBSCRIBED}'"
        )
    if "nothing_to_send" in columns:
        whens.append(
            f"WHEN lower(CAST(_wx_w.nothing_to_send AS TEXT)) IN ({_sql_list(_TRUE_TEXTS)}) "
            f"THEN '{SkipReason.NOTHING_TO_SEND}'"
        )
    if window_hours > 0:
        stamp = _comparable_stamp("_wx_w.last_interaction_at", dialect)
        whens.append(
            f"WHEN _wx_w.last_interaction_at IS NULL OR {stamp} IS NULL OR {stamp} < :wx_cutoff "
            f"THEN '{SkipReason.OUTSIDE_WINDOW}'"
        )
    if not whens:
        return "CAST(NULL AS VARCHAR(32))"
    return "CASE " + " ".join(whens) + " END"


def _sql_list(texts: tuple[str, ...]) -> str:
    return ", ".join(f"'{t}'" for t in texts)


def _comparable_stamp(column: str, dialect: str) -> str:
    """`column` as something that compares correctly with the `:wx_cutoff` bind.

    PostgreSQL: a timestamptz (naive timestamps and ISO text are cast; the session is UTC).
    SQLite has no timestamp type and compares text as text, so '2026-01-01T10:00:00+08:00' or
    '2026-01-01 10:00:00' would compare wrongly with the cutoff; every value is brought to
    wxpush's canonical text 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC first (values already in that
    form are kept exactly; others go through strftime, millisecond precision; numbers are
    unix seconds).
    """
    if dialect == "postgresql":
        return f"CAST({column} AS TIMESTAMP WITH TIME ZONE)"
    canonical = (
        "[0-9]" * 4 + "-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]." + "[0-9]" * 6
    )
    return (
        f"(CASE WHEN typeof({column}) = 'text' AND {column} GLOB '{canonical}' THEN {column} "
        f"WHEN typeof({column}) IN ('integer', 'real') "
        f"THEN strftime('%Y-%m-%d %H:%M:%f', {column}, 'unixepoch') || '000' "
        f"ELSE strftime('%Y-%m-%d %H:%M:%f', {column}) || '000' END)"
    )


def _stream_statement(
    sql: str, columns: list[str], dialect: str, *, window_hours: float, shard: Shard | None = None
) -> TextClause:
    # One window, partitioned by openid and nothing else: when the query already yields
    # openids in order (an index), no sort is needed and the first batch comes at once; any
    # ORDER BY here (or a second window to remember "first") costs a full sort first (12 s at
    # 1M rows on SQLite, measured), and a final ORDER BY costs SQLite another one. No join
    # with the ledger: the audience role cannot read it, and a join planned on an empty
    # ledger scanned the campaign's rows for every audience row (issue 15); final rows are
    # left out through `final_snapshot` instead. `:wx_first` keeps a bind parameter in the
    # statement (see count_audience).
    statement = f"""\
SELECT _wx_w.*, {_skip_reason_sql(columns, dialect, window_hours)} AS _wx_skip_reason
FROM (
  SELECT _wx_q.*, ROW_NUMBER() OVER (PARTITION BY _wx_q.openid) AS _wx_dup
  FROM (
{sql}
) AS _wx_q
) AS _wx_w
WHERE _wx_w._wx_dup = :wx_first AND _wx_w.openid IS NOT NULL"""
    if shard is not None:
        # After the duplicates are dropped: every row of an openid is in the same shard.
        statement += f" AND {shard.condition('_wx_w.openid')}"
    clause = text(statement)
    if window_hours > 0:
        clause = clause.bindparams(bindparam("wx_cutoff", type_=UTCDateTime()))
    return clause


#: Openids per lookup statement in the snapshot (SQLite's bind limit is 32,766 nowadays, but
#: was 999 before 3.32).
_LOOKUP_CHUNK = 500


def _final_condition(retry_failed: bool) -> ColumnElement[bool]:
    """A ledger row final for a re-run: every status but `pending`; with `retry_failed`, a
    failure of a RETRY or QUOTA class is not (db.ledger._final_for_rerun judges the same)."""
    final = deliveries.c.status.in_([str(status) for status in FINAL_STATUSES])
    if not retry_failed:
        return final
    return and_(
        final,
        or_(
            deliveries.c.status != str(DeliveryStatus.FAILED),
            func.coalesce(deliveries.c.error_class, "").not_in(RETRYABLE_ERROR_CLASSES),
        ),
    )


@contextmanager
def final_snapshot(
    ledger: Engine, campaign_id: str, *, retry_failed: bool
) -> Iterator[Callable[[list[str]], set[str]] | None]:
    """The ledger's part of the stream, evaluated once when it opens (issue 15).

    The campaign's final openids are copied, in one statement, into a temporary table of
    one ledger connection (a primary key on openid, never changed after), and each batch
    probes that key with its openids. So a batch costs the same at the first and the last
    batch whatever the statistics say: asked per batch, `deliveries` was read through its
    `(campaign_id, status)` index by campaign_id alone whenever its statistics did not know
    the campaign yet, i.e. every row of the campaign per batch. Rows final after the
    snapshot are this stream's own (it yields each openid once).

    Yields a function giving which of the openids are final, or None when none of the
    campaign's rows was final (a new campaign: no question per batch at all, and the
    connection is given back at once). Otherwise the connection stays checked out while the
    block runs (session state: PostgreSQL behind a pooler needs session pooling) and the
    table is dropped at the end.
    """
    name = f"_wx_final_{uuid.uuid4().hex[:12]}"
    snapshot = table(name, column("openid"))
    connection = ledger.connect()
    try:
        with connection.begin():
            connection.exec_driver_sql(
                f"CREATE TEMPORARY TABLE {name} (openid VARCHAR(64) PRIMARY KEY)"
            )
            query = select(deliveries.c.openid).where(
                deliveries.c.campaign_id == campaign_id, _final_condition(retry_failed)
            )
            copied = connection.execute(
                insert(snapshot).from_select(["openid"], query),
                execution_options={"preserve_rowcount": True},  # else -1 on PostgreSQL
            ).rowcount
        if copied:
            yield _prober(connection, snapshot)
            return
    finally:
        with suppress(DBAPIError):  # a broken connection takes its temporary table with it
            if connection.in_transaction():
                connection.rollback()
            with connection.begin():
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        connection.close()
    yield None  # nothing was final: the connection is back in the pool already


def _prober(connection: Connection, snapshot: TableClause) -> Callable[[list[str]], set[str]]:
    """Which of the openids the snapshot holds: probes of its key, 500 openids a statement."""
    lookup = select(snapshot.c.openid).where(
        snapshot.c.openid.in_(bindparam("openids", expanding=True))
    )
    postgresql = connection.dialect.name == "postgresql"

    def final(openids: list[str]) -> set[str]:
        found: set[str] = set()
        with connection.begin():
            if postgresql:
                # Never a scan of the snapshot: with 30k rows and 500 openids PostgreSQL
                # preferred reading every row (a hashed IN list) to probing the key.
                connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            for start in range(0, len(openids), _LOOKUP_CHUNK):
                chunk = openids[start : start + _LOOKUP_CHUNK]
                found.update(connection.execute(lookup, {"openids": chunk}).scalars())
        return found

    return final


#: Delivery statuses the frequency cap counts: accepted by WeChat, or in doubt (it may have
#: reached the follower).
CAPPED_STATUSES = (str(DeliveryStatus.SENT), str(DeliveryStatus.UNKNOWN))


def capped_openids(
    connection: Connection,
    cap: FrequencyCap,
    campaign_id: str,
    openids: list[str],
    *,
    now: datetime,
) -> set[str]:
    """Which of `openids` already have `cap.messages` counted messages since `now - hours`
    from the account's campaigns other than `campaign_id` (see the module docstring).

    Two questions per 500 openids, neither of which a planner can turn into a read of whole
    campaigns: the window's ledger rows of these openids, through `deliveries (openid,
    last_attempt_at)` and nothing else (no join, no status in the WHERE clause: either
    offered PostgreSQL a path through `(campaign_id, status)` that reads every row of the
    account's campaigns, and it took it when its statistics were stale, as in issue 15);
    then which of the few campaigns found are the account's, by primary key. The counting
    is done here. A batch costs the same whatever the ledger's size.
    """
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    recent = _window_rows(now - timedelta(hours=cap.hours))
    ours = select(campaigns.c.id).where(
        campaigns.c.id.in_(bindparam("ids", expanding=True)),
        or_(
            campaigns.c.app_id == cap.app_id,
            and_(campaigns.c.app_id.is_(None), campaigns.c.app == cap.app),
        ),
    )
    capped: set[str] = set()
    wanted = list(dict.fromkeys(openids))
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        chunk = wanted[start : start + _LOOKUP_CHUNK]
        rows = [
            (openid, campaign)
            for openid, campaign, status in connection.execute(recent, {"openids": chunk})
            if status in CAPPED_STATUSES and campaign != campaign_id
        ]
        if not rows:
            continue
        account = set(connection.execute(ours, {"ids": sorted({c for _, c in rows})}).scalars())
        counts = Counter(openid for openid, campaign in rows if campaign in account)
        capped.update(openid for openid, n in counts.items() if n >= cap.messages)
    return capped


def _window_rows(cutoff: datetime) -> Select[tuple[str, str, str]]:
    """The ledger rows of some openids (bind `openids`, a list) attempted at or after
    `cutoff`: (openid, campaign_id, status)."""
    return select(deliveries.c.openid, deliveries.c.campaign_id, deliveries.c.status).where(
        deliveries.c.openid.in_(bindparam("openids", expanding=True)),
        deliveries.c.last_attempt_at >= cutoff,
    )


def _apply_cap(
    ledger: Engine, cap: FrequencyCap, campaign_id: str, batch: list[AudienceRow], now: datetime
) -> list[AudienceRow]:
    """The batch with its capped rows annotated `frequency_cap` (rows skipped for another
    reason keep it and are not asked about)."""
    candidates = [row.openid for row in batch if row.skip_reason is None]
    if not candidates:
        return batch
    with ledger.connect() as connection:
        capped = capped_openids(connection, cap, campaign_id, candidates, now=now)
    if not capped:
        return batch
    return [
        AudienceRow(row.openid, SkipReason.FREQUENCY_CAP, row.values)
        if row.skip_reason is None and row.openid in capped
        else row
        for row in batch
    ]


def stream_audience(
    engine: Engine,
    sql: str,
    params: Mapping[str, Any],
    *,
    ledger: Engine,
    campaign_id: str,
    window_hours: float,
    now: datetime,
    batch_size: int,
    retry_failed: bool = False,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    shard: Shard | None = None,
    frequency_cap: FrequencyCap | None = None,
) -> Iterator[list[AudienceRow]]:
    """Yield the campaign's remaining audience in batches of at most `batch_size`, each row
    annotated with its skip reason (computed in SQL), never holding more than a batch in
    memory.

    The SQL runs through `engine` (the audience connection) in one read-only transaction (a
    server-side cursor on PostgreSQL) until exhausted or closed; `timeout_seconds` bounds the
    query's start and each batch's fetch, enforced by a watchdog. Rows final for
    `campaign_id` when the stream opens are dropped, batch by batch, through `final_snapshot`
    of `ledger` (the main engine; nothing to ask for a new campaign); `pending` rows always
    come back, and with `retry_failed` so do failures of a RETRY or QUOTA class. A batch left
    empty is not yielded. With `shard` (PostgreSQL only), the rows of that shard alone: the
    shards of one count are disjoint and together the whole audience (`SHARD_SQL`). With
    `frequency_cap`, rows without another skip reason whose follower is at the cap (counted
    in `ledger` at `now`) are annotated `frequency_cap`. Close the generator (or exhaust it)
    to release the connections.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    statement_sql = checked_sql(sql)
    binds: dict[str, Any] = {**params, "wx_first": 1}
    if window_hours > 0:
        binds["wx_cutoff"] = now - timedelta(hours=window_hours)
    if shard is not None:
        binds.update(shard.binds())
    with (
        final_snapshot(ledger, campaign_id, retry_failed=retry_failed) as final,
        engine.connect() as connection,
    ):
        _check_shard(connection, shard)
        try:
            with read_only(connection, timeout_seconds) as limit:
                if connection.dialect.name == "postgresql":
                    # The stream is idle in its transaction while batches are sent; a server
                    # default that kills idle transactions would cut the campaign off.
                    connection.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
                with _guarded(limit, timeout_seconds):
                    columns = _columns(connection, statement_sql, params)
                _require_columns(columns, window_hours)
                statement = _stream_statement(
                    statement_sql,
                    columns,
                    connection.dialect.name,
                    window_hours=window_hours,
                    shard=shard,
                )
                with _guarded(limit, timeout_seconds):
                    result = connection.execution_options(
                        stream_results=True, yield_per=batch_size
                    ).execute(statement, binds)
                try:
                    keys = list(result.keys())
                    skip_at = keys.index("_wx_skip_reason")
                    names = keys[: len(columns)]
                    while True:
                        with _guarded(limit, timeout_seconds):
                            rows = result.fetchmany(batch_size)
                        if not rows:
                            return
                        batch = [_audience_row(names, row, skip_at) for row in rows]
                        if final is not None:
                            done = final([row.openid for row in batch])
                            batch = [row for row in batch if row.openid not in done]
                        if frequency_cap is not None and batch:
                            batch = _apply_cap(ledger, frequency_cap, campaign_id, batch, now)
                        if batch:
                            yield batch
                finally:
                    with suppress(DBAPIError):  # after a cancel the cursor is already gone
                        result.close()
        finally:
            connection.rollback()


def _audience_row(names: list[str], row: Any, skip_at: int) -> AudienceRow:
    values = _plain_row(names, row)
    reason = row[skip_at]
    return AudienceRow(
        openid=str(values["openid"]),
        skip_reason=SkipReason(reason) if reason is not None else None,
        values=values,
    )
