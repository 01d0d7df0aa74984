"""The frequency cap (issue 13, point 4): at most N messages per follower per H hours across
an account's campaigns, enforced per audience batch against the ledger.

- The question itself (`capped_openids`) on SQLite and PostgreSQL: what counts (sent and
  unknown, the window's edge, the account's other campaigns only), and that it reads the
  ledger through `(openid, last_attempt_at)`.
- The stream: capped rows come annotated `frequency_cap`, after the other skip reasons.
- The knobs: the account's fields, the campaign's override, the digest's choice, `setup`.
- End to end (the Prefect harness, the simulator over HTTP, both databases): two campaigns
  in a row with a cap of 1 per 24 h, the second skipping everyone the first reached;
  overrides; a resume after a pause; a digest that is not capped but counts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, event, insert, text

from db.audience import (
    DEFAULT_AUDIENCE_SQL,
    FrequencyCap,
    capped_openids,
    stream_audience,
)
from db.campaigns import create_or_resume
from db.models import deliveries, recipients
from db.outcomes import CampaignStatus, DeliveryStatus, SkipReason
from sending.plan import SKIP_WORDS
from tasks.blocks import WeChatApp
from tasks.params import CampaignParams, DigestParams
from tests.campaign_helpers import (
    DATA,
    accepted_openids,
    followers,
    ledger,
    params,
    run_campaign,
)

APP_ID = "wx-cap-app"
APP = "shop"
NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
CAP = FrequencyCap(messages=1, hours=24, app_id=APP_ID, app=APP)
INDEX = "ix_deliveries_openid_last_attempt_at"


# -- the ledger's answer (both databases) -------------------------------------------------------


def _campaign(
    engine: Engine, campaign_id: str, *, app: str = APP, app_id: str | None = APP_ID
) -> None:
    with engine.begin() as connection:
        create_or_resume(
            connection,
            campaign_id=campaign_id,
            name=campaign_id,
            app=app,
            app_id=app_id,
            kind="template",
            template_id="T1",
            parameters={},
            audience_sql=DEFAULT_AUDIENCE_SQL,
        )


def _sends(engine: Engine, campaign_id: str, *rows: tuple[str, str, datetime]) -> None:
    """Ledger rows (openid, status, when the message went out) of one campaign."""
    with engine.begin() as connection:
        connection.execute(
            insert(deliveries),
            [
                {
                    "campaign_id": campaign_id,
                    "openid": openid,
                    "status": status,
                    "attempts": 1,
                    "first_attempt_at": at,
                    "last_attempt_at": at,
                    "sent_at": at if status == DeliveryStatus.SENT else None,
                    "updated_at": at,
                }
                for openid, status, at in rows
            ],
        )


def _capped(engine: Engine, openids: list[str], cap: FrequencyCap = CAP, campaign: str = "new"):
    with engine.connect() as connection:
        return capped_openids(connection, cap, campaign, openids, now=NOW)


def test_sent_and_unknown_messages_within_the_window_count(db_engine: Engine) -> None:
    """`unknown` counts (it may have arrived); failures and skips do not; a message exactly
    24 h old is still inside the window, one a second older is not."""
    _campaign(db_engine, "earlier")
    _sends(
        db_engine,
        "earlier",
        ("o-sent", "sent", NOW - HOUR),
        ("o-unknown", "unknown", NOW - 2 * HOUR),
        ("o-failed", "failed", NOW - HOUR),
        ("o-skipped", "skipped", NOW - HOUR),
        ("o-pending", "pending", NOW - HOUR),
        ("o-invalid", "invalid", NOW - HOUR),
        ("o-edge", "sent", NOW - 24 * HOUR),
        ("o-old", "sent", NOW - 24 * HOUR - timedelta(seconds=1)),
    )
    everyone = ["o-sent", "o-unknown", "o-failed", "o-skipped", "o-pending", "o-invalid"]
    everyone += ["o-edge", "o-old", "o-never"]
    assert _capped(db_engine, everyone) == {"o-sent", "o-unknown", "o-edge"}
    wider = FrequencyCap(messages=1, hours=48, app_id=APP_ID, app=APP)
    assert _capped(db_engine, everyone, wider) == {"o-sent", "o-unknown", "o-edge", "o-old"}


def test_n_messages_are_needed_to_reach_a_cap_of_n(db_engine: Engine) -> None:
    _campaign(db_engine, "monday")
    _campaign(db_engine, "tuesday")
    _sends(db_engine, "monday", ("o-two", "sent", NOW - 3 * HOUR), ("o-one", "sent", NOW - HOUR))
    _sends(db_engine, "tuesday", ("o-two", "unknown", NOW - HOUR))
    two = FrequencyCap(messages=2, hours=24, app_id=APP_ID, app=APP)
    assert _capped(db_engine, ["o-one", "o-two"], two) == {"o-two"}
    assert _capped(db_engine, ["o-one", "o-two"]) == {"o-one", "o-two"}


def test_only_the_accounts_other_campaigns_count(db_engine: Engine) -> None:
    """The campaign's own sends never cap it (a resume); another account's never count; a
    campaign from before migration 0008 (no AppID stored) counts by its block name."""
    _campaign(db_engine, "mine")
    _campaign(db_engine, "other-account", app="brand", app_id="wx-other-app")
    _campaign(db_engine, "before-0008", app_id=None)
    _campaign(db_engine, "before-0008-other", app="brand", app_id=None)
    _campaign(db_engine, "renamed-block", app="shop-2")  # same AppID, another block name
    at = NOW - HOUR
    _sends(db_engine, "mine", ("o-1", "sent", at))
    _sends(db_engine, "other-account", ("o-2", "sent", at))
    _sends(db_engine, "before-0008", ("o-3", "sent", at))
    _sends(db_engine, "before-0008-other", ("o-4", "sent", at))
    _sends(db_engine, "renamed-block", ("o-5", "sent", at))
    openids = ["o-1", "o-2", "o-3", "o-4", "o-5"]
    assert _capped(db_engine, openids, campaign="mine") == {"o-3", "o-5"}
    assert _capped(db_engine, openids, campaign="new") == {"o-1", "o-3", "o-5"}


def test_more_openids_than_one_statement_takes(db_engine: Engine) -> None:
    _campaign(db_engine, "big")
    openids = [f"o-{i:04d}" for i in range(1_200)]
    _sends(db_engine, "big", *((o, "sent", NOW - HOUR) for o in openids[::7]))
    assert _capped(db_engine, openids) == set(openids[::7])


def test_the_question_reads_the_ledger_by_openid_and_time(db_engine: Engine) -> None:
    """The statement a batch runs is served by `(openid, last_attempt_at)`, both columns in
    the index condition, never by a scan of the ledger. SQLite picks it by itself. PostgreSQL
    picks it on a large ledger (bench/frequency_cap.py: 100,000 rows), but on this test's
    few thousand it rightly prefers reading them all; so there the plan is read with
    sequential scans off, which shows the index answers the question."""
    for n in range(3):
        _campaign(db_engine, f"c{n}")
        _sends(
            db_engine, f"c{n}", *((f"o-{i:04d}", "sent", NOW - n * 20 * HOUR) for i in range(1000))
        )
    postgresql = db_engine.dialect.name == "postgresql"
    plans: list[str] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        raw = conn.connection.driver_connection
        if postgresql:
            raw.execute("SET enable_seqscan = off")
            plans.extend(row[0] for row in raw.execute("EXPLAIN " + statement, parameters))
            raw.execute("RESET enable_seqscan")
        else:
            plans.extend(
                row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            )

    event.listen(db_engine, "after_cursor_execute", explain)
    try:
        capped = _capped(db_engine, [f"o-{i:04d}" for i in range(0, 1000, 5)])
    finally:
        event.remove(db_engine, "after_cursor_execute", explain)
    assert len(capped) == 200
    shown = "\n".join(plans)
    assert any(INDEX in line for line in plans), shown
    if postgresql:
        conditions = [line for line in plans if "Index Cond" in line]
        assert any("openid" in c and "last_attempt_at" in c for c in conditions), shown
    else:
        assert f"{INDEX} (openid=? AND last_attempt_at>?)" in shown, shown
    assert "SCAN deliveries" not in shown and "Seq Scan on deliveries" not in shown, shown


# -- the stream ---------------------------------------------------------------------------------


def test_the_stream_marks_capped_rows_after_the_other_reasons(
    db_engine: Engine, audience_engine: Engine
) -> None:
    recent, old = NOW - HOUR, NOW - 72 * HOUR
    base = {"app_id": APP_ID, "subscribed": True, "attributes": {}, "created_at": NOW}
    with db_engine.begin() as connection:
        connection.execute(
            recipients.insert(),
            [
                base | {"openid": "a-capped", "last_interaction_at": recent},
                base | {"openid": "b-unsub", "last_interaction_at": recent, "subscribed": False},
                base | {"openid": "c-outside", "last_interaction_at": old},
                base | {"openid": "d-free", "last_interaction_at": recent},
                base | {"openid": "e-own", "last_interaction_at": recent},
            ],
        )
    _campaign(db_engine, "earlier")
    _campaign(db_engine, "camp")
    _sends(
        db_engine,
        "earlier",
        *((o, "sent", NOW - HOUR) for o in ("a-capped", "b-unsub", "c-outside")),
    )
    _sends(db_engine, "camp", ("e-own", "pending", NOW - HOUR))  # this campaign's, paused

    def stream(cap: FrequencyCap | None) -> dict[str, SkipReason | None]:
        batches = stream_audience(
            audience_engine,
            DEFAULT_AUDIENCE_SQL,
            {"app_id": APP_ID},
            ledger=db_engine,
            campaign_id="camp",
            window_hours=48,
            now=NOW,
            batch_size=2,
            frequency_cap=cap,
        )
        return {row.openid: row.skip_reason for batch in batches for row in batch}

    assert stream(CAP) == {
        "a-capped": SkipReason.FREQUENCY_CAP,
        "b-unsub": SkipReason.UNSUBSCRIBED,
        "c-outside": SkipReason.OUTSIDE_WINDOW,
        "d-free": None,
        "e-own": None,
    }
    assert stream(None)["a-capped"] is None


# -- the knobs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "hours", "account", "account_hours", "expected"),
    [
        (None, None, None, 24, None),  # off by default
        (None, None, 1, 24, (1, 24)),  # the account's
        (None, 12, 1, 24, (1, 12)),  # the account's count, the campaign's window
        (0, None, 1, 24, None),  # transactional: no cap
        (3, None, 1, 24, (3, 24)),  # a different cap
        (2, 6, None, 24, (2, 6)),  # a cap where the account has none
    ],
)
def test_the_campaign_override_and_the_accounts_cap(
    override: int | None,
    hours: int | None,
    account: int | None,
    account_hours: int,
    expected: tuple[int, int] | None,
) -> None:
    campaign = params("shop", frequency_cap=override, frequency_cap_hours=hours)
    assert campaign.frequency_cap_with(account, account_hours) == expected


def test_digests_are_never_capped_and_the_form_says_what_empty_means() -> None:
    assert DigestParams().campaign(date(2026, 11, 25)).frequency_cap_with(1, 24) is None
    fields = CampaignParams.model_json_schema()["properties"]
    assert "account" in fields["frequency_cap"]["description"]
    assert "anyOf" not in fields["frequency_cap"], "one plain box in the form"
    with pytest.raises(ValidationError):
        params("shop", frequency_cap=-1)
    app = {"app_id": "wx0123456789abcdef", "app_secret": "s"}
    assert WeChatApp(**app).frequency_cap is None and WeChatApp(**app).frequency_cap_hours == 24
    with pytest.raises(ValidationError):
        WeChatApp(**app, frequency_cap=0)  # empty is "no cap"; 0 would read as "never send"
    block_fields = WeChatApp.model_json_schema()["properties"]
    assert "anyOf" not in block_fields["frequency_cap"]
    assert block_fields["frequency_cap"]["title"] == "Messages per follower (frequency cap)"
    assert SKIP_WORDS[SkipReason.FREQUENCY_CAP].startswith("at the frequency cap")


@pytest.mark.harness
def test_setup_sets_and_clears_the_accounts_cap(make_wechat_app: Any) -> None:
    from cli.setup import asetup_app

    app = asyncio.run(make_wechat_app(frequency_cap=2, frequency_cap_hours=12))

    async def block() -> WeChatApp:
        return await WeChatApp.aload(app.name)

    stored = asyncio.run(block())
    assert (stored.frequency_cap, stored.frequency_cap_hours) == (2, 12)
    report = asyncio.run(asetup_app(app.name))
    assert not report.changed
    assert (
        "    frequency cap: 2 messages per follower per 12 h, across the account's campaigns"
        in (report.lines())
    )
    report = asyncio.run(asetup_app(app.name, frequency_cap=0))
    assert report.changed_fields == ["frequency_cap"]
    assert "    frequency cap: off" in report.lines()
    assert asyncio.run(block()).frequency_cap is None


# -- end to end: the Prefect harness, the simulator, both databases -----------------------------


def _stats(engine: Engine, campaign_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM campaign_stats WHERE campaign_id = :c"), {"c": campaign_id}
        ).mappings()
        return dict(row.one())


def _done(result: Any) -> dict[str, int]:
    """A run's result's counts, without the zeros."""
    return {status: n for status, n in result.counts.items() if n}


def _statuses(engine: Engine, campaign_id: str) -> Counter[str]:
    return Counter(
        f"{row['status']}:{row['reason']}" if row["status"] == "skipped" else row["status"]
        for row in ledger(engine, campaign_id).values()
    )


@pytest.mark.harness
def test_the_second_campaign_skips_everyone_the_first_reached(
    ledger_env: str, db_engine: Engine, sim: Any, make_wechat_app: Any
) -> None:
    """The acceptance: a cap of 1 per 24 h on the account, two campaigns in a row. Then the
    campaign's override lifts the cap (0) or sets another (3)."""
    first_wave = followers(db_engine, sim, "of", 40)
    app = asyncio.run(make_wechat_app(frequency_cap=1))

    first = run_campaign(params(app.name, name="monday sale"))
    assert _done(first) == {"sent": 40}
    newcomers = followers(db_engine, sim, "on", 10)

    plan = run_campaign(params(app.name, name="tuesday sale", dry_run=True)).plan
    assert plan.skipped == {SkipReason.FREQUENCY_CAP: 40} and plan.would_send == 10
    assert "at the frequency cap" in plan.markdown()

    second = run_campaign(params(app.name, name="tuesday sale"))
    assert second.status == CampaignStatus.COMPLETED
    assert _statuses(db_engine, second.campaign_id) == {"skipped:frequency_cap": 40, "sent": 10}
    skipped = {
        o for o, row in ledger(db_engine, second.campaign_id).items() if row["status"] == "skipped"
    }
    assert skipped == set(first_wave), "exactly everyone the first campaign reached"
    seen = accepted_openids(sim)
    assert set(seen) == set(first_wave + newcomers) and max(seen.values()) == 1
    stats = _stats(db_engine, second.campaign_id)
    assert (stats["skipped"], stats["skipped_frequency_cap"], stats["eligible"], stats["sent"]) == (
        40,
        40,
        10,
        10,
    )
    assert _stats(db_engine, first.campaign_id)["skipped_frequency_cap"] == 0

    # A transactional message: the campaign lifts the cap, and everyone gets it.
    notice = run_campaign(params(app.name, name="order notice", frequency_cap=0))
    assert _done(notice) == {"sent": 50}
    # Another cap for this campaign: 3 per 24 h lets a third message through, not a fourth.
    third = run_campaign(params(app.name, name="flash sale", frequency_cap=3))
    assert _done(third) == {"sent": 50}
    fourth = run_campaign(params(app.name, name="last call", frequency_cap=3))
    assert _statuses(db_engine, fourth.campaign_id) == {"skipped:frequency_cap": 50}
    assert set(accepted_openids(sim).values()) == {3}


