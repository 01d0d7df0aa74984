"""The daily digest: day bounds and the stable campaign id, the `nothing_to_send` audience
convention on both databases, the example digest SQL at the day's edges, and end to end
(a real Prefect server, the simulator over HTTP, SQLite and PostgreSQL): each follower gets
their own day's content exactly once however often the day is run."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from db.audience import has_nothing_to_send, preview_audience, stream_audience
from db.campaigns import CAMPAIGN_ID_PATTERN
from db.digest import (
    DEFAULT_DIGEST_SQL,
    day_binds,
    day_bounds,
    digest_campaign_id,
    previous_day,
)
from db.models import interactions, recipients
from db.outcomes import SkipReason
from sending.message import CHINA_TZ
from tasks import database
from tasks.params import DEFAULT_DIGEST_DATA, CampaignParams, DigestParams
from tests.campaign_helpers import accepted_openids, ledger
from wechat.fields import validate_template_data
from wechat.simulator.defaults import DEMO_TEMPLATE_ID

APP = "wx-digest-app"
DAY = date(2026, 11, 25)


# -- the day and the campaign id -------------------------------------------------------------


def test_a_shanghai_day_starts_at_16_00_utc_the_day_before() -> None:
    start, end = day_bounds(DAY, "Asia/Shanghai")
    assert start == datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
    assert end == datetime(2026, 11, 25, 16, 0, tzinfo=UTC)
    assert day_binds(DAY, "Asia/Shanghai") == {
        "day_start": "2026-11-24 16:00:00.000000",
        "day_end": "2026-11-25 16:00:00.000000",
    }
    assert day_bounds(DAY, "UTC") == (
        datetime(2026, 11, 25, tzinfo=UTC),
        datetime(2026, 11, 26, tzinfo=UTC),
    )


def test_days_across_a_daylight_saving_change_are_23_or_25_hours() -> None:
    spring_start, spring_end = day_bounds(date(2026, 3, 8), "America/New_York")
    fall_start, fall_end = day_bounds(date(2026, 11, 1), "America/New_York")
    assert spring_start == datetime(2026, 3, 8, 5, 0, tzinfo=UTC)
    assert spring_end - spring_start == timedelta(hours=23)
    assert fall_end - fall_start == timedelta(hours=25)


def test_yesterday_is_counted_in_the_digest_time_zone() -> None:
    before_midnight = datetime(2026, 11, 25, 15, 59, 59, tzinfo=UTC)  # 23:59:59 in Shanghai
    assert previous_day("Asia/Shanghai", before_midnight) == date(2026, 11, 24)
    assert previous_day("Asia/Shanghai", before_midnight + timedelta(seconds=1)) == DAY
    assert previous_day("UTC", before_midnight + timedelta(seconds=1)) == date(2026, 11, 24)
    with pytest.raises(ValueError, match="aware"):
        previous_day("UTC", datetime(2026, 11, 25))


def test_the_campaign_id_is_stable_per_name_and_day() -> None:
    assert digest_campaign_id("daily digest", DAY) == "digest-daily-digest-2026-11-25"
    assert digest_campaign_id("Daily Digest", DAY) == digest_campaign_id("daily-digest", DAY)
    assert digest_campaign_id("daily digest", DAY + timedelta(days=1)) != digest_campaign_id(
        "daily digest", DAY
    )
    chinese = {digest_campaign_id(name, DAY) for name in ("每日摘要", "周报", "VIP 每日摘要")}
    assert len(chinese) == 3
    long_a, long_b = ("a very long digest name " * 4 + tail for tail in ("one", "two"))
    ids = [*chinese, digest_campaign_id(long_a, DAY), digest_campaign_id(long_b, DAY)]
    assert len(set(ids)) == len(ids)
    for campaign_id in ids:
        assert CAMPAIGN_ID_PATTERN.fullmatch(campaign_id), campaign_id
        assert campaign_id.endswith("-2026-11-25")


def test_an_empty_day_is_the_day_before_the_scheduled_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run scheduled for 09:00 on the 26th and retried after midnight still reports the
    25th: the day comes from the flow run's expected start, not the clock."""
    from types import SimpleNamespace

    from prefect.context import FlowRunContext

    from flows.digest import digest_day

    scheduled = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
    run = SimpleNamespace(flow_run=SimpleNamespace(expected_start_time=scheduled))
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: run))
    assert digest_day(DigestParams()) == DAY
    assert digest_day(DigestParams(day="2026-01-02")) == date(2026, 1, 2)
    assert digest_day(DigestParams(timezone="America/Los_Angeles")) == date(2026, 11, 24)


# -- the parameter models --------------------------------------------------------------------


