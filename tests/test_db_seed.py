"""`wxpush seed`: realistic sample data, idempotent per (app, seed), mirrored in the simulator."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from cli import seed as seed_cli
from db.models import interactions, recipients
from db.seed import THING_MAX_CHARS, app_prefix, generate_recipients, seed_recipients
from wechat.simulator.process import SimulatorProcess

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
OPENID = re.compile(r"o[A-Za-z0-9_-]{27}")


def test_generated_recipients_have_the_advertised_mix() -> None:
    people = list(generate_recipients(app_id="wxapp", count=20_000, seed=42, now=NOW))
    n = len(people)
    share = {
        "unsubscribed": sum(not p.subscribed for p in people) / n,
        "blocked": sum(p.blocked is not None for p in people) / n,
        "outside": sum(
            p.last_interaction_at is None or p.last_interaction_at < NOW - timedelta(hours=48)
            for p in people
        )
        / n,
        "long": sum(len(p.nickname) > THING_MAX_CHARS for p in people) / n,
    }
    assert 0.02 < share["unsubscribed"] < 0.04
    assert 0.005 < share["blocked"] < 0.015
    assert 0.20 < share["outside"] < 0.40
    assert 0.04 < share["long"] < 0.06
    assert {p.blocked for p in people} == {None, "blacklist", "refuse"}
    ages = [NOW - p.last_interaction_at for p in people if p.last_interaction_at]
    assert min(ages) >= timedelta(0) and max(ages) <= timedelta(days=10)
    assert max(ages) > timedelta(days=7)  # spread over the whole range
    assert all(OPENID.fullmatch(p.openid) for p in people)
    assert {p.openid[1:6] for p in people} == {app_prefix("wxapp")}
    assert len({p.openid for p in people}) == n
    assert any(re.search(r"[\u4e00-\u9fff]", p.nickname) for p in people)
    assert any(re.fullmatch(r"[A-Za-z _]+", p.nickname) for p in people)
    for p in people[:200]:
        assert set(p.attributes) >= {"vip_level", "last_order_id", "last_order_amount"}
        if p.interactions:
            assert max(at for _, at in p.interactions) == p.last_interaction_at
    again = list(generate_recipients(app_id="wxapp", count=100, seed=42, now=NOW))
    assert [p.openid for p in again] == [p.openid for p in people[:100]]


def _counts(engine: Engine, app_id: str = "wxapp") -> tuple[int, int]:
    with engine.connect() as connection:
        people = connection.execute(
            select(func.count()).select_from(recipients).where(recipients.c.app_id == app_id)
        ).scalar_one()
        events = connection.execute(
            select(func.count()).select_from(interactions).where(interactions.c.app_id == app_id)
        ).scalar_one()
    return people, events


def test_seeding_writes_consistent_rows_and_is_idempotent(db_engine: Engine) -> None:
    with db_engine.begin() as connection:
        first = seed_recipients(connection, app_id="wxapp", count=1500, now=NOW)
    people, events = _counts(db_engine)
    assert (first.created, first.updated, people) == (1500, 0, 1500)
    assert events == first.interactions and 1500 < events < 1500 * 4
    with db_engine.connect() as connection:
        latest = (
            select(interactions.c.openid, func.max(interactions.c.occurred_at).label("at"))
            .group_by(interactions.c.openid)
            .subquery()
        )
        mismatched = connection.execute(
            select(func.count())
            .select_from(recipients.join(latest, latest.c.openid == recipients.c.openid))
            .where(recipients.c.last_interaction_at != latest.c.at)
        ).scalar_one()
        stored = connection.execute(
            select(recipients.c.attributes, recipients.c.last_interaction_at).limit(1)
        ).one()
    assert mismatched == 0
    assert isinstance(stored.attributes, dict) and stored.attributes["last_order_amount"][0] == "¥"

    with db_engine.begin() as connection:
        second = seed_recipients(connection, app_id="wxapp", count=1500, now=NOW)
    assert (second.created, second.updated) == (0, 1500)
    assert _counts(db_engine) == (1500, events)  # nothing doubled

    with db_engine.begin() as connection:
        grown = seed_recipients(connection, app_id="wxapp", count=1800, now=NOW)
    assert (grown.created, _counts(db_engine)[0]) == (300, 1800)

    with db_engine.begin() as connection:
        other = seed_recipients(connection, app_id="wxapp", count=100, seed=7, replace=True)
    assert (other.replaced, other.created, _counts(db_engine)[0]) == (1800, 100, 100)


def _planner_rows(engine: Engine, table: str) -> int | None:
    """How many rows the planner's statistics give `table` (None: it has none)."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            sql = "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)"
            rows = connection.exec_driver_sql(sql, (table,)).scalar_one()
            return None if rows < 0 else int(rows)
        if not connection.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).first():
            return None
        stats = connection.exec_driver_sql(
            "SELECT stat FROM sqlite_stat1 WHERE tbl = ?", (table,)
        ).scalars()
        return max((int(stat.split()[0]) for stat in stats), default=None)


def test_seeding_leaves_statistics_of_what_it_loaded(db_engine: Engine) -> None:
    """The planner knows the new rows at once (issue 15: 113k seeded recipients were
    planned as 161 until autovacuum came by)."""
    with db_engine.begin() as connection:
        result = seed_recipients(connection, app_id="wxapp", count=700, now=NOW)
    assert _planner_rows(db_engine, "recipients") == 700
    assert _planner_rows(db_engine, "interactions") == result.interactions


def test_cli_seed_registers_the_same_followers_in_the_simulator(
    db_url: str, sim: SimulatorProcess
) -> None:
    app = typer.Typer()
    seed_cli.register(app)
    done = CliRunner().invoke(
        app,
        [
            "--recipients", "400",
            "--app-id", sim.app_id,
            "--simulator-url", sim.base_url,
            "--database-url", db_url,
        ],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "400 new" in done.output and "400 followers added" in done.output
    assert sim.admin.follower_count() == 401  # + the demo follower
    people = list(generate_recipients(app_id=sim.app_id, count=400, now=sim.admin.clock().now_iso))
    for person in [p for p in people if p.blocked or not p.subscribed][:5] + people[:3]:
        follower = sim.admin.follower(person.openid)
        assert follower is not None
        assert (follower.subscribed, follower.blocked) == (person.subscribed, person.blocked)
        if person.last_interaction_at is None:
            assert follower.last_interaction_at is None

    wrong = CliRunner().invoke(
        app,
        [
            "-n",
            "5",
            "--app-id",
            "wxother",
            "--simulator-url",
            sim.base_url,
            "--database-url",
            db_url,
        ],
    )
    assert wrong.exit_code != 0 and f"simulates app {sim.app_id}" in wrong.output
    assert sim.admin.follower_count() == 401
