"""Column types that behave the same on SQLite and PostgreSQL.

SQLite has no timestamp type: SQLAlchemy stores `DateTime` as text and silently drops the
time zone, so an aware datetime in +08:00 would be stored as its wall-clock time. `UTCDateTime`
converts every value to UTC first and stores one canonical text format on SQLite
(`YYYY-MM-DD HH:MM:SS.ffffff`, which sorts and compares correctly as text), `timestamptz` on
PostgreSQL; it always reads back aware UTC datetimes and refuses naive ones on the way in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB

# JSONB on PostgreSQL (indexable, `->>`), JSON text on SQLite (`json_extract`).
JSONType = JSON().with_variant(JSONB(), "postgresql")
# A 64-bit key on PostgreSQL; SQLite only auto-increments an `INTEGER PRIMARY KEY`.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

SQLITE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime, on both databases (naive input is a bug and raises)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: wxpush stores aware UTC timestamps")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def sqlite_text(value: datetime) -> str:
    """The canonical SQLite text of an aware datetime (what `UTCDateTime` stores)."""
    return value.astimezone(UTC).strftime(SQLITE_DATETIME_FORMAT)


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)