@pytest.mark.harness
def test_a_resumed_campaign_is_not_capped_by_its_own_sends(
    ledger_env: str, db_engine: Engine, sim: Any, make_wechat_app: Any
) -> None:
    """A campaign continued later (its audience grew, and three of its answers were lost:
    `unknown`, sent again on the operator's word) sends to the newcomers and the three, and
    caps nobody for what it sent itself."""
    first_wave = followers(db_engine, sim, "or", 20)
    app = asyncio.run(make_wechat_app(frequency_cap=1))
    campaign = params(app.name, name="continued", campaign_id="cap-resume")
    first = run_campaign(campaign)
    assert _done(first) == {"sent": 20}
    doubtful = first_wave[:3]
    with db_engine.begin() as conn:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.campaign_id == "cap-resume", deliveries.c.openid.in_(doubtful))
            .values(status="unknown", reason="no_answer", msgid=None)
        )
    newcomers = followers(db_engine, sim, "os", 10)

    again = run_campaign(
        params(app.name, name="continued", campaign_id="cap-resume", resend_unknown=True)
    )
    assert again.status == CampaignStatus.COMPLETED, again.reason
    assert again.sent_this_run == 13
    assert _statuses(db_engine, "cap-resume") == {"sent": 30}
    seen = accepted_openids(sim)
    # The three went out again with their client_msg_id, which WeChat (the simulator)
    # dedupes within 10 minutes: still one message each.
    assert set(seen) == set(first_wave + newcomers) and max(seen.values()) == 1
    # Another campaign of the account is capped by all of it.
    other = run_campaign(params(app.name, name="next"))
    assert _statuses(db_engine, other.campaign_id) == {"skipped:frequency_cap": 30}


