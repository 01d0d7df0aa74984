"""WeChat callbacks into the database: the receiver parses pushes into `CallbackRecord`s and
hands a batch to `apply_callbacks`, which writes it in the caller's transaction.

What a batch does, in this order:

1. Every push is stored once in `callback_events`, unique on (app_id, dedupe_key). WeChat
   retries a push it got no answer for (up to 3 times); a retry, in the same batch or a later
   one, is counted as a duplicate and changes nothing else. Only new rows go on to 2-4.
2. Receipts (TEMPLATESENDJOBFINISH) set `deliveries.receipt_status` / `receipt_at` by msgid
   alone: `campaigns.app` is a block name, not the AppID, so the campaign cannot narrow it;
   WeChat's msgids are unique per account in practice. A receipt whose msgid has no delivery
   row (yet) is stored with `matched = false`; `match_pending_receipts` applies it later.
   Precedence: the receipt with the latest `occurred_at` wins, a tie keeps what is stored,
   so neither a retry nor an out-of-order older receipt moves a delivery back. The push
   API's messages (`api_messages`, db/api_messages.py) get their receipts the same way, by
   msgid, in both paths: one lookup finds the msgid in either table, and the API's UPDATE
   runs only for a batch holding an API message's receipt.
3. Interactions (`interaction_kind` set): an `interactions` row each, and
   `recipients.last_interaction_at` moves forward only (max of stored and new).
4. subscribe / unsubscribe set `recipients.subscribed`, unless a newer (un)subscribe of the
   same follower is already stored (pushes can arrive out of order across batches). Within
   a batch the records apply in `occurred_at` order (ties: input order).

A follower unknown to `recipients` who interacts or subscribes gets a row (subscribed); one
who unsubscribes gets a row marked unsubscribed, so a later campaign skips them as
`unsubscribed`. Receipts and `other` pushes never create recipients.

Written like db/ledger.py: driver-level statements, SQLite executemany (in-process) or one
multi-row statement, PostgreSQL one statement per step with a binary array per column
(`unnest`), so a batch costs a handful of statements whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Select, bindparam, exists, or_, select, update
from sqlalchemy.orm import Session

from db.models import (
    CALLBACK_KINDS,
    RECEIPT_STATUSES,
    api_messages,
    callback_events,
    deliveries,
    interactions,
    recipients,
)
from db.types import utcnow

Executor = Connection | Session

RECEIPT = "receipt"
INTERACTION = "interaction"
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
OTHER = "other"

_MAX_BIGINT = 2**63 - 1  # msgid goes into a signed BIGINT
_CHUNK = 500  # rows per multi-row SQLite statement (13 columns: 6,500 variables) / IN list


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    """One parsed push, as the receiver hands it over (db/ cannot import wechat/).

    `dedupe_key` is the same for WeChat's retries of a push: `msg:<MsgId>` for user messages,
    `event:<openid>:<CreateTime>:<event>` for events. `occurred_at` is CreateTime, aware.
    `interaction_kind` None means the push does not open the 48-hour window (receipts never
    do: the user did nothing). `msgid` and `receipt_status` are set for receipts.
    """

    app_id: str
    dedupe_key: str
    openid: str
    kind: str  # 'receipt' | 'interaction' | 'subscribe' | 'unsubscribe' | 'other'
    occurred_at: datetime
    msg_type: str
    event: str | None = None
    interaction_kind: str | None = None  # 'message', 'click_menu', 'scancode', 'subscribe', …
    msgid: int | None = None  # TEMPLATESENDJOBFINISH MsgID, 64-bit
    receipt_status: str | None = None  # one of db.models.RECEIPT_STATUSES


@dataclass(frozen=True, slots=True)
class CallbackCounts:
    """What one batch did. `new + duplicates` = records given; the rest count new ones only.

    `receipts_matched`: new receipts whose msgid has a delivery row (applied, unless that row
    already holds a newer receipt); `receipts_unmatched`: stored with matched = false.
    `subscribed` / `unsubscribed`: new subscribe / unsubscribe pushes.
    """

    new: int = 0
    duplicates: int = 0
    receipts_matched: int = 0
    receipts_unmatched: int = 0
    interactions: int = 0
    subscribed: int = 0
    unsubscribed: int = 0


@dataclass(slots=True)
class _Follower:
    """What a batch does to one (app_id, openid): the latest interaction, the final
    subscription state and when it was set."""

    last_interaction_at: datetime | None = None
    subscribed: bool | None = None
    subscription_at: datetime | None = None
    interactions: list[tuple[str, datetime]] = field(default_factory=list)


# -- SQL ----------------------------------------------------------------------------------------

_EVENT_COLUMNS: tuple[tuple[str, str], ...] = (  # (column, PostgreSQL array element type)
    ("app_id", "text"),
    ("dedupe_key", "text"),
    ("openid", "text"),
    ("kind", "text"),
    ("msg_type", "text"),
    ("event", "text"),
    ("interaction_kind", "text"),
    ("msgid", "bigint"),
    ("receipt_status", "text"),
    ("matched", "boolean"),
    ("occurred_at", "timestamptz"),
    ("received_at", "timestamptz"),
)
_EVENT_NAMES = ", ".join(name for name, _ in _EVENT_COLUMNS)
_EVENT_CONFLICT = "ON CONFLICT (app_id, dedupe_key) DO NOTHING RETURNING app_id, dedupe_key"


@cache
def _sqlite_insert_events(rows: int) -> str:
    """One multi-row INSERT … RETURNING (SQLite's executemany returns no rows); cached per
    row count so full batches reuse one text (and sqlite3's statement cache)."""
    row = "(" + ", ".join("?" for _ in _EVENT_COLUMNS) + ")"
    return (
        f"INSERT INTO callback_events ({_EVENT_NAMES}) VALUES "
        + ", ".join(row for _ in range(rows))
        + f" {_EVENT_CONFLICT}"
    )


_PG_INSERT_EVENTS = (
    f"INSERT INTO callback_events ({_EVENT_NAMES}) SELECT * FROM unnest("
    + ", ".join(f"%b::{kind}[]" for _, kind in _EVENT_COLUMNS)
    + f") {_EVENT_CONFLICT}"
)

# Receipts: the latest occurred_at wins; a tie keeps the stored one.
_UPDATE_RECEIPTS = {
    "sqlite": """UPDATE deliveries SET receipt_status = ?1, receipt_at = ?2, updated_at = ?3
WHERE msgid = ?4 AND (receipt_at IS NULL OR receipt_at < ?2)""",
    "postgresql": """UPDATE deliveries AS d
SET receipt_status = s.status, receipt_at = s.at, updated_at = %b
FROM unnest(%b::bigint[], %b::text[], %b::timestamptz[]) AS s(msgid, status, at)
WHERE d.msgid = s.msgid AND (d.receipt_at IS NULL OR d.receipt_at < s.at)""",
}
# The same precedence for the push API's messages (no updated_at there).
_UPDATE_API_RECEIPTS = {
    "sqlite": """UPDATE api_messages SET receipt_status = ?1, receipt_at = ?2
WHERE msgid = ?3 AND (receipt_at IS NULL OR receipt_at < ?2)""",
    "postgresql": """UPDATE api_messages AS a
SET receipt_status = s.status, receipt_at = s.at
FROM unnest(%b::bigint[], %b::text[], %b::timestamptz[]) AS s(msgid, status, at)
WHERE a.msgid = s.msgid AND (a.receipt_at IS NULL OR a.receipt_at < s.at)""",
}

_INSERT_INTERACTIONS = {
    "sqlite": "INSERT INTO interactions (app_id, openid, kind, occurred_at) VALUES (?, ?, ?, ?)",
    "postgresql": "INSERT INTO interactions (app_id, openid, kind, occurred_at) "
    "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[])",
}

# Creates unknown followers; moves last_interaction_at forward only.
_RECIPIENT_CONFLICT = """ON CONFLICT (app_id, openid) DO UPDATE SET
  last_interaction_at = excluded.last_interaction_at,
  updated_at = excluded.updated_at
WHERE excluded.last_interaction_at IS NOT NULL
  AND (recipients.last_interaction_at IS NULL
       OR recipients.last_interaction_at < excluded.last_interaction_at)"""
_UPSERT_RECIPIENTS = {
    "sqlite": "INSERT INTO recipients "
    "(app_id, openid, subscribed, last_interaction_at, attributes, created_at, updated_at) "
    "VALUES (?1, ?2, ?3, ?4, '{}', ?5, ?5) " + _RECIPIENT_CONFLICT,
    "postgresql": "INSERT INTO recipients "
    "(app_id, openid, subscribed, last_interaction_at, attributes, created_at, updated_at) "
    "SELECT s.app_id, s.openid, s.subscribed, s.last_at, '{}'::jsonb, s.now, s.now "
    "FROM unnest(%b::text[], %b::text[], %b::boolean[], %b::timestamptz[], %b::timestamptz[]) "
    "AS s(app_id, openid, subscribed, last_at, now) " + _RECIPIENT_CONFLICT,
}

# The batch's final (un)subscribe, unless a newer one of that follower is already stored.
_NEWER_SUBSCRIPTION = """NOT EXISTS (
  SELECT 1 FROM callback_events e
  WHERE e.app_id = recipients.app_id AND e.openid = recipients.openid
    AND e.kind IN ('subscribe', 'unsubscribe') AND e.occurred_at > {at})"""
_UPDATE_SUBSCRIPTIONS = {
    "sqlite": "UPDATE recipients SET subscribed = ?1, updated_at = ?2 "
    "WHERE app_id = ?3 AND openid = ?4 AND subscribed <> ?1 AND "
    + _NEWER_SUBSCRIPTION.format(at="?5"),
    "postgresql": "UPDATE recipients SET subscribed = s.subscribed, updated_at = %b "
    "FROM unnest(%b::text[], %b::text[], %b::boolean[], %b::timestamptz[]) "
    "AS s(app_id, openid, subscribed, at) "
    "WHERE recipients.app_id = s.app_id AND recipients.openid = s.openid "
    "AND recipients.subscribed <> s.subscribed AND " + _NEWER_SUBSCRIPTION.format(at="s.at"),
}


# -- helpers ------------------------------------------------------------------------------------


def _connection(executor: Executor) -> Connection:
    return executor.connection() if isinstance(executor, Session) else executor


def _stamp(value: datetime | None, sqlite: bool) -> Any:
    """As db.types.UTCDateTime would store it (the statements here bypass type processing).
    On SQLite, `isoformat` writes `sqlite_text`'s exact text at a quarter of strftime's cost
    (a test compares them)."""
    if value is None:
        return None
    if not sqlite:
        return value
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _execute(connection: Connection, sql: str, rows: list[tuple[Any, ...]], *head: Any) -> None:
    """`sql` for every row: executemany on SQLite, one call with column arrays (after the
    scalar `head` parameters) on PostgreSQL."""
    if not rows:
        return
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql(sql, rows)
    else:
        columns = tuple(list(column) for column in zip(*rows, strict=True))
        connection.exec_driver_sql(sql, (*head, *columns))


def _shortest(*columns: Any) -> int:
    """The smallest VARCHAR length among the columns one record field lands in."""
    return min(int(column.type.length) for column in columns)


#: The longest text each record field may hold, read from the models: the one home of these
#: limits (PostgreSQL enforces them with DataError; SQLite would store anything).
TEXT_LIMITS: dict[str, int] = {
    "app_id": _shortest(callback_events.c.app_id, recipients.c.app_id, interactions.c.app_id),
    "dedupe_key": _shortest(callback_events.c.dedupe_key),
    "openid": _shortest(callback_events.c.openid, recipients.c.openid, interactions.c.openid),
    "msg_type": _shortest(callback_events.c.msg_type),
    "event": _shortest(callback_events.c.event),
    "interaction_kind": _shortest(callback_events.c.interaction_kind, interactions.c.kind),
    "receipt_status": _shortest(
        callback_events.c.receipt_status,
        deliveries.c.receipt_status,
        api_messages.c.receipt_status,
    ),
}


class InvalidRecord(ValueError):
    """A record that cannot be stored as it is: retrying will not help. The message names
    the field and the rule, never the value (it may be anything a stranger sent)."""


def check_record(record: CallbackRecord) -> None:
    """Refuse, before any write, a record that does not fit its columns or the vocabulary:
    the receiver calls it to answer 400; `apply_callbacks` calls it for every record."""
    for name, limit in TEXT_LIMITS.items():
        value = getattr(record, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidRecord(f"{name} is not text")
        if len(value) > limit:
            raise InvalidRecord(f"{name} is {len(value)} characters, over its column's {limit}")
        if "\x00" in value:
            raise InvalidRecord(f"{name} contains a NUL character")
    if not record.openid or not record.dedupe_key or not record.msg_type:
        raise InvalidRecord("openid, dedupe_key and msg_type are required")
    if record.kind not in CALLBACK_KINDS:
        raise InvalidRecord(f"kind {record.kind!r} is not one of {CALLBACK_KINDS}")
    if record.occurred_at.tzinfo is None:
        raise InvalidRecord("occurred_at is naive; pass an aware UTC datetime")
    if record.receipt_status is not None and record.receipt_status not in RECEIPT_STATUSES:
        raise InvalidRecord(
            f"receipt_status {record.receipt_status!r} is not one of {RECEIPT_STATUSES}"
        )
    if record.msgid is not None and not 0 <= record.msgid <= _MAX_BIGINT:
        raise InvalidRecord("msgid does not fit a signed 64-bit integer")
    if record.kind == RECEIPT and record.interaction_kind is not None:
        raise InvalidRecord("a receipt is not a user interaction")


def _is_receipt(record: CallbackRecord) -> bool:
    """A receipt that can be applied (a malformed one is only stored, unmatched)."""
    return record.kind == RECEIPT and record.msgid is not None and record.receipt_status is not None


@dataclass(frozen=True, slots=True)
class _Known:
    """The msgids that have a delivery row, and those that have a push API message."""

    ledger: set[int]
    api: set[int]

    def __contains__(self, msgid: object) -> bool:
        return msgid in self.ledger or msgid in self.api


_KNOWN_MSGIDS = {
    "postgresql": "SELECT DISTINCT msgid, 0 FROM deliveries WHERE msgid = ANY(%b::bigint[]) "
    "UNION SELECT DISTINCT msgid, 1 FROM api_messages WHERE msgid = ANY(%b::bigint[])",
    "sqlite": "SELECT DISTINCT msgid, 0 FROM deliveries WHERE msgid IN ({marks}) "
    "UNION SELECT DISTINCT msgid, 1 FROM api_messages WHERE msgid IN ({marks})",
}


def _known_msgids(connection: Connection, msgids: set[int]) -> _Known:
    """Which msgids have a delivery row or an API message: one statement, the tables'
    msgid indexes answer it."""
    known = _Known(set(), set())
    if not msgids:
        return known
    found: list[Any] = []
    if connection.dialect.name == "postgresql":
        wanted = list(msgids)
        found.extend(connection.exec_driver_sql(_KNOWN_MSGIDS["postgresql"], (wanted, wanted)))
    else:
        wanted = list(msgids)
        for start in range(0, len(wanted), _CHUNK):
            chunk = tuple(wanted[start : start + _CHUNK])
            marks = ", ".join("?" for _ in chunk)
            sql = _KNOWN_MSGIDS["sqlite"].format(marks=marks)
            found.extend(connection.exec_driver_sql(sql, chunk + chunk))
    for msgid, source in found:
        (known.api if source else known.ledger).add(int(msgid))
    return known


def _insert_events(
    connection: Connection,
    records: list[CallbackRecord],
    known: _Known,
    now: datetime,
) -> set[tuple[str, str]]:
    """Store the records, skipping keys already stored; returns the keys that were new.
    The answer comes from the INSERT itself (RETURNING), so two receivers storing the same
    retry at once cannot both take it for new."""
    sqlite = connection.dialect.name == "sqlite"
    received = _stamp(now, sqlite)
    rows = [
        (
            r.app_id,
            r.dedupe_key,
            r.openid,
            r.kind,
            r.msg_type,
            r.event,
            r.interaction_kind,
            r.msgid,
            r.receipt_status,
            _is_receipt(r) and r.msgid in known,
            _stamp(r.occurred_at, sqlite),
            received,
        )
        for r in records
    ]
    new: set[tuple[str, str]] = set()
    if sqlite:
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            flat = tuple(value for row in chunk for value in row)
            result = connection.exec_driver_sql(_sqlite_insert_events(len(chunk)), flat)
            new.update((app_id, key) for app_id, key in result)
    else:
        columns = tuple(list(column) for column in zip(*rows, strict=True))
        result = connection.exec_driver_sql(_PG_INSERT_EVENTS, columns)
        new.update((app_id, key) for app_id, key in result)
    return new


def _apply_receipts(
    connection: Connection,
    receipts: Iterable[tuple[int, str, datetime]],
    now: datetime,
    known: _Known,
) -> None:
    """Set the receipt columns of the deliveries and the API messages with these msgids
    (`known` says which table holds which; a table none of them is in is not touched); per
    msgid the receipt with the latest time goes in (one UPDATE may touch a row only once
    on PostgreSQL)."""
    latest: dict[int, tuple[int, str, datetime]] = {}
    for msgid, status, at in receipts:
        stored = latest.get(msgid)
        if stored is None or at > stored[2]:
            latest[msgid] = (msgid, status, at)
    dialect = connection.dialect.name
    sqlite = dialect == "sqlite"
    ledger = [value for msgid, value in latest.items() if msgid in known.ledger]
    api = [value for msgid, value in latest.items() if msgid in known.api]
    if sqlite:
        stamp = _stamp(now, True)
        rows = [(status, _stamp(at, True), stamp, msgid) for msgid, status, at in ledger]
        api_rows = [(status, _stamp(at, True), msgid) for msgid, status, at in api]
        _execute(connection, _UPDATE_RECEIPTS[dialect], rows)
        _execute(connection, _UPDATE_API_RECEIPTS[dialect], api_rows)
    else:
        _execute(connection, _UPDATE_RECEIPTS[dialect], ledger, now)
        _execute(connection, _UPDATE_API_RECEIPTS[dialect], api)


def _apply_followers(
    connection: Connection, followers: dict[tuple[str, str], _Follower], now: datetime
) -> None:
    """interactions rows, then recipients: create unknown ones, move last_interaction_at
    forward, set the final subscription state. Rows go in key order, so two receiver
    processes writing the same followers lock their rows in the same order."""
    if not followers:
        return
    followers = dict(sorted(followers.items(), key=lambda item: item[0]))
    dialect = connection.dialect.name
    sqlite = dialect == "sqlite"
    stamp = _stamp(now, sqlite)
    events = [
        (app_id, openid, kind, _stamp(at, sqlite))
        for (app_id, openid), f in followers.items()
        for kind, at in f.interactions
    ]
    _execute(connection, _INSERT_INTERACTIONS[dialect], events)
    upserts = [
        (
            app_id,
            openid,
            True if f.subscribed is None else f.subscribed,
            _stamp(f.last_interaction_at, sqlite),
            stamp,
        )
        for (app_id, openid), f in followers.items()
    ]
    _execute(connection, _UPSERT_RECIPIENTS[dialect], upserts)
    changes = [
        (app_id, openid, f.subscribed, _stamp(f.subscription_at, sqlite))
        for (app_id, openid), f in followers.items()
        if f.subscribed is not None
    ]
    if sqlite:
        rows = [
            (subscribed, stamp, app_id, openid, at) for app_id, openid, subscribed, at in changes
        ]
        _execute(connection, _UPDATE_SUBSCRIPTIONS[dialect], rows)
    else:
        _execute(connection, _UPDATE_SUBSCRIPTIONS[dialect], changes, now)


# -- the API ------------------------------------------------------------------------------------


def apply_callbacks(executor: Executor, records: Sequence[CallbackRecord]) -> CallbackCounts:
    """Store a batch of pushes and apply the new ones (see the module doc), in the caller's
    transaction (`with engine.begin() as conn: apply_callbacks(conn, batch)`).

    Raises InvalidRecord (a ValueError), before writing anything, for a record
    `check_record` refuses: too long for its column, outside the vocabulary, a naive
    `occurred_at`, a msgid beyond a signed 64-bit integer.
    """
    if not records:
        return CallbackCounts()
    for record in records:
        check_record(record)
    unique: dict[tuple[str, str], CallbackRecord] = {}
    for record in records:
        unique.setdefault((record.app_id, record.dedupe_key), record)
    connection = _connection(executor)
    now = utcnow()
    candidates = list(unique.values())
    known = _known_msgids(
        connection, {r.msgid for r in candidates if _is_receipt(r) and r.msgid is not None}
    )
    # In key order, so two receiver processes storing the same pushes (WeChat's retries)
    # take the unique index's locks in the same order; `new` keeps the input order below.
    ordered = sorted(candidates, key=lambda r: (r.app_id, r.dedupe_key))
    inserted = _insert_events(connection, ordered, known, now)
    new = sorted(
        (r for r in candidates if (r.app_id, r.dedupe_key) in inserted),
        key=lambda r: r.occurred_at,
    )

    matched: list[tuple[int, str, datetime]] = []
    unmatched = 0
    followers: dict[tuple[str, str], _Follower] = {}
    interactions = subscribed = unsubscribed = 0
    for r in new:
        if r.kind == RECEIPT:
            if r.msgid is not None and r.receipt_status is not None and r.msgid in known:
                matched.append((r.msgid, r.receipt_status, r.occurred_at))
            else:
                unmatched += 1
        if r.interaction_kind is None and r.kind not in (SUBSCRIBE, UNSUBSCRIBE):
            continue
        follower = followers.setdefault((r.app_id, r.openid), _Follower())
        if r.interaction_kind is not None:
            interactions += 1
            follower.interactions.append((r.interaction_kind, r.occurred_at))
            follower.last_interaction_at = r.occurred_at  # `new` is in time order
        if r.kind in (SUBSCRIBE, UNSUBSCRIBE):
            follower.subscribed = r.kind == SUBSCRIBE
            follower.subscription_at = r.occurred_at
            subscribed += r.kind == SUBSCRIBE
            unsubscribed += r.kind == UNSUBSCRIBE

    if matched:
        _apply_receipts(connection, matched, now, known)
    _apply_followers(connection, followers, now)
    return CallbackCounts(
        new=len(new),
        duplicates=len(records) - len(new),
        receipts_matched=len(matched),
        receipts_unmatched=unmatched,
        interactions=interactions,
        subscribed=subscribed,
        unsubscribed=unsubscribed,
    )


@cache
def _pending_receipts() -> Select[Any]:
    """Unmatched receipts whose msgid is now in the ledger or api_messages. Built once: the
    push API asks after every write, and building the clause cost more than running it."""
    e = callback_events
    in_ledger = exists().where(deliveries.c.msgid == e.c.msgid)
    in_api = exists().where(api_messages.c.msgid == e.c.msgid)
    return select(
        e.c.id,
        e.c.msgid,
        e.c.receipt_status,
        e.c.occurred_at,
        in_ledger.label("in_ledger"),
        in_api.label("in_api"),
    ).where(
        e.c.kind == RECEIPT,
        e.c.matched.is_(False),
        e.c.receipt_status.is_not(None),
        or_(in_ledger, in_api),
    )


@cache
def _pending_receipts_of() -> Select[Any]:
    """`_pending_receipts` narrowed to the msgids in the expanding parameter `msgids`."""
    e = callback_events
    return _pending_receipts().where(e.c.msgid.in_(bindparam("msgids", expanding=True)))


def match_pending_receipts(executor: Executor, msgids: Iterable[int] | None = None) -> int:
    """Apply stored receipts that found no delivery row or API message when they arrived,
    now that one carries their msgid; returns how many receipts were matched.

    A receipt can beat the ledger: the send path writes a batch's msgids after the whole
    batch was answered, and WeChat's receipt may come first (the push API's `record` too).
    Pass the msgids a write just stored (an index lookup each), or nothing to sweep every
    unmatched receipt.
    """
    connection = _connection(executor)
    if msgids is None:
        found = list(connection.execute(_pending_receipts()))
    else:
        wanted = list(dict.fromkeys(msgids))
        narrowed = _pending_receipts_of()
        found = []
        for start in range(0, len(wanted), _CHUNK):
            found.extend(connection.execute(narrowed, {"msgids": wanted[start : start + _CHUNK]}))
    if not found:
        return 0
    now = utcnow()
    known = _Known(
        {row.msgid for row in found if row.in_ledger}, {row.msgid for row in found if row.in_api}
    )
    _apply_receipts(
        connection, ((r.msgid, r.receipt_status, r.occurred_at) for r in found), now, known
    )
    e = callback_events
    mark = update(e).where(e.c.id.in_(bindparam("ids", expanding=True))).values(matched=True)
    ids = [row.id for row in found]
    for start in range(0, len(ids), _CHUNK):
        connection.execute(mark, {"ids": ids[start : start + _CHUNK]})
    return len(found)
