"""Reference tables copied from the protocol layer into SQL, so analysts can join them.

db/ may not import wechat/ (the layer table in docs/architecture.md), so this module, which
may import both, turns wechat/errors.py's errcode tables into rows for
`db.errcodes.sync_errcodes`.
Plain functions, no Prefect: `wxpush db upgrade`, the test fixtures and the campaign's
start all call them.
"""

from __future__ import annotations

from sqlalchemy import Engine

from db.errcodes import ErrcodeEntry, ErrcodeSync, sync_errcodes
from wechat.errors import OFFICIAL_ACCOUNT, WECOM_OVERRIDES, Errcode


def _entries(kind: str, table: dict[int, Errcode]) -> list[ErrcodeEntry]:
    return [ErrcodeEntry(kind, e.errcode, str(e.error_class), e.meaning) for e in table.values()]


def errcode_entries() -> list[ErrcodeEntry]:
    """Every row of wechat/errors.py's tables: the Official Account's, then the WeCom codes
    whose meaning differs (a WeCom code not listed has the Official Account's meaning)."""
    return _entries("official_account", OFFICIAL_ACCOUNT) + _entries("wecom", WECOM_OVERRIDES)


def sync_errcodes_table(engine: Engine) -> ErrcodeSync:
    """Bring the `errcodes` table in step with wechat/errors.py, in its own transaction.

    Idempotent and cheap when nothing changed (one SELECT), so it may run at every start;
    the schema must already be migrated (`db.migrate.upgrade`).
    """
    with engine.begin() as connection:
        return sync_errcodes(connection, errcode_entries())