def test_digest_params_make_the_campaign_of_the_day() -> None:
    params = DigestParams(app="shop", batch_size=50, max_attempts=3)
    assert params.template_id == DEMO_TEMPLATE_ID and params.data == DEFAULT_DIGEST_DATA
    assert params.digest_sql == DEFAULT_DIGEST_SQL
    campaign = params.campaign(DAY)
    assert isinstance(campaign, CampaignParams)
    assert campaign.campaign_id == "digest-daily-digest-2026-11-25"
    assert campaign.name == "daily digest 2026-11-25"
    assert campaign.audience_sql == DEFAULT_DIGEST_SQL
    assert campaign.audience_params == day_binds(DAY, "Asia/Shanghai")
    assert (campaign.app, campaign.batch_size, campaign.max_attempts) == ("shop", 50, 3)
    assert campaign.window_hours == 48 and campaign.data == DEFAULT_DIGEST_DATA
    with pytest.raises(ValidationError, match="unknown time zone"):
        DigestParams(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="campaign_id"):
        DigestParams.model_validate({"campaign_id": "mine"})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("app_id", "reserved"),
        ("wx_cutoff", "reserved"),
        ("WX_limit", "reserved"),
        ("1st", "not a bind name"),
        ("day-start", "not a bind name"),
        ("", "not a bind name"),
    ],
)
def test_audience_params_refuse_reserved_and_unbindable_names(name: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CampaignParams(name="c", template_id="T", data={"thing1": "x"}, audience_params={name: "x"})


def test_audience_params_keep_their_types() -> None:
    given = {"city": "上海", "min_level": 2, "ratio": 0.5, "vip": True}
    params = CampaignParams(name="c", template_id="T", data={"thing1": "x"}, audience_params=given)
    assert params.audience_params == given
    assert [type(v) for v in params.audience_params.values()] == [str, int, float, bool]


# -- nothing_to_send in the audience (both databases) ----------------------------------------

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def _add_recipients(engine: Engine, *rows: dict[str, Any]) -> None:
    defaults = {
        "app_id": APP,
        "subscribed": True,
        "nickname": "小王",
        "city": "上海",
        "attributes": {"last_order_amount": "¥12.50"},
        "created_at": NOW,
        "updated_at": NOW,
        "last_interaction_at": NOW - timedelta(hours=1),
    }
    with engine.begin() as connection:
        connection.execute(recipients.insert(), [defaults | row for row in rows])


def _reasons(engine: Engine, sql: str, window_hours: int = 48, **binds: Any) -> dict[str, Any]:
    """Stream as a campaign does: through the audience engine (the `db_url` fixture points
    WXPUSH_AUDIENCE_DATABASE_URL at the test's audience role), the ledger through `engine`."""
    batches = stream_audience(
        database.audience_engine(),
        sql,
        {"app_id": APP, **binds},
        ledger=engine,
        campaign_id="camp",
        window_hours=window_hours,
        now=NOW,
        batch_size=100,
    )
    return {row.openid: row for batch in batches for row in batch}


def test_nothing_to_send_comes_after_unsubscribed_and_before_the_window(
    db_engine: Engine,
) -> None:
    old = NOW - timedelta(hours=49)
    _add_recipients(
        db_engine,
        {"openid": "a-content"},
        {"openid": "b-nothing", "city": "none"},
        {"openid": "c-unsubscribed-nothing", "subscribed": False, "city": "none"},
        {"openid": "d-old-nothing", "last_interaction_at": old, "city": "none"},
        {"openid": "e-old-content", "last_interaction_at": old},
        {
            "openid": "f-unsubscribed-old-nothing",
            "subscribed": False,
            "city": "none",
            "last_interaction_at": old,
        },
        {"openid": "g-null", "city": None},
    )
    sql = (
        "SELECT openid, subscribed, last_interaction_at, city = 'none' AS nothing_to_send "
        "FROM recipients WHERE app_id = :app_id"
    )
    rows = _reasons(db_engine, sql)
    assert {openid: row.skip_reason for openid, row in rows.items()} == {
        "a-content": None,
        "b-nothing": SkipReason.NOTHING_TO_SEND,
        "c-unsubscribed-nothing": SkipReason.UNSUBSCRIBED,
        "d-old-nothing": SkipReason.NOTHING_TO_SEND,
        "e-old-content": SkipReason.OUTSIDE_WINDOW,
        "f-unsubscribed-old-nothing": SkipReason.UNSUBSCRIBED,
        "g-null": None,
    }
    assert rows["b-nothing"].values["nothing_to_send"] is True, "a bool on both databases"
    assert rows["a-content"].values["nothing_to_send"] is False
    assert rows["g-null"].values["nothing_to_send"] is None


@pytest.mark.parametrize(
    ("expression", "skipped"),
    [
        ("1 = 1", True),
        ("1 = 0", False),
        ("1", True),
        ("0", False),
        ("2", False),
        ("'yes'", True),
        ("'T'", True),
        ("'True'", True),
        ("'no'", False),
        ("'maybe'", False),
        ("NULL", False),
    ],
)
def test_nothing_to_send_truthiness_is_the_same_in_sql_and_in_python(
    db_engine: Engine, expression: str, skipped: bool
) -> None:
    _add_recipients(db_engine, {"openid": "o-1"})
    sql = f"SELECT openid, {expression} AS nothing_to_send FROM recipients WHERE app_id = :app_id"
    row = _reasons(db_engine, sql, window_hours=0)["o-1"]
    assert (row.skip_reason == SkipReason.NOTHING_TO_SEND) is skipped
    assert row.skip_reason in (None, SkipReason.NOTHING_TO_SEND)
    preview = preview_audience(database.audience_engine(), sql, {"app_id": APP})
    assert has_nothing_to_send(preview.rows[0]) is skipped, "the preflight judges it the same way"


def test_the_example_digest_sql_takes_exactly_the_day(db_engine: Engine) -> None:
    start, end = day_bounds(DAY, "Asia/Shanghai")
    tiny = timedelta(microseconds=1)
    _add_recipients(
        db_engine,
        {"openid": "busy", "last_interaction_at": end - tiny},
        {"openid": "edges-only", "last_interaction_at": end},
        {"openid": "quiet", "last_interaction_at": start - tiny},
        {"openid": "at-start", "last_interaction_at": start},
        {"openid": "other-app", "app_id": "another"},
    )
    events = [
        ("busy", "scan", start + timedelta(hours=3)),
        ("busy", "message", start + timedelta(hours=9)),
        ("busy", "click_menu", end - tiny),  # the newest event of the day
        ("busy", "subscribe", end),  # the next day
        ("edges-only", "message", start - tiny),
        ("edges-only", "message", end),
        ("quiet", "scan", start - tiny),
        ("at-start", "view_article", start),
        ("other-app", "message", start + timedelta(hours=1)),
    ]
    with db_engine.begin() as connection:
        connection.execute(
            interactions.insert(),
            [
                {
                    "app_id": "another" if openid == "other-app" else APP,
                    "openid": openid,
                    "kind": kind,
                    "occurred_at": at,
                }
                for openid, kind, at in events
            ],
        )
    rows = _reasons(
        db_engine, DEFAULT_DIGEST_SQL, window_hours=0, **day_binds(DAY, "Asia/Shanghai")
    )
    assert set(rows) == {"busy", "edges-only", "quiet", "at-start"}
    busy = rows["busy"].values
    assert (busy["event_count"], busy["last_event_kind"], busy["last_event_at"]) == (
        3,
        "click_menu",
        end - tiny,
    )
    assert busy["last_order_amount"] == "¥12.50" and busy["nothing_to_send"] is False
    assert rows["busy"].skip_reason is None
    assert rows["at-start"].values["event_count"] == 1
    assert rows["at-start"].values["last_event_at"] == start
    for quiet in ("edges-only", "quiet"):
        assert rows[quiet].skip_reason == SkipReason.NOTHING_TO_SEND
        assert rows[quiet].values["event_count"] == 0
        assert rows[quiet].values["last_event_kind"] is None


# -- end to end ------------------------------------------------------------------------------


def _yesterday_in_shanghai() -> date:
    return datetime.now(ZoneInfo("Asia/Shanghai")).date() - timedelta(days=1)


def _expected(engine: Engine, app_id: str, day: date) -> dict[str, tuple[str, Any]]:
    """Every recipient's outcome for `day`'s digest, worked out without the digest SQL:
    (status, reason / errcode / the template data they must receive). A recipient at the
    edge of the 48-hour window is left out (the run's clock, not this one, decides)."""
    start, end = day_bounds(day, "Asia/Shanghai")
    cutoff = datetime.now(UTC) - timedelta(hours=48)
    with engine.connect() as conn:
        events = conn.execute(
            select(interactions.c.openid, interactions.c.kind, interactions.c.occurred_at).where(
                interactions.c.app_id == app_id,
                interactions.c.occurred_at >= start,
                interactions.c.occurred_at < end,
            )
        ).all()
        people = conn.execute(select(recipients).where(recipients.c.app_id == app_id)).all()
    count: Counter[str] = Counter(openid for openid, _, _ in events)
    newest: dict[str, tuple[datetime, str]] = {}
    for openid, kind, at in events:
        if openid not in newest or (at, kind) > newest[openid]:
            newest[openid] = (at, kind)
    expected: dict[str, tuple[str, Any]] = {}
    for person in people:
        openid = person.openid
        if not person.subscribed:
            expected[openid] = ("skipped", "unsubscribed")
            continue
        if not count[openid]:
            expected[openid] = ("skipped", "nothing_to_send")
            continue
        last = person.last_interaction_at
        if last is not None and abs(last - cutoff) < timedelta(minutes=2):
            continue  # the flow's own clock decides this one; too close to call here
        if last is None or last < cutoff:
            expected[openid] = ("skipped", "outside_window")
            continue
        at, kind = newest[openid]
        data = {
            "thing1": f"当日互动 {count[openid]} 次",
            "character_string2": kind,
            "time3": at.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M"),
            "amount4": person.attributes["last_order_amount"],
        }
        if validate_template_data(data):
            expected[openid] = ("invalid", None)
        elif person.blocked == "blacklist":
            expected[openid] = ("failed", 43019)
        elif person.blocked == "refuse":
            expected[openid] = ("failed", 48002)
        else:
            expected[openid] = ("sent", data)
    return expected


def _digest(app: str, **overrides: Any) -> DigestParams:
    values: dict[str, Any] = {
        "app": app,
        "batch_size": 50,
        "concurrency": 8,
        "request_timeout_seconds": 2.0,
    }
    return DigestParams.model_validate(values | overrides)


def _run(params: DigestParams) -> tuple[Any, Any]:
    from flows.digest import daily_digest

    state = asyncio.run(daily_digest(params, return_state=True))
    assert state.is_completed(), state.message
    return state, state.result()


def _run_name(state: Any) -> str:
    from prefect.client.orchestration import get_client

    async def read() -> str:
        async with get_client() as client:
            return (await client.read_flow_run(state.state_details.flow_run_id)).name

    return asyncio.run(read())


def _received(sim: Any) -> dict[str, dict[str, str]]:
    return {
        message.openid: {
            key: item["value"] if isinstance(item, dict) else item
            for key, item in message.data.items()
        }
        for message in sim.admin.iter_messages()
    }


@pytest.mark.harness
def test_two_runs_of_a_day_message_each_follower_once_with_their_own_events(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    day = _yesterday_in_shanghai()
    expected = _expected(db_engine, sim.app_id, day)
    reasons = Counter(f"{s}:{d}" if s == "skipped" else s for s, d in expected.values())
    assert reasons["sent"] >= 10 and reasons["skipped:nothing_to_send"] >= 10, (
        f"the seeded day has both busy and quiet followers: {reasons}"
    )

    state, first = _run(_digest(audience.name))  # no day: yesterday in Asia/Shanghai
    assert first.campaign_id == f"digest-daily-digest-{day.isoformat()}"
    assert _run_name(state) == f"digest-daily digest-{day.isoformat()}"
    rows = ledger(db_engine, first.campaign_id)
    with db_engine.connect() as conn:
        everyone = set(conn.scalars(select(recipients.c.openid)))
    assert set(rows) == everyone, "every recipient has exactly one ledger row"
    for openid, (status, detail) in expected.items():
        assert rows[openid]["status"] == status, (openid, rows[openid], status)
        if status == "skipped":
            assert rows[openid]["reason"] == detail
        if status == "failed":
            assert rows[openid]["errcode"] == detail
    sent = {openid: data for openid, (status, data) in expected.items() if status == "sent"}
    received = _received(sim)
    assert {openid for openid in received if openid in expected} == set(sent)
    assert {o: received[o] for o in sent} == sent, "each follower got their own day's content"
    assert max(accepted_openids(sim).values()) == 1

    accepted = sim.admin.counters().accepted
    _, again = _run(_digest(audience.name, day=day.isoformat()))
    assert again.campaign_id == first.campaign_id
    assert again.sent_this_run == 0 and sim.admin.counters().accepted == accepted
    assert again.counts == first.counts
    assert max(accepted_openids(sim).values()) == 1, "nobody got the day twice"


@pytest.mark.harness
def test_another_day_is_another_campaign_and_the_cli_runs_it(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    from cli.main import app as cli

    day = _yesterday_in_shanghai()
    _, first = _run(_digest(audience.name, day=day.isoformat(), dry_run=True))
    assert first.campaign_id == f"digest-daily-digest-{day.isoformat()}"
    assert sim.admin.counters().accepted == 0

    earlier = day - timedelta(days=1)
    out = CliRunner().invoke(
        cli, ["digest", "run", "--app", audience.name, "--day", earlier.isoformat()]
    )
    assert out.exit_code == 0, out.output
    campaign_id = f"digest-daily-digest-{earlier.isoformat()}"
    assert campaign_id != first.campaign_id and campaign_id in out.output
    rows = ledger(db_engine, campaign_id)
    expected = _expected(db_engine, sim.app_id, earlier)
    assert {o: rows[o]["status"] for o in expected} == {o: s for o, (s, _) in expected.items()}
    assert ledger(db_engine, first.campaign_id) == {}, "the dry run recorded nothing"
