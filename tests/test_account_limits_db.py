"""db/account_limits.py on SQLite and PostgreSQL: the account's rate slots are spaced by
1/rate on its one row whoever reserves them, concurrent quota reservations never add up to
more than the quota, and unused quota goes back; and the flows' `SqlAccountLimits` over them
(tasks/account_limits.py), which names a database failure without quoting it."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from db.account_limits import (
    beijing_day,
    give_back_quota,
    quota_used,
    reserve_quota,
    reserve_slots,
)
from db.engine import make_engine
from db.models import AccountQuota, AccountRate
from tasks.account_limits import AccountLimitsUnavailable, SqlAccountLimits


def _app() -> str:
    return f"wx{uuid.uuid4().hex[:16]}"


def _tat(engine: Engine, app_id: str) -> float:
    with engine.connect() as conn:
        return float(
            conn.execute(select(AccountRate.tat).where(AccountRate.app_id == app_id)).scalar_one()
        )


def _race(threads: int, work: Callable[[int], None]) -> None:
    """Run `work(i)` in `threads` threads released together; re-raise the first failure."""
    errors: list[BaseException] = []
    go = threading.Barrier(threads)

    def run(i: int) -> None:
        try:
            go.wait(10)
            work(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    assert not errors, errors


def test_the_first_reservation_creates_the_row_and_goes_at_once(db_engine: Engine) -> None:
    app = _app()
    with db_engine.begin() as conn:
        grant = reserve_slots(conn, app, 10, 50.0)
    assert grant.count == 10
    assert grant.interval == pytest.approx(1 / 50)
    assert 0 <= grant.wait < 0.05, "an idle account sends at once"
    # The row now holds the end of the ten slots: about 0.2 s from now.
    assert _tat(db_engine, app) - time.time() == pytest.approx(0.2, abs=0.1)


def test_the_next_chunk_starts_where_the_last_one_ended(db_engine: Engine) -> None:
    app = _app()
    with db_engine.begin() as conn:
        reserve_slots(conn, app, 10, 50.0)
    first_end = _tat(db_engine, app)
    with db_engine.begin() as conn:
        second = reserve_slots(conn, app, 5, 50.0)
    assert _tat(db_engine, app) == pytest.approx(first_end + 5 / 50, abs=1e-6)
    # The second chunk waits for the first one's ten slots (0.2 s, less the time between).
    assert 0.1 < second.wait <= 0.2 + 1e-6
    with db_engine.begin() as conn:
        other = reserve_slots(conn, _app(), 10, 50.0)
    assert other.wait < 0.05, "another account has a schedule of its own"


def test_concurrent_reservations_get_one_slot_each_spaced_by_the_rate(db_engine: Engine) -> None:
    """Four threads (four connections) reserve 40 single slots of one account at 1/s at
    once: the slots are 0, 1, 2, ... 39 s away, none shared, none skipped."""
    app = _app()
    waits: list[float] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        for _ in range(10):
            with db_engine.begin() as conn:
                grant = reserve_slots(conn, app, 1, 1.0)
            with lock:
                waits.append(grant.wait)

    _race(4, work)
    waits.sort()
    assert len(waits) == 40
    for k, wait in enumerate(waits):
        # Slot k is k seconds after the first; the reservations themselves took < 2 s.
        assert k - 2.0 < wait <= k + 1e-6, (k, wait)
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert min(gaps) > 0.5, "no two reservations got the same slot"


def test_concurrent_quota_reservations_never_exceed_the_quota(db_engine: Engine) -> None:
    app, quota, chunk = _app(), 500, 7
    day = beijing_day()
    grants: list[int] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        while True:
            with db_engine.begin() as conn:
                got = reserve_quota(conn, app, chunk, quota, day=day).granted
            with lock:
                grants.append(got)
            if got == 0:
                return

    _race(4, work)
    assert sum(grants) == quota, "exactly the quota was granted, no more, no less"
    assert max(grants) == chunk
    partial = [g for g in grants if 0 < g < chunk]
    assert partial == [quota % chunk], "only the reservation at the end is cut short"
    assert grants.count(0) == 4, "each thread learnt the quota is spent"
    with db_engine.connect() as conn:
        assert quota_used(conn, app, day) == quota


def test_a_spent_quota_grants_nothing_and_reports_the_count(db_engine: Engine) -> None:
    app = _app()
    with db_engine.begin() as conn:
        first = reserve_quota(conn, app, 8, 10)
        second = reserve_quota(conn, app, 8, 10)
        third = reserve_quota(conn, app, 8, 10)
    assert (first.granted, first.used) == (8, 8)
    assert (second.granted, second.used) == (2, 10)
    assert (third.granted, third.used, third.quota) == (0, 10, 10)
    # A quota lowered below what was reserved grants nothing and changes nothing.
    with db_engine.begin() as conn:
        lowered = reserve_quota(conn, app, 8, 5)
    assert (lowered.granted, lowered.used) == (0, 10)


def test_unused_quota_goes_back(db_engine: Engine) -> None:
    app = _app()
    with db_engine.begin() as conn:
        grant = reserve_quota(conn, app, 10, 100)
        give_back_quota(conn, app, grant.day, 4)
    with db_engine.connect() as conn:
        assert quota_used(conn, app, grant.day) == 6
    with db_engine.begin() as conn:
        give_back_quota(conn, app, grant.day, 50)  # never below zero
        again = reserve_quota(conn, app, 100, 100)
    assert again.granted == 100, "what came back can be reserved again"


def test_each_beijing_day_has_its_own_count(db_engine: Engine) -> None:
    app = _app()
    before = beijing_day()
    with db_engine.begin() as conn:
        today = reserve_quota(conn, app, 5, 5)
    after = beijing_day()
    # PostgreSQL reads the day off its own clock, SQLite off this machine's: both Beijing's.
    assert today.day in (before, after)
    yesterday = today.day - timedelta(days=1)
    with db_engine.begin() as conn:
        assert reserve_quota(conn, app, 5, 5).granted == 0
        assert reserve_quota(conn, app, 5, 5, day=yesterday).granted == 5
    with db_engine.connect() as conn:
        rows = conn.execute(
            select(AccountQuota.day, AccountQuota.used).where(AccountQuota.app_id == app)
        ).all()
    assert sorted(rows) == [(yesterday, 5), (today.day, 5)]


# -- the flows' AccountLimits over these functions ----------------------------------------------


async def test_the_flows_account_limits_reserve_in_the_database(db_engine: Engine) -> None:
    app = _app()
    limits = SqlAccountLimits(app, rate_per_second=50.0, daily_quota=12, database=lambda: db_engine)
    slots = await limits.take_slots(5)
    assert (slots.count, slots.interval) == (5, pytest.approx(0.02))
    first = await limits.take_quota(10)
    second = await limits.take_quota(10)
    assert (first.granted, second.granted, second.used, second.quota) == (10, 2, 12, 12)
    await limits.give_back(second.day, 3)
    with db_engine.connect() as conn:
        assert quota_used(conn, app, second.day) == 9


async def test_an_unmigrated_database_says_to_upgrade_without_quoting_it(
    blank_db_url: str,
) -> None:
    engine = make_engine(blank_db_url)
    try:
        limits = SqlAccountLimits(
            _app(), rate_per_second=None, daily_quota=10, database=lambda: engine
        )
        with pytest.raises(AccountLimitsUnavailable) as caught:
            await limits.take_quota(5)
    finally:
        engine.dispose()
    assert str(caught.value) == "the database: a table is missing; run `wxpush db upgrade`"
