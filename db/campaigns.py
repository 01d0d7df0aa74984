"""Campaign rows: create or resume one, move its status, find it.

`set_status` is the only writer of `campaigns.status` (listmonk's habit: one function decides
transitions). A campaign runs, then ends completed / completed_with_failures / paused / failed /
cancelled; only an explicit resume (`create_or_resume` with the same id, which calls
`set_status(..., resume=True)`) sets an ended campaign running again, unless `wxpush db
prune` deleted its ledger (`ledger_pruned_at`): that resume is refused. A resume of a campaign
still marked running is allowed too: that is how a run killed mid-way is continued (the ledger
makes it safe; a run that is still alive holds db/run_lock.py's lock, so its second run is
refused before it gets here). Every function takes the connection or session first and
never commits.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.ledger import status_counts
from db.models import campaigns
from db.outcomes import CampaignStatus
from db.types import utcnow

Executor = Connection | Session
CAMPAIGN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
COUNT_KEYS = (
    "audience",
    "eligible",
    "sent",
    "failed",
    "skipped",
    "invalid",
    "pending",
    "unknown",
)
ENDED = frozenset(
    {
        CampaignStatus.COMPLETED,
        CampaignStatus.COMPLETED_WITH_FAILURES,
        CampaignStatus.PAUSED,
        CampaignStatus.FAILED,
        CampaignStatus.CANCELLED,
    }
)

# Allowed moves without a resume; staying in the same status (new counts/reason) is always ok.
TRANSITIONS: dict[CampaignStatus, frozenset[CampaignStatus]] = {
    CampaignStatus.CREATED: frozenset(
        {CampaignStatus.RUNNING, CampaignStatus.FAILED, CampaignStatus.CANCELLED}
    ),
    CampaignStatus.RUNNING: ENDED,
    CampaignStatus.PAUSED: frozenset({CampaignStatus.CANCELLED}),
    CampaignStatus.FAILED: frozenset({CampaignStatus.CANCELLED}),
    CampaignStatus.COMPLETED: frozenset(),
    CampaignStatus.COMPLETED_WITH_FAILURES: frozenset(),
    CampaignStatus.CANCELLED: frozenset(),
}

_SECRET_WORDS = ("secret", "password", "access_token", "aes_key", "encoding_aes_key")


class CampaignNotFound(LookupError):
    """No campaign with that id."""


class IllegalTransition(ValueError):
    """The status change is not allowed from the campaign's current status."""


class CampaignMismatch(ValueError):
    """A resume asked for a different app, kind or template than the campaign was made with."""


class LedgerPruned(IllegalTransition):
    """A resume of a campaign whose ledger `wxpush db prune` deleted (it would send again)."""


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    """A snapshot of a `campaigns` row. `resumed` and `previous_status` say what
    `create_or_resume` found (None/False for a new campaign and for plain reads)."""

    id: str
    name: str
    app: str
    kind: str
    template_id: str | None
    parameters: dict[str, Any]
    audience_sql: str
    status: CampaignStatus
    status_reason: str | None
    audience_count: int
    eligible_count: int
    sent_count: int
    failed_count: int
    skipped_count: int
    invalid_count: int
    pending_count: int
    unknown_count: int
    run_count: int
    flow_run_id: str | None
    deployment_id: str | None
    deployment_name: str | None
    started_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    ledger_pruned_at: datetime | None = None
    app_id: str | None = None  # since migration 0008; NULL for campaigns started before
    resumed: bool = False
    previous_status: CampaignStatus | None = None

    @property
    def counts(self) -> dict[str, int]:
        """The stored count snapshot, keyed like `set_status(counts=…)`."""
        return {key: getattr(self, f"{key}_count") for key in COUNT_KEYS}

    @classmethod
    def from_row(cls, row: Row[Any], **extra: Any) -> CampaignRecord:
        values = {f.name: getattr(row, f.name) for f in fields(cls) if f.name in row._fields}
        values["status"] = CampaignStatus(values["status"])
        return cls(**values, **extra)


def new_campaign_id() -> str:
    """A fresh, stable campaign id."""
    return str(uuid.uuid4())


def _check_id(campaign_id: str) -> str:
    if not CAMPAIGN_ID_PATTERN.fullmatch(campaign_id):
        raise ValueError(
            f"campaign id {campaign_id!r} must be 1-64 letters, digits or _ . : - "
            "(starting with a letter or digit)"
        )
    return campaign_id


