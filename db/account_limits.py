"""Each WeChat account's send rate and daily template quota, as rows every campaign, shard and
worker process of the account reserves from (docs/scaling.md, "Account-wide limits").

- `reserve_slots`: the next `n` send slots of the account on one schedule (GCRA: the row
  holds the theoretical arrival time `tat` of the account's next message). PostgreSQL
  reserves on its own clock (`clock_timestamp()`), so machines with skewed clocks share one
  schedule; SQLite on this machine's `time.time()` (one machine is all SQLite serves).
- `reserve_quota`: up to `n` of the account's daily quota for one Beijing day (WeChat resets
  it at midnight Asia/Shanghai): `LEAST(n, quota - used)`, so concurrent reservations never
  exceed the quota. A grant of 0 means the day's quota is spent.
- `give_back_quota`: what a run reserved and did not send goes back to the day's row.

One statement per reservation (the quota's first of a day inserts its row first: rows are
created on first use). Every function takes the connection and never commits: commit at once,
since a reservation holds the account's row lock until then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, text

__all__ = [
    "BEIJING",
    "QuotaGrant",
    "SlotGrant",
    "beijing_day",
    "give_back_quota",
    "quota_used",
    "reserve_quota",
    "reserve_slots",
]

#: WeChat counts its daily quotas per calendar day in Beijing time.
BEIJING = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True, slots=True)
class SlotGrant:
    """`count` send slots: the first `wait` seconds from now (0: at once), then one every
    `interval` seconds."""

    count: int
    wait: float
    interval: float


@dataclass(frozen=True, slots=True)
class QuotaGrant:
    """`granted` messages of the account's quota on Beijing day `day`; `used` is the day's
    count with them (the quota is spent once a grant is 0)."""

    granted: int
    day: date
    used: int
    quota: int


def beijing_day(at: float | None = None) -> date:
    """The Beijing calendar day of unix time `at` (default: now), the day WeChat counts in."""
    return datetime.fromtimestamp(time.time() if at is None else at, BEIJING).date()


# -- the rate ---------------------------------------------------------------------------------

# The row's next free slot is GREATEST(tat, now): an idle account starts at once, a busy one
# where the last reservation ended; the reservation moves tat past its n slots.
_SLOTS_SQL = {
    "postgresql": text(
        "WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now) "
        "INSERT INTO account_rate AS g (app_id, tat) SELECT :app_id, c.now + :cost FROM c "
        "ON CONFLICT (app_id) DO UPDATE SET tat = GREATEST(g.tat, (SELECT now FROM c)) + :cost "
        "RETURNING g.tat - :cost - (SELECT now FROM c)"
    ),
    "sqlite": text(
        "INSERT INTO account_rate (app_id, tat) VALUES (:app_id, :now + :cost) "
        "ON CONFLICT (app_id) DO UPDATE SET tat = MAX(tat, :now) + :cost "
        "RETURNING tat - :cost - :now"
    ),
}


#: A write that changes nothing: SQLite takes the database's write lock for it (waiting for
#: any other writer), which the transaction then holds until it commits.
_SQLITE_WRITE_LOCK = text("UPDATE account_rate SET tat = tat WHERE app_id = :app_id")


def reserve_slots(conn: Connection, app_id: str, n: int, rate: float) -> SlotGrant:
    """Reserve the account's next `n` send slots at `rate` messages per second."""
    if n < 1:
        raise ValueError("reserve at least one slot")
    if not rate > 0:
        raise ValueError("rate must be > 0")
    cost = n / rate
    dialect = conn.dialect.name
    values: dict[str, object] = {"app_id": app_id, "cost": cost}
    if dialect == "sqlite":
        # The write lock first, then the clock: a `now` read before waiting for another
        # writer would be stale by that wait, and the slot's wait too long by as much.
        conn.execute(_SQLITE_WRITE_LOCK, {"app_id": app_id})
        values["now"] = time.time()
    wait = float(conn.execute(_SLOTS_SQL[dialect], values).scalar_one())
    return SlotGrant(count=n, wait=max(wait, 0.0), interval=1.0 / rate)


# -- the daily quota -----------------------------------------------------------------------------

