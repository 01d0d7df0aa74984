"""The push API's counts as a Prefect artifact, so operators see the API's day in the UI
(Artifacts ▸ `wxpush-push-api`) beside the campaigns' reports, without reading /health.

The day's messages come from the database (every API process's, by Beijing day); refusals
are never stored, so they are this process's since it started. A new version of the
artifact is published at most every REPORT_EVERY_SECONDS, and only when a figure changed.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from datetime import time as clock

from sqlalchemy import Engine

from db import api_messages
from db.account_limits import BEIJING, beijing_day
from db.api_messages import ApiCounts

__all__ = [
    "ARTIFACT_KEY",
    "REPORT_EVERY_SECONDS",
    "DayReport",
    "beijing_midnight",
    "markdown",
    "publish",
]

ARTIFACT_KEY = "wxpush-push-api"
REPORT_EVERY_SECONDS = 60.0
log = logging.getLogger("wxpush.api")


def beijing_midnight(now: datetime | None = None) -> datetime:
    """The start of today in Beijing, in UTC: WeChat's daily quota turns over then."""
    day = beijing_day(None if now is None else now.timestamp())
    return datetime.combine(day, clock.min, BEIJING).astimezone(UTC)


def _rows(counts: Mapping[str, int]) -> list[str]:
    return [f"| {name} | {n:,} |" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def markdown(
    today: ApiCounts, refused: Mapping[str, int], since: datetime, now: datetime | None = None
) -> str:
    """The artifact's text: today's messages by status, failures by errcode, refusals."""
    now = now or datetime.now(UTC)
    day = beijing_day(now.timestamp()).isoformat()
    lines = [
        f"# Push API, {day} (Beijing day)",
        "",
        f"Updated {now.strftime('%Y-%m-%d %H:%M:%S UTC')}. Messages: every API process, from "
        "`api_messages`; refusals: this process, since "
        f"{since.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "| messages | count |",
        "|---|---|",
        f"| accepted | {today.accepted:,} |",
        *_rows(today.by_status),
    ]
    if today.failed_by_errcode:
        lines += ["", "| failed, by errcode | count |", "|---|---|"]
        lines += _rows(today.failed_by_errcode)
    lines += ["", "| refused requests, by reason | count |", "|---|---|"]
    lines += _rows(refused) if refused else ["| (none) | 0 |"]
    return "\n".join(lines) + "\n"


async def publish(text: str) -> bool:
    """A new version of the artifact; False (logged, never raised) when Prefect is not
    reachable: the API goes on sending, and /health has the same counts."""
    try:
        from prefect.artifacts import acreate_markdown_artifact

        with warnings.catch_warnings():
            # Prefect 3.9 warns that an artifact made outside a flow or task run is
            # deprecated; it is stored and shown all the same (docs/api.md, "Watching it").
            warnings.simplefilter("ignore", FutureWarning)
            await acreate_markdown_artifact(
                markdown=text,
                key=ARTIFACT_KEY,
                description="What the push API (wxpush api) accepted, sent, failed and "
                "refused today",
            )
    except Exception as exc:
        log.warning("Publishing the push API's counts to Prefect failed (%s)", type(exc).__name__)
        return False
    return True


class DayReport:
    """Publishes the artifact every `every` seconds while the API runs, when a figure has
    changed since the last version (the "Updated" line alone is no change)."""

    def __init__(
        self,
        engine: Engine,
        refused: Mapping[str, int],
        since: datetime,
        *,
        every: float = REPORT_EVERY_SECONDS,
        send: Callable[[str], Awaitable[bool]] = publish,
    ) -> None:
        self.engine = engine
        self.refused = refused  # the service's live counter: read at each turn
        self.since = since
        self.every = every
        self.send = send
        self.published: str | None = None  # the figures of the last version published

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.once()

    async def once(self, now: datetime | None = None) -> bool:
        """Publish if a figure changed; True when a version was published."""
        now = now or datetime.now(UTC)
        try:
            today = await asyncio.to_thread(self._counts, beijing_midnight(now))
        except Exception as exc:  # the database is down: /health says so; try next turn
            log.warning("Counting the push API's messages failed (%s)", type(exc).__name__)
            return False
        text = markdown(today, dict(self.refused), self.since, now)
        figures = text.split("\n", 3)[3]  # all but the title and the "Updated" line
        if figures == self.published:
            return False
        if await self.send(text):
            self.published = figures
            return True
        return False

    def _counts(self, since: datetime) -> ApiCounts:
        with self.engine.connect() as connection:
            return api_messages.counts(connection, since)
