"""The push API's messages in table `api_messages`: accepted, sent, answered, receipted.

Every function takes the caller's connection and never commits: the API group-commits many
requests per transaction, and a 2xx is answered only after the commit.

- `accept` stores the messages of many signed requests at once. Each request's nonce key is
  claimed first (db/nonces.py, in the same transaction): a request whose key was claimed
  before is `Replayed` and stores nothing. The messages go in with one multi-row
  `INSERT … ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING id`; a message whose
  key is already stored gets the stored row back, `created_now` False, and the caller
  compares `request_hash` (same body: the first answer; another body: refused). Two
  processes accepting one key at once: PostgreSQL makes the second INSERT wait for the first
  transaction, then skips the row (committed) or inserts it (rolled back); SQLite has one
  writer at a time. Rows go in key order, so two transactions never wait on each other in a
  cycle.
- `record` stores WeChat's answers. A final row (sent, failed, unknown) never goes back to
  `queued`; `attempts` adds up (each `Result` counts the attempts since the last record),
  `first_attempt_at` keeps the earliest, msgid and sent_at are kept when a result has none.
  It then matches the receipts the receiver stored before the msgid was known
  (db/callbacks.py).
- `get`, `unfinished` (the queue, oldest first), `counts` (for /health and the digest).

Statements are driver-level like db/ledger.py and db/callbacks.py: SQLite one multi-row
statement or an in-process executemany, PostgreSQL one statement with a binary array per
column (`unnest`), so a call costs a handful of statements whatever its size.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, func, select, tuple_
from sqlalchemy.orm import Session

from db.callbacks import match_pending_receipts
from db.models import API_MESSAGE_STATUSES, api_messages
from db.nonces import claim

Executor = Connection | Session

QUEUED = "queued"
SENT = "sent"
FAILED = "failed"
UNKNOWN = "unknown"
#: Statuses WeChat's answer (or the restart rule) settled: never turned back into `queued`.
FINAL_STATUSES = frozenset({SENT, FAILED, UNKNOWN})
assert FINAL_STATUSES | {QUEUED} == set(API_MESSAGE_STATUSES)

ID_PREFIX = "msg_"
_ID_DIGITS = 22
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # ASCII order
_CHUNK = 500  # rows per multi-row SQLite statement (14 columns: 7,000 variables) / IN list
_NO_ERRCODE = "none"


# -- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message as the API accepts it (before any send). `payload` holds data, url,
    miniprogram and text, whichever the kind uses."""

    id: str
    caller: str
    key_id: str
    idempotency_key: str | None
    request_hash: str
    app: str
    kind: str
    openid: str
    template_id: str | None
    payload: Mapping[str, Any]
    client_msg_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One row of `api_messages`, payload decoded."""

    id: str
    caller: str
    key_id: str
    idempotency_key: str | None
    request_hash: str
    app: str
    kind: str
    openid: str
    template_id: str | None
    payload: dict[str, Any]
    client_msg_id: str | None
    status: str
    errcode: int | None
    errmsg: str | None
    reason: str | None
    attempts: int
    msgid: int | None
    created_at: datetime
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    sent_at: datetime | None
    receipt_status: str | None
    receipt_at: datetime | None

    @property
    def final(self) -> bool:
        """True once WeChat's answer (or the restart rule) settled it: no more sends."""
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Request:
    """One signed request: its replay key (`api.signing.nonce_key`; None: not claimed, e.g.
    in tests) and its messages (one, or a batch's)."""

    nonce_key: str | None
    messages: Sequence[NewMessage]


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request's messages in its order: the row and whether this call created it (False:
    its (caller, idempotency_key) was stored before, by this call or an earlier one)."""

    messages: list[tuple[StoredMessage, bool]]


@dataclass(frozen=True, slots=True)
class Replayed:
    """The request's nonce key was claimed before (by any process, or earlier in the same
    call): a replay (answer 409). None of its messages was stored."""

    nonce_key: str


@dataclass(frozen=True, slots=True)
class Result:
    """What a send did to one message. `attempts`: HTTP attempts since the last `record` of
    it (they add up). A non-final `status` (queued) records the attempts of a message that
    stays in the queue, unless the row is already final."""

    id: str
    status: str
    errcode: int | None = None
    errmsg: str | None = None
    reason: str | None = None
    attempts: int = 0
    msgid: int | None = None
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiCounts:
    """The API's messages created since a moment: how many, by status, and the failed ones
    by errcode (as text; "none" when WeChat gave no errcode, e.g. a timeout)."""

    accepted: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    failed_by_errcode: dict[str, int] = field(default_factory=dict)


def new_message_id() -> str:
    """ "msg_" + 22 base-62 digits of 128 bits: 48 of milliseconds since the epoch, then 80
    random. Ids sort by creation time (index inserts stay at the end) and never repeat."""
    value = (int(time.time() * 1000) & (2**48 - 1)) << 80 | secrets.randbits(80)
    digits = []
    for _ in range(_ID_DIGITS):
        value, digit = divmod(value, 62)
        digits.append(_ID_ALPHABET[digit])
    return ID_PREFIX + "".join(reversed(digits))


# -- SQL ----------------------------------------------------------------------------------------

_INSERT_COLUMNS: tuple[tuple[str, str], ...] = (  # (column, PostgreSQL array element type)
    ("id", "text"),
    ("caller", "text"),
    ("key_id", "text"),
    ("idempotency_key", "text"),
    ("request_hash", "text"),
    ("app", "text"),
    ("kind", "text"),
    ("openid", "text"),
    ("template_id", "text"),
    ("payload", "text"),
    ("client_msg_id", "text"),
    ("created_at", "timestamptz"),
)
_INSERT_NAMES = ", ".join(name for name, _ in _INSERT_COLUMNS)
_CONFLICT = "ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING id"


@cache
def _sqlite_insert(rows: int) -> str:
    """One multi-row INSERT … RETURNING (SQLite's executemany returns no rows), cached per
    row count."""
    row = "(" + ", ".join("?" for _ in _INSERT_COLUMNS) + f", '{QUEUED}', 0)"
    return (
        f"INSERT INTO api_messages ({_INSERT_NAMES}, status, attempts) VALUES "
        + ", ".join(row for _ in range(rows))
        + f" {_CONFLICT}"
    )


_PG_INSERT = (
    f"INSERT INTO api_messages ({_INSERT_NAMES}, status, attempts) "
    "SELECT "
    + ", ".join(
        f"s.{name}::jsonb" if name == "payload" else f"s.{name}" for name, _ in _INSERT_COLUMNS
    )
    + f", '{QUEUED}', 0 FROM unnest("
    + ", ".join(f"%b::{kind}[]" for _, kind in _INSERT_COLUMNS)
    + f") AS s({_INSERT_NAMES}) {_CONFLICT}"
)

# A final row never goes back to queued; attempts add up; the earliest first attempt stays;
# msgid and sent_at stay when the result has none.
_FINAL_SQL = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))
_RECORD = {
    "sqlite": f"""UPDATE api_messages SET
  status = ?2, errcode = ?3, errmsg = ?4, reason = ?5, attempts = attempts + ?6,
  msgid = COALESCE(?7, msgid),
  first_attempt_at = CASE WHEN first_attempt_at IS NULL OR first_attempt_at > ?8
                          THEN COALESCE(?8, first_attempt_at) ELSE first_attempt_at END,
  last_attempt_at = COALESCE(?9, last_attempt_at),
  sent_at = COALESCE(?10, sent_at)
WHERE id = ?1 AND (status = '{QUEUED}' OR ?2 IN ({_FINAL_SQL}))""",
    "postgresql": f"""UPDATE api_messages AS a SET
  status = s.status, errcode = s.errcode, errmsg = s.errmsg, reason = s.reason,
  attempts = a.attempts + s.attempts,
  msgid = COALESCE(s.msgid, a.msgid),
  first_attempt_at = LEAST(a.first_attempt_at, s.first_at),
  last_attempt_at = COALESCE(s.last_at, a.last_attempt_at),
  sent_at = COALESCE(s.sent_at, a.sent_at)
FROM unnest(%b::text[], %b::text[], %b::integer[], %b::text[], %b::text[], %b::integer[],
            %b::bigint[], %b::timestamptz[], %b::timestamptz[], %b::timestamptz[])
  AS s(id, status, errcode, errmsg, reason, attempts, msgid, first_at, last_at, sent_at)
WHERE a.id = s.id AND (a.status = '{QUEUED}' OR s.status IN ({_FINAL_SQL}))""",
}


# -- helpers ------------------------------------------------------------------------------------


def _connection(executor: Executor) -> Connection:
    return executor.connection() if isinstance(executor, Session) else executor


def _stamp(value: datetime | None, sqlite: bool) -> Any:
    """As db.types.UTCDateTime stores it (these statements bypass type processing); on
    SQLite `isoformat` writes `sqlite_text`'s exact text at a quarter of strftime's cost."""
    if value is None or not sqlite:
        return value
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _payload_text(payload: Mapping[str, Any]) -> str:
    return json.dumps(dict(payload), ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _stored(row: Any) -> StoredMessage:
    values = dict(row._mapping)
    payload = values["payload"]
    if isinstance(payload, str):  # a driver that hands JSON back as text
        payload = json.loads(payload)
    values["payload"] = dict(payload or {})
    return StoredMessage(**values)


def _created(message: NewMessage, payload: str) -> StoredMessage:
    """The row `accept` just inserted (`payload` its JSON text), without reading it back."""
    return StoredMessage(
        id=message.id,
        caller=message.caller,
        key_id=message.key_id,
        idempotency_key=message.idempotency_key,
        request_hash=message.request_hash,
        app=message.app,
        kind=message.kind,
        openid=message.openid,
        template_id=message.template_id,
        payload=json.loads(payload),
        client_msg_id=message.client_msg_id,
        status=QUEUED,
        errcode=None,
        errmsg=None,
        reason=None,
        attempts=0,
        msgid=None,
        created_at=message.created_at,
        first_attempt_at=None,
        last_attempt_at=None,
        sent_at=None,
        receipt_status=None,
        receipt_at=None,
    )


def _merge(before: Result, after: Result) -> Result:
    """Two results of one message in one `record` call, as two calls would store them."""
    if before.status in FINAL_STATUSES and after.status == QUEUED:
        return before
    return replace(
        after,
        attempts=before.attempts + after.attempts,
        msgid=after.msgid if after.msgid is not None else before.msgid,
        first_attempt_at=min(
            (t for t in (before.first_attempt_at, after.first_attempt_at) if t is not None),
            default=None,
        ),
        last_attempt_at=after.last_attempt_at or before.last_attempt_at,
        sent_at=after.sent_at or before.sent_at,
    )


def _check(message: NewMessage) -> None:
    if message.created_at.tzinfo is None:
        raise ValueError(f"message {message.id}: created_at is naive; pass an aware datetime")


def _insert(
    connection: Connection, messages: list[NewMessage], payloads: Mapping[str, str]
) -> set[str]:
    """Insert the messages, skipping any whose (caller, idempotency_key) is stored; returns
    the ids inserted (from the INSERT itself, so a concurrent accept cannot fool it)."""
    sqlite = connection.dialect.name == "sqlite"
    rows = [
        (
            m.id,
            m.caller,
            m.key_id,
            m.idempotency_key,
            m.request_hash,
            m.app,
            m.kind,
            m.openid,
            m.template_id,
            payloads[m.id],
            m.client_msg_id,
            _stamp(m.created_at, sqlite),
        )
        for m in messages
    ]
    inserted: set[str] = set()
    if sqlite:
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            flat = tuple(value for row in chunk for value in row)
            inserted.update(
                i for (i,) in connection.exec_driver_sql(_sqlite_insert(len(chunk)), flat)
            )
    else:
        columns = tuple(list(column) for column in zip(*rows, strict=True))
        inserted.update(i for (i,) in connection.exec_driver_sql(_PG_INSERT, columns))
    return inserted


def _by_keys(
    connection: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], StoredMessage]:
    """The stored rows of these (caller, idempotency_key) pairs (the unique index answers)."""
    a = api_messages
    pair = tuple_(a.c.caller, a.c.idempotency_key)
    found: dict[tuple[str, str], StoredMessage] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start : start + _CHUNK])
        for row in connection.execute(select(a).where(pair.in_(chunk))):
            stored = _stored(row)
            assert stored.idempotency_key is not None
            found[(stored.caller, stored.idempotency_key)] = stored
    return found


# -- the API ------------------------------------------------------------------------------------


def accept(executor: Executor, requests: Sequence[Request]) -> list[Accepted | Replayed]:
    """Store the requests' messages in the caller's transaction (see the module doc); one
    answer per request, in order. Raises ValueError, before writing, for a naive
    `created_at`; the database's IntegrityError for a duplicate message id."""
    for request in requests:
        for message in request.messages:
            _check(message)
    connection = _connection(executor)
    nonce_keys = [r.nonce_key for r in requests if r.nonce_key is not None]
    claimed = claim(connection, nonce_keys) if nonce_keys else set()

    answers: list[Accepted | Replayed | None] = []
    to_insert: dict[tuple[str, str] | str, NewMessage] = {}  # (caller, key) or id → message
    for request in requests:
        key = request.nonce_key
        if key is not None:
            if key not in claimed:
                answers.append(Replayed(key))
                continue
            claimed.discard(key)  # a second copy in this call is a replay
        answers.append(None)
        for message in request.messages:
            slot: tuple[str, str] | str = (
                message.id
                if message.idempotency_key is None
                else (message.caller, message.idempotency_key)
            )
            to_insert.setdefault(slot, message)

    # Key order: two transactions inserting the same keys lock them in the same order.
    ordered = sorted(to_insert.values(), key=lambda m: (m.caller, m.idempotency_key or "", m.id))
    payloads = {m.id: _payload_text(m.payload) for m in ordered}
    inserted = _insert(connection, ordered, payloads) if ordered else set()
    conflicts = [
        (m.caller, m.idempotency_key)
        for m in ordered
        if m.id not in inserted and m.idempotency_key is not None
    ]
    existing = _by_keys(connection, conflicts) if conflicts else {}
    missing = [m.id for m in ordered if m.id not in inserted and m.idempotency_key is None]
    if missing:
        raise RuntimeError(f"api_messages refused {len(missing)} rows without a key")

    rows = {m.id: _created(m, payloads[m.id]) for m in ordered if m.id in inserted}
    out: list[Accepted | Replayed] = []
    for request, answer in zip(requests, answers, strict=True):
        if answer is not None:
            out.append(answer)
            continue
        messages: list[tuple[StoredMessage, bool]] = []
        for message in request.messages:
            if message.idempotency_key is None:
                messages.append((rows[message.id], True))
                continue
            pair = (message.caller, message.idempotency_key)
            first = to_insert[pair]
            if first.id in rows:
                messages.append((rows[first.id], first is message))
            elif pair in existing:
                messages.append((existing[pair], False))
            else:  # the conflicting row vanished (deleted between the two statements)
                raise RuntimeError(f"api_messages: the row of idempotency key {pair} is gone")
        out.append(Accepted(messages))
    return out


def claim_nonce_only(executor: Executor, nonce_key: str) -> bool:
    """Claim the replay key of a signed request that stores nothing (a GET): True if it was
    new, False for a replay. In the caller's transaction, like `accept`."""
    return bool(claim(executor, [nonce_key]))


def record(executor: Executor, results: Sequence[Result]) -> None:
    """Store WeChat's answers (see the module doc), then apply receipts that arrived before
    these msgids were stored."""
    if not results:
        return
    for result in results:
        if result.status not in API_MESSAGE_STATUSES:
            raise ValueError(f"status {result.status!r} is not one of {API_MESSAGE_STATUSES}")
    # One UPDATE may touch a row once on PostgreSQL: results of one id are merged first.
    merged: dict[str, Result] = {}
    for result in results:
        before = merged.get(result.id)
        merged[result.id] = result if before is None else _merge(before, result)
    connection = _connection(executor)
    dialect = connection.dialect.name
    sqlite = dialect == "sqlite"
    rows = [
        (
            r.id,
            r.status,
            r.errcode,
            r.errmsg,
            r.reason,
            r.attempts,
            r.msgid,
            _stamp(r.first_attempt_at, sqlite),
            _stamp(r.last_attempt_at, sqlite),
            _stamp(r.sent_at, sqlite),
        )
        for r in sorted(merged.values(), key=lambda r: r.id)  # lock order
    ]
    if sqlite:
        connection.exec_driver_sql(_RECORD[dialect], rows)
    else:
        columns = tuple(list(column) for column in zip(*rows, strict=True))
        connection.exec_driver_sql(_RECORD[dialect], columns)
    msgids = [r.msgid for r in merged.values() if r.msgid is not None]
    if msgids:
        # WeChat's receipt can beat this write; the receiver kept it, unmatched.
        match_pending_receipts(connection, msgids)


def get(executor: Executor, message_id: str) -> StoredMessage | None:
    """One message by id, or None."""
    row = (
        _connection(executor)
        .execute(select(api_messages).where(api_messages.c.id == message_id))
        .first()
    )
    return None if row is None else _stored(row)


def get_many(executor: Executor, message_ids: Iterable[str]) -> dict[str, StoredMessage]:
    """Messages by id (ids not stored are left out)."""
    wanted = list(dict.fromkeys(message_ids))
    connection = _connection(executor)
    found: dict[str, StoredMessage] = {}
    for start in range(0, len(wanted), _CHUNK):
        query = select(api_messages).where(api_messages.c.id.in_(wanted[start : start + _CHUNK]))
        for row in connection.execute(query):
            found[row.id] = _stored(row)
    return found


def unfinished(
    executor: Executor, limit: int, before: datetime | None = None
) -> list[StoredMessage]:
    """Queued messages, oldest first (at most `limit`; with `before`, only those created
    before it): what a restarted service sends again."""
    a = api_messages
    query = select(a).where(a.c.status == QUEUED)
    if before is not None:
        query = query.where(a.c.created_at < before)
    query = query.order_by(a.c.created_at, a.c.id).limit(limit)
    return [_stored(row) for row in _connection(executor).execute(query)]


def counts(executor: Executor, since: datetime) -> ApiCounts:
    """The messages created since `since`: one grouped query."""
    a = api_messages
    query = (
        select(a.c.status, a.c.errcode, func.count())
        .where(a.c.created_at >= since)
        .group_by(a.c.status, a.c.errcode)
    )
    accepted = 0
    by_status: dict[str, int] = {}
    failed: dict[str, int] = {}
    for status, errcode, n in _connection(executor).execute(query):
        accepted += n
        by_status[status] = by_status.get(status, 0) + n
        if status == FAILED:
            code = _NO_ERRCODE if errcode is None else str(errcode)
            failed[code] = failed.get(code, 0) + n
    return ApiCounts(accepted=accepted, by_status=by_status, failed_by_errcode=failed)