def _check_no_secrets(parameters: Any, path: str = "parameters") -> None:
    """Campaign parameters are stored and shown to analysts: refuse anything named like a
    secret (docs/architecture.md, decision 8)."""
    if isinstance(parameters, Mapping):
        for key, value in parameters.items():
            if any(word in str(key).lower() for word in _SECRET_WORDS):
                raise ValueError(
                    f"{path}.{key} looks like a secret; campaign parameters are stored in "
                    "plain text and must never hold one (secrets live in the wechat-app block)"
                )
            _check_no_secrets(value, f"{path}.{key}")
    elif isinstance(parameters, list):
        for index, value in enumerate(parameters):
            _check_no_secrets(value, f"{path}[{index}]")


def _dialect(executor: Executor) -> str:
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    return bind.dialect.name


def _locked_row(executor: Executor, campaign_id: str) -> Row[Any] | None:
    query = select(campaigns).where(campaigns.c.id == campaign_id).with_for_update()
    return executor.execute(query).first()


def get_campaign(executor: Executor, campaign_id: str) -> CampaignRecord | None:
    """The campaign with this id, or None."""
    row = executor.execute(select(campaigns).where(campaigns.c.id == campaign_id)).first()
    return None if row is None else CampaignRecord.from_row(row)


def find_by_name(executor: Executor, name: str) -> list[CampaignRecord]:
    """Campaigns with this name, newest first (names need not be unique)."""
    query = (
        select(campaigns)
        .where(campaigns.c.name == name)
        .order_by(campaigns.c.created_at.desc(), campaigns.c.id)
    )
    return [CampaignRecord.from_row(row) for row in executor.execute(query)]


def find_campaign(executor: Executor, id_or_name: str) -> CampaignRecord | None:
    """By id, else the newest campaign with that name (what `wxpush report X` means)."""
    found = get_campaign(executor, id_or_name)
    if found is not None:
        return found
    named = find_by_name(executor, id_or_name)
    return named[0] if named else None


def find_by_flow_run(executor: Executor, flow_run_id: str) -> CampaignRecord | None:
    """The campaign a flow run is (or was last) working on."""
    row = executor.execute(
        select(campaigns).where(campaigns.c.flow_run_id == str(flow_run_id))
    ).first()
    return CampaignRecord.from_row(row) if row is not None else None


def create_or_resume(
    executor: Executor,
    *,
    campaign_id: str | None,
    name: str,
    app: str,
    kind: str,
    template_id: str | None,
    parameters: Mapping[str, Any],
    audience_sql: str,
    app_id: str | None = None,
    flow_run_id: str | None = None,
    deployment: str | None = None,
    deployment_id: str | None = None,
    started_by: str | None = None,
) -> CampaignRecord:
    """Start a campaign: a new row (`campaign_id` None, or an id not seen yet), or the
    existing row resumed (same id: same app/kind/template required, run_count + 1, the new
    run's flow_run_id, parameters and audience SQL stored). Either way it ends `running`.
    `app_id` is the account's AppID at this start (a resume stores its own): what the
    frequency cap counts across."""
    _check_no_secrets(parameters)
    campaign_id = _check_id(campaign_id) if campaign_id else new_campaign_id()
    now = utcnow()
    run = {
        "name": name,
        "parameters": dict(parameters),
        "audience_sql": audience_sql,
        "flow_run_id": flow_run_id,
        "deployment_name": deployment,
        "deployment_id": deployment_id,
        "started_by": started_by,
        "updated_at": now,
        **({"app_id": app_id} if app_id is not None else {}),
    }
    dialect = _dialect(executor)
    insert_fn = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    created = executor.execute(
        insert_fn(campaigns)
        .values(
            id=campaign_id,
            app=app,
            kind=kind,
            template_id=template_id,
            status=CampaignStatus.CREATED,
            created_at=now,
            run_count=1,
            **{f"{key}_count": 0 for key in COUNT_KEYS},
            **run,
        )
        .on_conflict_do_nothing(index_elements=[campaigns.c.id])
        .returning(campaigns.c.id)
    ).first()
    if created is not None:
        return set_status(executor, campaign_id, CampaignStatus.RUNNING)

    row = _locked_row(executor, campaign_id)
    if row is None:  # pragma: no cover - deleted between the two statements
        raise CampaignNotFound(campaign_id)
    if row.ledger_pruned_at is not None:
        raise LedgerPruned(
            f"campaign {campaign_id} cannot be resumed: `wxpush db prune` deleted its ledger "
            f"on {row.ledger_pruned_at:%Y-%m-%d}, and without it every recipient would be "
            "messaged again. Start a new campaign (no campaign id) instead."
        )
    for column, wanted in (("app", app), ("kind", kind), ("template_id", template_id)):
        if getattr(row, column) != wanted:
            raise CampaignMismatch(
                f"campaign {campaign_id} was started with {column}={getattr(row, column)!r}; "
                f"resuming it with {column}={wanted!r} would mix two messages in one ledger. "
                "Start a new campaign (no campaign id) instead."
            )
    executor.execute(
        update(campaigns)
        .where(campaigns.c.id == campaign_id)
        .values(run_count=campaigns.c.run_count + 1, **run)
    )
    record = set_status(executor, campaign_id, CampaignStatus.RUNNING, resume=True)
    return _replace(record, resumed=True, previous_status=CampaignStatus(row.status))