DIGEST_SQL = """\
SELECT openid, nickname, last_interaction_at, CAST(:day_start AS TEXT) AS day_start
FROM recipients WHERE app_id = :app_id"""


@pytest.mark.harness
def test_a_digest_is_not_capped_but_counts(
    ledger_env: str, db_engine: Engine, sim: Any, make_wechat_app: Any
) -> None:
    """docs/digests.md: a digest someone subscribed to goes out whatever the cap, and the
    account's next marketing campaign counts it."""
    from flows.digest import daily_digest

    ids = followers(db_engine, sim, "od", 20)
    app = asyncio.run(make_wechat_app(frequency_cap=1))

    def digest(day: date) -> Any:
        values = {"app": app.name, "day": day, "digest_sql": DIGEST_SQL, "data": dict(DATA)}
        state = asyncio.run(daily_digest(DigestParams(**values), return_state=True))
        assert state.is_completed(), state.message
        return state.result()

    monday = digest(date(2026, 11, 23))
    assert _done(monday) == {"sent": 20}
    sale = run_campaign(params(app.name, name="sale"))
    assert _statuses(db_engine, sale.campaign_id) == {"skipped:frequency_cap": 20}
    tuesday = digest(date(2026, 11, 24))  # within 24 h of Monday's: still sent
    assert _done(tuesday) == {"sent": 20}
    seen = accepted_openids(sim)
    assert set(seen) == set(ids) and set(seen.values()) == {2}
