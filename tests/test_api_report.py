"""The push API's artifact text: today's messages by status, failures by errcode and the
refusals, on the Beijing day WeChat counts in (fast tier: no server)."""

from __future__ import annotations

from datetime import UTC, datetime

from api.report import beijing_midnight, markdown
from db.api_messages import ApiCounts


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
