"""The `errcodes` reference table: what each WeChat errcode means, for SQL.

The table itself is defined once in wechat/errors.py, which db/ may not import (the layer
table in docs/architecture.md), so the caller hands the rows over as plain tuples:
`tasks.reference` does it after `wxpush db upgrade` and at a campaign's start. Like every db/
function this takes the connection (or session) first and never commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import ACCOUNT_KINDS, errcodes

Executor = Connection | Session


class ErrcodeEntry(NamedTuple):
    """One row of the table; `account_kind` is `official_account` or `wecom` (WeCom rows
    are only the codes whose meaning differs from the Official Account's)."""

    account_kind: str
    errcode: int
    error_class: str
    meaning: str


@dataclass(frozen=True, slots=True)
class ErrcodeSync:
    """What `sync_errcodes` changed (all zero: the table was already up to date)."""

    rows: int
    inserted: int
    updated: int
    deleted: int

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)

    def describe(self) -> str:
        """One line for an operator."""
        if not self.changed:
            return f"errcodes: {self.rows} rows, already up to date."
        return (
            f"errcodes: {self.rows} rows ({self.inserted} added, {self.updated} changed, "
            f"{self.deleted} removed)."
        )


def _connection(executor: Executor) -> Connection:
    return executor.connection() if isinstance(executor, Session) else executor


def _wanted(entries: Iterable[tuple[str, int, str, str]]) -> dict[tuple[str, int], ErrcodeEntry]:
    rows: dict[tuple[str, int], ErrcodeEntry] = {}
    for raw in entries:
        entry = ErrcodeEntry(str(raw[0]), int(raw[1]), str(raw[2]), str(raw[3]))
        if entry.account_kind not in ACCOUNT_KINDS:
            raise ValueError(
                f"errcode {entry.errcode}: account kind {entry.account_kind!r} is not one of "
                f"{', '.join(ACCOUNT_KINDS)}"
            )
        key = (entry.account_kind, entry.errcode)
        if key in rows:
            raise ValueError(f"errcode {entry.errcode} is listed twice for {entry.account_kind}")
        rows[key] = entry
    return rows


def sync_errcodes(executor: Executor, entries: Iterable[tuple[str, int, str, str]]) -> ErrcodeSync:
    """Make the `errcodes` table hold exactly `entries` ((account_kind, errcode, error_class,
    meaning) tuples): new rows are added, changed rows updated, rows no longer listed removed.

    Idempotent and cheap when nothing changed (one SELECT, no write, so no write lock on
    SQLite at every campaign start). The insert is an upsert, so two processes syncing at
    once cannot collide on the primary key.
    """
    wanted = _wanted(entries)
    stored = {
        (row.account_kind, row.errcode): ErrcodeEntry(*row)
        for row in executor.execute(
            select(
                errcodes.c.account_kind,
                errcodes.c.errcode,
                errcodes.c.error_class,
                errcodes.c.meaning,
            )
        )
    }
    upserts = [entry for key, entry in wanted.items() if stored.get(key) != entry]
    stale = [key for key in stored if key not in wanted]
    if upserts:
        connection = _connection(executor)
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        insert: Any = dialect.insert(errcodes)
        statement = insert.on_conflict_do_update(
            index_elements=[errcodes.c.account_kind, errcodes.c.errcode],
            set_={"error_class": insert.excluded.error_class, "meaning": insert.excluded.meaning},
        )
        connection.execute(statement, [entry._asdict() for entry in upserts])
    if stale:
        statement = delete(errcodes).where(
            errcodes.c.account_kind == bindparam("kind"),
            errcodes.c.errcode == bindparam("code"),
        )
        executor.execute(statement, [{"kind": kind, "code": code} for kind, code in stale])
    inserted = sum(1 for entry in upserts if (entry.account_kind, entry.errcode) not in stored)
    return ErrcodeSync(
        rows=len(wanted),
        inserted=inserted,
        updated=len(upserts) - inserted,
        deleted=len(stale),
    )