def _replace(record: CampaignRecord, **changes: Any) -> CampaignRecord:
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    return CampaignRecord(**(values | changes))


def set_status(
    executor: Executor,
    campaign_id: str,
    status: CampaignStatus | str,
    reason: str | None = None,
    counts: Mapping[str, int] | None = None,
    *,
    resume: bool = False,
) -> CampaignRecord:
    """Move the campaign to `status` (the only writer of `campaigns.status`) and return the
    new row. `counts` (keys: COUNT_KEYS; e.g. `ledger.status_counts(...)`) replaces the
    stored snapshot for the keys given; `reason` replaces `status_reason`. Raises
    IllegalTransition for a move TRANSITIONS does not allow (`resume=True` allows any status
    → running)."""
    target = CampaignStatus(status)
    values: dict[str, Any] = {}
    for key, value in (counts or {}).items():
        if key not in COUNT_KEYS:
            raise ValueError(f"unknown count {key!r}; expected one of {', '.join(COUNT_KEYS)}")
        values[f"{key}_count"] = int(value)
    if resume and target != CampaignStatus.RUNNING:
        raise ValueError("resume=True only sets a campaign running")

    for _ in range(3):  # compare-and-set: another writer may move it between read and write
        row = _locked_row(executor, campaign_id)
        if row is None:
            raise CampaignNotFound(f"no campaign with id {campaign_id!r}")
        current = CampaignStatus(row.status)
        if not (resume or target == current or target in TRANSITIONS[current]):
            hint = (
                " Resume it (run again with the same campaign id) to continue it."
                if target == CampaignStatus.RUNNING
                else ""
            )
            raise IllegalTransition(
                f"campaign {campaign_id} is {current}; it cannot become {target}.{hint}"
            )
        now = utcnow()
        change = values | {"status": target, "status_reason": reason, "updated_at": now}
        if target == CampaignStatus.RUNNING:
            change["finished_at"] = None
            if row.started_at is None:
                change["started_at"] = now
        elif target in ENDED and (target != current or row.finished_at is None):
            change["finished_at"] = now
        done = executor.execute(
            update(campaigns)
            .where(campaigns.c.id == campaign_id, campaigns.c.status == current)
            .values(**change)
            .execution_options(preserve_rowcount=True)
        ).rowcount  # type: ignore[attr-defined]
        if done == 1:
            record = get_campaign(executor, campaign_id)
            assert record is not None
            return record
    raise IllegalTransition(f"campaign {campaign_id} kept changing status; try again")


def latest_campaigns(executor: Executor, limit: int = 20) -> list[CampaignRecord]:
    """The newest campaigns first (what `wxpush campaign list` shows)."""
    query = select(campaigns).order_by(campaigns.c.created_at.desc(), campaigns.c.id).limit(limit)
    return [CampaignRecord.from_row(row) for row in executor.execute(query)]


def end_if_running(
    executor: Executor, flow_run_id: str, status: CampaignStatus, reason: str
) -> CampaignRecord | None:
    """Record how a run ended when its flow body could not (cancelled, crashed, killed):
    the campaign of `flow_run_id`, if still `running`, moves to `status` with the ledger's
    counts. Returns the updated record, or None when there was nothing to do."""
    record = find_by_flow_run(executor, flow_run_id)
    if record is None or record.status != CampaignStatus.RUNNING:
        return None
    counts = status_counts(executor, record.id)
    return set_status(
        executor,
        record.id,
        status,
        reason,
        counts={k: v for k, v in counts.items() if k in COUNT_KEYS},
    )