#: The Beijing day on PostgreSQL's clock, unless the caller names one.
_PG_DAY = "COALESCE(CAST(:day AS date), (clock_timestamp() AT TIME ZONE 'Asia/Shanghai')::date)"
# The row is locked first (FOR UPDATE), so concurrent reservations see each other's counts;
# the grant is computed from the locked count and returned with it.
_PG_QUOTA_SQL = text(
    f"WITH d AS (SELECT {_PG_DAY} AS day), "
    "old AS (SELECT q.day, q.used FROM account_quota AS q, d "
    "WHERE q.app_id = :app_id AND q.day = d.day FOR UPDATE OF q) "
    "UPDATE account_quota AS q SET used = q.used + LEAST(:n, GREATEST(:quota - old.used, 0)) "
    "FROM old WHERE q.app_id = :app_id AND q.day = old.day "
    "RETURNING q.day, LEAST(:n, GREATEST(:quota - old.used, 0)), q.used"
)
_PG_NEW_DAY_SQL = text(
    f"INSERT INTO account_quota (app_id, day, used) VALUES (:app_id, {_PG_DAY}, 0) "
    "ON CONFLICT DO NOTHING"
)
# SQLite: a whole chunk when it fits (one statement, the usual case); otherwise the rest,
# read and then taken only if the count did not move in between (compare-and-set).
_SQLITE_CHUNK_SQL = text(
    "UPDATE account_quota SET used = used + :n "
    "WHERE app_id = :app_id AND day = :day AND used + :n <= :quota RETURNING used"
)
_SQLITE_READ_SQL = text("SELECT used FROM account_quota WHERE app_id = :app_id AND day = :day")
_SQLITE_REST_SQL = text(
    "UPDATE account_quota SET used = :quota "
    "WHERE app_id = :app_id AND day = :day AND used = :old RETURNING used"
)
_SQLITE_NEW_DAY_SQL = text(
    "INSERT INTO account_quota (app_id, day, used) VALUES (:app_id, :day, 0) ON CONFLICT DO NOTHING"
)


def reserve_quota(
    conn: Connection, app_id: str, n: int, quota: int, *, day: date | None = None
) -> QuotaGrant:
    """Reserve up to `n` messages of the account's `quota` for Beijing day `day` (default:
    today, on the database's clock on PostgreSQL). Never more than the quota in all, however
    many processes reserve at once; a grant of 0 means the day's quota is spent."""
    if n < 1:
        raise ValueError("reserve at least one message")
    if conn.dialect.name == "postgresql":
        return _reserve_quota_postgresql(conn, app_id, n, quota, day)
    return _reserve_quota_sqlite(conn, app_id, n, quota, day or beijing_day())


def _reserve_quota_postgresql(
    conn: Connection, app_id: str, n: int, quota: int, day: date | None
) -> QuotaGrant:
    values = {"app_id": app_id, "n": n, "quota": quota, "day": day}
    while True:
        row = conn.execute(_PG_QUOTA_SQL, values).one_or_none()
        if row is not None:
            return QuotaGrant(granted=int(row[1]), day=row[0], used=int(row[2]), quota=quota)
        # The day's first reservation: its row, then the reservation (midnight may pass
        # in between: then the new day's row is made the next time round).
        conn.execute(_PG_NEW_DAY_SQL, values)


def _reserve_quota_sqlite(
    conn: Connection, app_id: str, n: int, quota: int, day: date
) -> QuotaGrant:
    values = {"app_id": app_id, "n": n, "quota": quota, "day": day.isoformat()}
    while True:
        used = conn.execute(_SQLITE_CHUNK_SQL, values).scalar_one_or_none()
        if used is not None:
            return QuotaGrant(granted=n, day=day, used=int(used), quota=quota)
        old = conn.execute(_SQLITE_READ_SQL, values).scalar_one_or_none()
        if old is None:
            conn.execute(_SQLITE_NEW_DAY_SQL, values)
            continue
        if old >= quota:
            return QuotaGrant(granted=0, day=day, used=int(old), quota=quota)
        if conn.execute(_SQLITE_REST_SQL, {**values, "old": old}).first() is not None:
            return QuotaGrant(granted=quota - int(old), day=day, used=quota, quota=quota)


def give_back_quota(conn: Connection, app_id: str, day: date, n: int) -> None:
    """Return `n` reserved but unsent messages to the account's count for `day`."""
    if n <= 0:
        return
    greatest = "GREATEST" if conn.dialect.name == "postgresql" else "MAX"
    conn.execute(
        text(
            f"UPDATE account_quota SET used = {greatest}(used - :n, 0) "
            "WHERE app_id = :app_id AND day = :day"
        ),
        {"app_id": app_id, "day": _day_value(conn, day), "n": n},
    )


def quota_used(conn: Connection, app_id: str, day: date) -> int:
    """The account's reserved count for `day` (0 before its first reservation)."""
    value = conn.execute(
        text("SELECT used FROM account_quota WHERE app_id = :app_id AND day = :day"),
        {"app_id": app_id, "day": _day_value(conn, day)},
    ).scalar_one_or_none()
    return int(value or 0)


def _day_value(conn: Connection, day: date) -> date | str:
    """A day as the dialect stores it (SQLite: ISO text, as SQLAlchemy's Date writes it)."""
    return day if conn.dialect.name == "postgresql" else day.isoformat()
