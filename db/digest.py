"""The daily digest's SQL and what it binds: one day of each follower's events, as an audience.

A digest is a campaign whose audience SQL brings per-recipient content and marks the rows with
nothing to report (`nothing_to_send`, see db/audience.py); this module holds the example query
and the pure rules around it — which day, its bounds in UTC, and the stable campaign id that
makes a re-run of the same day continue the same ledger instead of sending again.

Binds: `:app_id` (the app's AppID), `:day_start` and `:day_end` (the day's [start, end) in UTC,
as `YYYY-MM-DD HH:MM:SS.ffffff` text: wxpush's SQLite timestamps are that exact text, so the
comparison is right as text; PostgreSQL casts the untyped text to `timestamptz` in the session's
UTC time zone).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from db.campaigns import CAMPAIGN_ID_PATTERN
from db.types import sqlite_text

DAY_START = "day_start"
DAY_END = "day_end"

#: The example digest over the sample data: each follower's events (`interactions`) of the
#: day. Content columns: `event_count`, `last_event_kind`, `last_event_at` (the newest event of
#: the day) and `last_order_amount` (from `recipients.attributes`; `->>` needs SQLite ≥ 3.38).
#: A follower without events that day comes back with `nothing_to_send` true, so the ledger
#: records them as skipped. Same text on SQLite and PostgreSQL.
DEFAULT_DIGEST_SQL = """\
WITH day_events AS (
  SELECT openid, kind, occurred_at,
         count(*) OVER (PARTITION BY openid) AS event_count,
         row_number() OVER (PARTITION BY openid ORDER BY occurred_at DESC, kind) AS newest
  FROM interactions
  WHERE app_id = :app_id AND occurred_at >= :day_start AND occurred_at < :day_end
)
SELECT r.openid,
       r.nickname,
       r.subscribed,
       r.last_interaction_at,
       coalesce(e.event_count, 0) AS event_count,
       e.kind AS last_event_kind,
       e.occurred_at AS last_event_at,
       r.attributes ->> 'last_order_amount' AS last_order_amount,
       e.openid IS NULL AS nothing_to_send
FROM recipients AS r
LEFT JOIN day_events AS e ON e.openid = r.openid AND e.newest = 1
WHERE r.app_id = :app_id"""

_SLUG_MAX = 36  # "digest-" + slug + "-" + 8 hex + "-" + YYYY-MM-DD stays within 64 characters
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def zone(timezone: str) -> ZoneInfo:
    """The IANA time zone, or ValueError naming it (an operator typed it in a form)."""
    try:
        return ZoneInfo(timezone)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(
            f"unknown time zone {timezone!r}; use an IANA name such as Asia/Shanghai or UTC"
        ) from None


def day_bounds(day: date, timezone: str) -> tuple[datetime, datetime]:
    """`day`'s [start, end) in `timezone`, as aware UTC datetimes (23 or 25 hours apart across
    a daylight-saving change): the events a digest of that day covers."""
    tz = zone(timezone)
    start = datetime.combine(day, time(), tz)
    end = datetime.combine(day + timedelta(days=1), time(), tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def day_binds(day: date, timezone: str) -> dict[str, str]:
    """`:day_start` / `:day_end` for the digest SQL, in the canonical text both databases
    compare correctly (see the module docstring)."""
    start, end = day_bounds(day, timezone)
    return {DAY_START: sqlite_text(start), DAY_END: sqlite_text(end)}


def previous_day(timezone: str, now: datetime) -> date:
    """The day before `now`'s date in `timezone` (what an empty digest day means)."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(zone(timezone)).date() - timedelta(days=1)


def digest_campaign_id(name: str, day: date) -> str:
    """`digest-<slug of name>-<YYYY-MM-DD>`: the same for every run of one digest and day.

    The slug is the name's ASCII letters and digits in lower case, other runs of characters
    becoming `-` ("Daily Digest" and "daily-digest" are the same digest). When that loses
    something (non-ASCII letters, or a slug longer than 36 characters) 8 hex digits of the
    name's SHA-256 follow the slug, so "每日摘要" and "周报" get different ids.
    """
    slug = _NOT_SLUG.sub("-", name.lower()).strip("-")
    if not slug or len(slug) > _SLUG_MAX or not name.isascii():
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        slug = f"{slug[:_SLUG_MAX].rstrip('-')}-{digest}".lstrip("-")
    campaign_id = f"digest-{slug}-{day.isoformat()}"
    assert CAMPAIGN_ID_PATTERN.fullmatch(campaign_id), campaign_id
    return campaign_id
