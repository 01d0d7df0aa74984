"""The push API's artifact: its text (today's messages by status, failures by errcode, the
refusals, on the Beijing day WeChat counts in), `DayReport` counting a real database and
publishing only when a figure changed, and the artifact as Prefect stores it."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from api.report import ARTIFACT_KEY, DayReport, beijing_midnight, markdown, publish
from db.api_messages import (
    ApiCounts,
    NewMessage,
    Request,
    Result,
    accept,
    new_message_id,
    record,
)
from tests.fixtures.database import sqlite_only

db_backend = sqlite_only()  # the counting query is db.api_messages.counts, tested on both


def test_the_day_starts_at_beijing_midnight() -> None:
    # 17:00 UTC is 01:00 the next day in Beijing; 15:00 UTC is still 23:00 the same day.
    assert beijing_midnight(datetime(2026, 11, 28, 17, 0, tzinfo=UTC)) == datetime(
        2026, 11, 28, 16, 0, tzinfo=UTC
    )
    assert beijing_midnight(datetime(2026, 11, 28, 15, 0, tzinfo=UTC)) == datetime(
        2026, 11, 27, 16, 0, tzinfo=UTC
    )


def test_the_artifact_says_what_was_accepted_sent_failed_and_refused() -> None:
    now = datetime(2026, 11, 28, 17, 30, tzinfo=UTC)
    text = markdown(
        ApiCounts(12, {"sent": 9, "failed": 2, "queued": 1}, {"40037": 2}),
        {"bad-signature": 3, "replayed-nonce": 1},
        since=datetime(2026, 11, 28, 9, 0, tzinfo=UTC),
        now=now,
    )
    assert text.startswith("# Push API, 2026-11-29 (Beijing day)")
    for row in (
        "| accepted | 12 |",
        "| sent | 9 |",
        "| failed | 2 |",
        "| queued | 1 |",
        "| 40037 | 2 |",
        "| bad-signature | 3 |",
        "| replayed-nonce | 1 |",
    ):
        assert row in text, row
    assert text.index("| sent | 9 |") < text.index("| failed | 2 |"), "largest first"


def test_a_quiet_day_says_so_instead_of_an_empty_table() -> None:
    text = markdown(ApiCounts(), {}, since=datetime(2026, 11, 28, tzinfo=UTC))
    assert "| accepted | 0 |" in text
    assert "failed, by errcode" not in text
    assert "| (none) | 0 |" in text


def _message(openid: str, at: datetime) -> NewMessage:
    return NewMessage(
        id=new_message_id(),
        caller="orders",
        key_id="wxk" + "0" * 20,
        idempotency_key=None,
        request_hash="h" * 64,
        app="shop",
        kind="template",
        openid=openid,
        template_id="TPL-1",
        payload={"data": {"thing1": "shipped"}},
        client_msg_id=None,
        created_at=at,
    )


def test_the_day_report_counts_today_and_publishes_only_changes(db_engine: Engine) -> None:
    now = datetime.now(UTC)
    yesterday = beijing_midnight(now) - timedelta(minutes=1)
    old, sent, failed = _message("o-0", yesterday), _message("o-1", now), _message("o-2", now)
    with db_engine.begin() as conn:
        accept(conn, [Request(None, [old, sent, failed])])
        record(
            conn,
            [
                Result(sent.id, "sent", None, None, None, 1, 123, now, now, now),
                Result(failed.id, "failed", 40037, "invalid template_id", "x", 1, None, now, now),
            ],
        )
    texts: list[str] = []

    async def send(text: str) -> bool:
        texts.append(text)
        return True

    refused: Counter[str] = Counter({"bad-signature": 2})
    report = DayReport(db_engine, refused, since=now, send=send)
    assert asyncio.run(report.once(now)) is True
    assert "| accepted | 2 |" in texts[0], "yesterday's message is not today's"
    assert "| 40037 | 1 |" in texts[0] and "| bad-signature | 2 |" in texts[0]
    later = now + timedelta(seconds=61)
    assert asyncio.run(report.once(later)) is False, "nothing changed: no new version"
    refused["replayed-nonce"] += 1
    assert asyncio.run(report.once(later)) is True, "a new refusal is a change"
    assert "| replayed-nonce | 1 |" in texts[1]


@pytest.mark.harness
def test_publish_stores_the_artifact_under_its_key(prefect_harness: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    text = markdown(ApiCounts(3, {"sent": 3}, {}), {}, since=datetime.now(UTC))

    async def go() -> list[Any]:
        assert await publish(text) is True
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY]))
            )

    artifacts = asyncio.run(go())
    assert artifacts and artifacts[-1].data == text
