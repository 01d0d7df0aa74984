"""`wxpush db prune` (db/retention.py): which rows go (ended campaigns' ledgers, old callback
events, interactions but each follower's latest), in chunks, the dry run, a pruned campaign
that can no longer be resumed, and the command's one-line errors and summary."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import Engine, func, insert, inspect, select, text, update
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from cli.main import app as cli
from db.campaigns import LedgerPruned, create_or_resume, get_campaign, set_status
from db.engine import make_engine
from db.migrate import alembic_config, head_revision, upgrade
from db.models import callback_events, campaigns, deliveries, interactions
from db.outcomes import CampaignStatus
from db.retention import BadDuration, count_prunable, parse_duration, prune
from db.types import utcnow

DAY = timedelta(days=1)
runner = CliRunner()


def _campaign(
    engine: Engine, campaign_id: str, status: CampaignStatus, ended_ago: timedelta, rows: int
) -> None:
    """A campaign with `rows` sent ledger rows, moved to `status` `ended_ago` ago."""
    with engine.begin() as conn:
        create_or_resume(
            conn,
            campaign_id=campaign_id,
            name=f"retention {campaign_id}",
            app="default",
            kind="template",
            template_id="T1",
            parameters={},
            audience_sql="SELECT openid FROM recipients",
        )
        if rows:
            conn.execute(
                insert(deliveries),
                [
                    {"campaign_id": campaign_id, "openid": f"o-{i}", "status": "sent"}
                    for i in range(rows)
                ],
            )
        if status != CampaignStatus.RUNNING:
            set_status(conn, campaign_id, status)
        conn.execute(
            update(campaigns)
            .where(campaigns.c.id == campaign_id)
            .values(
                finished_at=None if status == CampaignStatus.RUNNING else utcnow() - ended_ago,
                updated_at=utcnow() - ended_ago,
            )
        )


def _ledger_rows(engine: Engine) -> dict[str, int]:
    query = select(deliveries.c.campaign_id, func.count()).group_by(deliveries.c.campaign_id)
    with engine.connect() as conn:
        return {campaign_id: n for campaign_id, n in conn.execute(query)}


def _events(engine: Engine, ages: list[timedelta]) -> None:
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(callback_events),
            [
                {
                    "app_id": "wxapp",
                    "dedupe_key": f"k-{i}",
                    "openid": "o-1",
                    "kind": "other",
                    "msg_type": "event",
                    "occurred_at": now - age,
                    "received_at": now - age,
                }
                for i, age in enumerate(ages)
            ],
        )


def _interactions(engine: Engine, rows: list[tuple[str, str, timedelta]]) -> None:
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(interactions),
            [
                {"app_id": app_id, "openid": openid, "kind": "message", "occurred_at": now - age}
                for app_id, openid, age in rows
            ],
        )


def _interaction_ages(engine: Engine) -> list[tuple[str, str, int]]:
    now = utcnow()
    with engine.connect() as conn:
        rows = conn.execute(
            select(interactions.c.app_id, interactions.c.openid, interactions.c.occurred_at)
        ).all()
    return sorted((a, o, round((now - at) / DAY)) for a, o, at in rows)


def test_only_ended_campaigns_past_the_age_lose_their_ledger(db_engine: Engine) -> None:
    old = 200 * DAY
    for status in (
        CampaignStatus.COMPLETED,
        CampaignStatus.COMPLETED_WITH_FAILURES,
        CampaignStatus.CANCELLED,
        CampaignStatus.FAILED,
    ):
        _campaign(db_engine, f"old-{status}", status, old, rows=3)
    _campaign(db_engine, "old-paused", CampaignStatus.PAUSED, old, rows=3)
    _campaign(db_engine, "old-running", CampaignStatus.RUNNING, old, rows=3)
    _campaign(db_engine, "recent-completed", CampaignStatus.COMPLETED, 10 * DAY, rows=3)

    result = prune(db_engine, 180 * DAY)

    assert _ledger_rows(db_engine) == {"old-paused": 3, "old-running": 3, "recent-completed": 3}
    assert result.rows["deliveries"] == 12
    assert sorted(result.campaigns) == sorted(
        f"old-{s}" for s in ("completed", "completed_with_failures", "cancelled", "failed")
    )
    with db_engine.connect() as conn:
        pruned = get_campaign(conn, "old-completed_with_failures")
        kept = get_campaign(conn, "old-paused")
        remaining = conn.execute(select(func.count()).select_from(campaigns)).scalar_one()
    assert remaining == 7  # campaign rows stay
    assert pruned is not None and pruned.ledger_pruned_at is not None
    assert pruned.sent_count == 3  # the snapshot was taken from the ledger before it went
    assert pruned.status == CampaignStatus.COMPLETED_WITH_FAILURES
    assert kept is not None and kept.ledger_pruned_at is None


def test_a_pruned_campaign_cannot_be_resumed_but_an_unpruned_one_can(db_engine: Engine) -> None:
    _campaign(db_engine, "gone", CampaignStatus.COMPLETED_WITH_FAILURES, 200 * DAY, rows=4)
    _campaign(db_engine, "kept", CampaignStatus.COMPLETED_WITH_FAILURES, 20 * DAY, rows=4)
    prune(db_engine, 180 * DAY)

    def resume(campaign_id: str) -> CampaignStatus:
        with db_engine.begin() as conn:
            return create_or_resume(
                conn,
                campaign_id=campaign_id,
                name="again",
                app="default",
                kind="template",
                template_id="T1",
                parameters={"retry_failed": True},
                audience_sql="SELECT openid FROM recipients",
            ).status

    # What `wxpush campaign retry-failed` / `resume` does first: without the ledger it would
    # message all four followers again.
    with pytest.raises(LedgerPruned, match=r"cannot be resumed.*db prune.*new campaign"):
        resume("gone")
    with db_engine.connect() as conn:
        still = get_campaign(conn, "gone")
    assert still is not None and still.status == CampaignStatus.COMPLETED_WITH_FAILURES
    assert still.run_count == 1
    assert resume("kept") == CampaignStatus.RUNNING
    # A campaign running again is never pruned, however old its first end.
    with db_engine.begin() as conn:
        conn.execute(update(campaigns).values(updated_at=utcnow() - 400 * DAY))
    prune(db_engine, 180 * DAY)
    assert _ledger_rows(db_engine) == {"kept": 4}


def test_callback_events_and_interactions_by_age_keeping_each_followers_latest(
    db_engine: Engine,
) -> None:
    _events(db_engine, [1 * DAY, 100 * DAY, 181 * DAY, 365 * DAY])
    _interactions(
        db_engine,
        [
            ("wxapp", "a", 300 * DAY),
            ("wxapp", "a", 200 * DAY),  # a's latest: kept although old
            ("wxapp", "b", 400 * DAY),
            ("wxapp", "b", 2 * DAY),  # b's latest
            ("wxapp", "b", 190 * DAY),
            ("wxapp", "b", 30 * DAY),
            ("other", "a", 250 * DAY),  # another app's follower of the same openid
        ],
    )
    result = prune(db_engine, 180 * DAY)

    with db_engine.connect() as conn:
        left = sorted(
            round((utcnow() - at) / DAY)
            for at in conn.execute(select(callback_events.c.received_at)).scalars()
        )
    assert left == [1, 100]
    assert _interaction_ages(db_engine) == [
        ("other", "a", 250),
        ("wxapp", "a", 200),
        ("wxapp", "b", 2),
        ("wxapp", "b", 30),
    ]
    assert result.rows == {"deliveries": 0, "callback_events": 2, "interactions": 3}


def test_large_prunes_go_in_chunks_of_their_own(db_engine: Engine) -> None:
    _campaign(db_engine, "big", CampaignStatus.COMPLETED, 200 * DAY, rows=12)
    _events(db_engine, [200 * DAY] * 7)
    seen: list[tuple[str, int]] = []

    result = prune(db_engine, 180 * DAY, chunk_size=5, progress=lambda t, n: seen.append((t, n)))

    assert seen == [
        ("deliveries", 5),
        ("deliveries", 5),
        ("deliveries", 2),
        ("callback_events", 5),
        ("callback_events", 2),
    ]
    assert result.rows == {"deliveries": 12, "callback_events": 7, "interactions": 0}
    assert _ledger_rows(db_engine) == {}


def test_a_dry_run_counts_what_a_prune_deletes_and_deletes_nothing(db_engine: Engine) -> None:
    _campaign(db_engine, "old", CampaignStatus.COMPLETED, 200 * DAY, rows=6)
    _campaign(db_engine, "new", CampaignStatus.COMPLETED, 2 * DAY, rows=2)
    _events(db_engine, [200 * DAY, 1 * DAY])
    _interactions(db_engine, [("wxapp", "a", 300 * DAY), ("wxapp", "a", 200 * DAY)])

    planned = prune(db_engine, 180 * DAY, dry_run=True)

    assert planned.dry_run and planned.campaigns == ["old"]
    assert planned.rows == {"deliveries": 6, "callback_events": 1, "interactions": 1}
    assert _ledger_rows(db_engine) == {"old": 6, "new": 2}
    with db_engine.connect() as conn:
        record = get_campaign(conn, "old")
        assert count_prunable(conn, utcnow() - 180 * DAY).rows == planned.rows
    assert record is not None and record.ledger_pruned_at is None
    assert "would delete 6 deliveries, 1 callback_events, 1 interactions" in planned.describe()
    done = prune(db_engine, 180 * DAY)
    assert done.rows == planned.rows


@pytest.mark.parametrize(("text", "days"), [("180d", 180), ("12h", 0.5), ("2w", 14), (" 7D ", 7)])
def test_durations(text: str, days: float) -> None:
    assert parse_duration(text) == days * DAY


@pytest.mark.parametrize("text", ["180", "d", "1.5d", "-3d", "0d", "3m", "180 days", ""])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(BadDuration, match=r"not a duration.*180d, 12h, 2w"):
        parse_duration(text)


def _run(db_url: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(cli, ["db", "prune", *args], env={"WXPUSH_DATABASE_URL": db_url})
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_the_command_refuses_bad_and_short_ages_in_one_line(db_engine: Engine, db_url: str) -> None:
    _campaign(db_engine, "recent", CampaignStatus.COMPLETED, 3 * DAY, rows=2)
    code, output = _run(db_url, "--older-than", "6months")
    assert code == 1
    assert output.strip().splitlines() == [
        "wxpush db prune: --older-than '6months' is not a duration; give a whole number and "
        "a unit: h (hours), d (days) or w (weeks), e.g. 180d, 12h, 2w"
    ]
    code, output = _run(db_url, "--older-than", "48h")
    assert code == 1 and len(output.strip().splitlines()) == 1
    assert "under 7 days; add --force" in output
    assert _ledger_rows(db_engine) == {"recent": 2}

    code, output = _run(db_url, "--older-than", "2d", "--force")
    assert code == 0, output
    assert _ledger_rows(db_engine) == {}


def test_the_command_prints_progress_and_a_summary(db_engine: Engine, db_url: str) -> None:
    _campaign(db_engine, "old", CampaignStatus.CANCELLED, 200 * DAY, rows=7)
    _events(db_engine, [200 * DAY])

    code, output = _run(db_url, "--older-than", "26w", "--dry-run")
    assert code == 0, output
    assert "would delete 7 deliveries, 1 callback_events, 0 interactions" in output
    assert _ledger_rows(db_engine) == {"old": 7}

    code, output = _run(db_url, "--older-than", "26w", "--chunk-size", "3")
    assert code == 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[:3] == [f"  deliveries: {n} deleted so far" for n in (3, 6, 7)]
    assert lines[-1].endswith(
        "deleted 7 deliveries, 1 callback_events, 0 interactions "
        "(1 ended campaigns' ledgers; their campaign rows are kept)."
    )
    assert _ledger_rows(db_engine) == {}


def test_migration_0005_round_trip_refuses_to_lose_the_mark(blank_db_url: str) -> None:
    """Down to 0004 the column goes in place (the ledger stays), but only while no campaign
    is marked: an older wxpush would resume a pruned campaign from an empty ledger."""
    upgrade(blank_db_url)
    engine = make_engine(blank_db_url, poolclass=NullPool)
    try:
        _campaign(engine, "old", CampaignStatus.COMPLETED, 200 * DAY, rows=2)
        _campaign(engine, "new", CampaignStatus.COMPLETED, 1 * DAY, rows=2)
        prune(engine, 180 * DAY)
        with pytest.raises(RuntimeError, match="delete those campaign rows"):
            command.downgrade(alembic_config(blank_db_url), "0004")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM campaigns WHERE ledger_pruned_at IS NOT NULL"))
        command.downgrade(alembic_config(blank_db_url), "0004")
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("campaigns")}
        assert "ledger_pruned_at" not in columns and "unknown_count" in columns
        assert _ledger_rows(engine) == {"new": 2}
        assert upgrade(blank_db_url).after == head_revision()
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", ["resume", "retry-failed"])
def test_the_cli_refuses_to_resume_a_pruned_campaign_in_one_line(
    db_engine: Engine, db_url: str, command: str
) -> None:
    _campaign(db_engine, "gone", CampaignStatus.COMPLETED_WITH_FAILURES, 200 * DAY, rows=2)
    prune(db_engine, 180 * DAY)
    result = runner.invoke(
        cli, ["campaign", command, "gone", "--here"], env={"WXPUSH_DATABASE_URL": db_url}
    )
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith(f"wxpush campaign {command}: campaign gone cannot be resumed")
    assert "start a new campaign instead" in lines[0]
