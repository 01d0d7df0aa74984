"""wxpush's own moments as Prefect events, each carrying the alert an operator reads.

A campaign that pauses, fails, crashes or ends with many failures; an account's daily quota
crossing 80 %; the token refresh failing twice in a row or the stored token about to
expire; the receiver refusing many pushes. Each is one event in Prefect's event feed, with
the campaign and the account as resources (`wxpush.campaign.<id>`, `wxpush.account.<AppID>`),
so automations can match on them (tasks/alerts.py creates those that notify, docs/alerts.md).

The event's payload holds `subject` and `message`: the alert in the operator's words, as
WeCom-robot markdown (which also reads as plain text in a webhook or an email). The words
are written here, once, not in the automations' templates, so they are typed and tested.
No payload ever holds a secret: only names, AppIDs, counts and reasons the ledger already
shows. Emitting never raises: an alert that cannot be sent must not stop a campaign.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from db.account_limits import BEIJING

__all__ = [
    "Alert",
    "CampaignFacts",
    "WxpushEvent",
    "api_held",
    "campaign_crashed",
    "campaign_ended",
    "quota_crossed",
    "receiver_spike",
    "token_expiring",
    "token_refresh_failing",
]

log = logging.getLogger(__name__)

#: A campaign's quota alert fires once its account has used this share of the day's quota.
QUOTA_ALERT_SHARE = 0.8


class WxpushEvent(StrEnum):
    """The events wxpush emits (Prefect's event feed filters on these names)."""

    CAMPAIGN_PAUSED = "wxpush.campaign.paused"
    CAMPAIGN_FAILED = "wxpush.campaign.failed"
    CAMPAIGN_CRASHED = "wxpush.campaign.crashed"
    CAMPAIGN_FAILURES = "wxpush.campaign.failures-above-threshold"
    CAMPAIGN_COMPLETED = "wxpush.campaign.completed"
    QUOTA_CROSSED = "wxpush.account.quota-80"
    TOKEN_REFRESH_FAILING = "wxpush.token.refresh-failing"
    TOKEN_EXPIRING = "wxpush.token.expiring"
    RECEIVER_SPIKE = "wxpush.receiver.spike"
    API_HELD = "wxpush.api.held"


@dataclass(frozen=True, slots=True)
class Alert:
    """One event: its name, what it is about, and the words for the operator."""

    event: WxpushEvent
    resource: dict[str, str]
    related: list[dict[str, str]]
    subject: str
    message: str
    facts: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"subject": self.subject, "message": _fit(self.message), **self.facts}

    def as_json(self) -> dict[str, Any]:
        """The event as Prefect's `POST /api/events` takes it (a list of these), for a
        process that must not import Prefect (the receiver)."""
        return {
            "id": str(uuid.uuid4()),
            "occurred": datetime.now(UTC).isoformat(),
            "event": str(self.event),
            "resource": self.resource,
            "related": self.related,
            "payload": self.payload(),
        }

    def emit(self) -> bool:
        """Send it to Prefect's event stream; False (logged) if that failed."""
        try:
            from prefect.events import emit_event  # here: the receiver imports this module

            emit_event(
                event=str(self.event),
                resource=self.resource,
                related=self.related,
                payload=self.payload(),
            )
        except Exception as exc:  # an alert must never break what it reports on
            log.warning("Could not emit the %s event (%s).", self.event, type(exc).__name__)
            return False
        return True


#: A WeCom robot refuses markdown over 4,096 bytes (developer.work.weixin.qq.com/document/
#: path/91770); a message is cut below that, keeping its first lines (what and where).
MAX_MESSAGE_BYTES = 4000


def _fit(message: str) -> str:
    data = message.encode()
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    return data[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "…"


def _account(app_id: str, app: str | None) -> dict[str, str]:
    """The account as a resource: its AppID (the id) and its block name."""
    resource = {"prefect.resource.id": f"wxpush.account.{app_id}"}
    if app:
        resource["prefect.resource.name"] = app
    return resource


def account_resource(app_id: str, app: str | None = None) -> dict[str, str]:
    """The account as a related resource of a campaign's or a token's event."""
    return {**_account(app_id, app), "prefect.resource.role": "account"}


def _run_link() -> str | None:
    """The Prefect UI page of the current flow run, when there is one and a UI URL."""
    try:
        from prefect.runtime import flow_run as current_flow_run

        return current_flow_run.ui_url
    except Exception:  # outside a run, or no UI configured
        return None


def _lines(*parts: str | None) -> str:
    return "\n".join(part for part in parts if part)


def _quote(label: str, value: object) -> str:
    return f"> {label}: {value}"


def _link(url: str | None) -> str | None:
    return f"[Open the run in Prefect]({url})" if url else None


# -- campaigns ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignFacts:
    """What an alert about one campaign says: which campaign, which account, where it ended."""

    campaign_id: str
    name: str
    app: str
    app_id: str | None
    status: str
    reason: str | None
    counts: Mapping[str, int]
    #: StopCause value (quota, error_ratio, breaker, quiet_hours, signal), when one applies.
    cause: str | None = None
    #: When a scheduled run resumes the campaign (a quota or quiet-hours pause), if one does.
    resumes_at: datetime | None = None

    def resources(self) -> tuple[dict[str, str], list[dict[str, str]]]:
        resource = {
            "prefect.resource.id": f"wxpush.campaign.{self.campaign_id}",
            "prefect.resource.name": self.name,
            "wxpush.app": self.app,
        }
        if self.cause:
            resource["wxpush.cause"] = self.cause
        return resource, [account_resource(self.app_id, self.app)] if self.app_id else []

    def account(self) -> str:
        return f"{self.app} ({self.app_id})" if self.app_id else self.app

    def figures(self) -> str:
        order = ("sent", "pending", "failed", "skipped", "invalid", "unknown")
        shown = [f"{self.counts[k]:,} {k}" for k in order if self.counts.get(k)]
        return ", ".join(shown) if shown else "nothing recorded yet"

    def facts(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "campaign": self.name,
            "app": self.app,
            "app_id": self.app_id,
            "status": self.status,
            "cause": self.cause,
            "reason": self.reason,
            "counts": dict(self.counts),
            "resumes_at": self.resumes_at.isoformat() if self.resumes_at else None,
        }


_CAUSE_WORDS = {
    "quota": "the account's daily quota is used up",
    "error_ratio": "too many messages failed",
    "breaker": "WeChat's API kept failing",
    "quiet_hours": "the account's quiet hours",
    "signal": "it was stopped",
}


def _beijing(moment: datetime) -> str:
    return f"{moment.astimezone(BEIJING):%Y-%m-%d %H:%M} Beijing time"


_PAUSE_TODO = {
    "quota": "Wait for midnight, Beijing time (the quota's reset), then {resume} sends the rest.",
    "error_ratio": "Look at the report's top errcodes and fix their cause, then {resume}.",
    "breaker": "Check WeChat's status and this server's network; once WeChat answers again, "
    "{resume} sends the rest.",
    "quiet_hours": "When the quiet hours end, {resume} sends the rest.",
    "signal": "{resume} sends the rest, when it was not meant to stop.",
}


def _failure_share(counts: Mapping[str, int]) -> float:
    tried = counts.get("sent", 0) + counts.get("failed", 0)
    return counts.get("failed", 0) / tried if tried else 0.0


def campaign_ended(facts: CampaignFacts, *, failure_alert_share: float = 1.0) -> Alert:
    """The event for where a campaign's run ended: paused, failed, completed with more
    failures than `failure_alert_share` of the messages tried, or completed."""
    resource, related = facts.resources()
    head = f'"{facts.name}" (campaign `{facts.campaign_id}`, account {facts.app})'
    resume = f"`wxpush campaign resume {facts.campaign_id}`"
    if facts.status == "paused":
        event = WxpushEvent.CAMPAIGN_PAUSED
        why = _CAUSE_WORDS.get(facts.cause or "", "it stopped")
        subject = f"wxpush: campaign {facts.name} paused: {why}"
        todo = (
            f"Nothing: a scheduled run resumes it at {_beijing(facts.resumes_at)}; cancel "
            "that run in the UI to keep it paused."
            if facts.resumes_at
            else _PAUSE_TODO.get(facts.cause or "", "Fix the cause, then {resume} sends the rest.")
        ).format(resume=resume)
        title = f"**Campaign paused**: {head}"
    elif facts.status == "failed":
        event = WxpushEvent.CAMPAIGN_FAILED
        subject = f"wxpush: campaign {facts.name} failed"
        todo = f"Fix what the reason names, then {resume}."
        title = f"**Campaign failed**: {head}"
    elif facts.status == "completed_with_failures" and (
        _failure_share(facts.counts) > failure_alert_share
    ):
        event = WxpushEvent.CAMPAIGN_FAILURES
        share = _failure_share(facts.counts)
        subject = f"wxpush: campaign {facts.name} finished with {share:.0%} failed"
        todo = (
            "Look at the report's top errcodes; `wxpush campaign resume "
            f"{facts.campaign_id} --retry-failed` re-sends the failures that may pass now."
        )
        title = f"**Campaign finished with {share:.0%} of its messages failed**: {head}"
        facts = replace(
            facts, reason=facts.reason or f"more than {failure_alert_share:.0%} of the tried failed"
        )
    else:
        event = WxpushEvent.CAMPAIGN_COMPLETED
        subject = f"wxpush: campaign {facts.name} {facts.status}"
        title = f"**Campaign {facts.status.replace('_', ' ')}**: {head}"
        todo = None
    message = _lines(
        title,
        _quote("Account", facts.account()),
        _quote("Reason", facts.reason) if facts.reason else None,
        _quote("Figures", facts.figures()),
        _link(_run_link()),
        f"What to do: {todo}" if todo else None,
    )
    return Alert(event, resource, related, subject, message, facts.facts())


def campaign_crashed(facts: CampaignFacts) -> Alert:
    """The event for a run that crashed (its process died, or a bug ended it)."""
    resource, related = facts.resources()
    message = _lines(
        f'**Campaign run crashed**: "{facts.name}" (campaign `{facts.campaign_id}`, '
        f"account {facts.app})",
        _quote("Account", facts.account()),
        _quote("Reason", facts.reason) if facts.reason else None,
        _quote("Figures", facts.figures()),
        _link(_run_link()),
        "What to do: read the run's logs for the cause; every answer WeChat gave is in the "
        f"ledger, and `wxpush campaign resume {facts.campaign_id}` sends the rest, never twice.",
    )
    subject = f"wxpush: campaign {facts.name} crashed"
    return Alert(WxpushEvent.CAMPAIGN_CRASHED, resource, related, subject, message, facts.facts())


# -- accounts and tokens ----------------------------------------------------------------------


def quota_crossed(app_id: str, app: str | None, used: int, quota: int, day: date) -> Alert:
    """The event for an account whose day's quota use crossed QUOTA_ALERT_SHARE."""
    resource = _account(app_id, app)
    named = app or app_id
    message = _lines(
        f"**Daily quota {used / quota:.0%} used**: account {named}",
        _quote("Account", f"{named} ({app_id})"),
        _quote("Figures", f"{used:,} of {quota:,} template messages on {day} (Beijing)"),
        "What to do: campaigns pause when it is used up and resume after midnight, Beijing "
        "time. If the account's quota was raised, `wxpush setup --daily-quota N` says so.",
    )
    facts = {"app": app, "app_id": app_id, "used": used, "quota": quota, "day": day.isoformat()}
    subject = f"wxpush: account {named} used {used / quota:.0%} of its daily quota"
    return Alert(WxpushEvent.QUOTA_CROSSED, resource, [], subject, message, facts)


def token_refresh_failing(app: str, app_id: str | None, failures: int, reason: str) -> Alert:
    """The event for an app whose token refresh failed `failures` times in a row."""
    resource = {"prefect.resource.id": f"wxpush.token.{app}", "prefect.resource.name": app}
    related = [account_resource(app_id, app)] if app_id else []
    message = _lines(
        f"**Token refresh failed {failures} times in a row**: app {app}",
        _quote("Account", f"{app} ({app_id})" if app_id else app),
        _quote("Last error", reason),
        _link(_run_link()),
        "What to do: check the AppSecret and the IP allowlist in WeChat's admin console "
        f"(`wxpush setup --app {app}` updates the secret); campaigns keep the current token "
        "until it expires.",
    )
    facts = {"app": app, "app_id": app_id, "failures": failures, "reason": reason}
    subject = f"wxpush: token refresh for {app} failing"
    return Alert(WxpushEvent.TOKEN_REFRESH_FAILING, resource, related, subject, message, facts)


def token_expiring(app: str, app_id: str | None, expires_at: datetime, seconds_left: int) -> Alert:
    """The event for a stored token inside its refresh margin that could not be renewed."""
    resource = {"prefect.resource.id": f"wxpush.token.{app}", "prefect.resource.name": app}
    related = [account_resource(app_id, app)] if app_id else []
    left = f"{seconds_left} s" if seconds_left > 0 else "already expired"
    message = _lines(
        f"**Access token about to expire**: app {app}",
        _quote("Account", f"{app} ({app_id})" if app_id else app),
        _quote("Expires", f"{expires_at:%Y-%m-%d %H:%M:%S} UTC ({left})"),
        "What to do: the refresh is failing; fix its cause now, or sends will be refused "
        "with 42001 once it expires.",
    )
    facts = {"app": app, "app_id": app_id, "seconds_left": seconds_left}
    subject = f"wxpush: the access token of {app} expires in {left}"
    return Alert(WxpushEvent.TOKEN_EXPIRING, resource, related, subject, message, facts)


# -- the receiver ----------------------------------------------------------------------------


class SpikeKind(StrEnum):
    REFUSED = "refused"  # pushes the receiver refused (bad signature, replay, malformed)
    UNMATCHED = "unmatched"  # delivery receipts that matched no sent message


def receiver_spike(kind: SpikeKind, count: int, seconds: int, detail: str) -> Alert:
    """The event for the receiver refusing, or failing to match, many pushes at once."""
    resource = {"prefect.resource.id": "wxpush.receiver", "prefect.resource.name": "receiver"}
    what = "pushes refused" if kind is SpikeKind.REFUSED else "receipts matched no message"
    todo = (
        "a wrong callback Token or EncodingAESKey (after a rotation: `wxpush setup "
        "--previous-encoding-aes-key`), or someone probing the URL"
        if kind is SpikeKind.REFUSED
        else "receipts of messages sent outside wxpush, or a ledger pruned too early"
    )
    message = _lines(
        f"**Receiver: {count} {what} in {seconds} s**",
        _quote("Detail", detail),
        f"What to check: {todo}.",
    )
    facts = {"kind": str(kind), "count": count, "seconds": seconds, "detail": detail}
    subject = f"wxpush: receiver {what}: {count} in {seconds} s"
    return Alert(WxpushEvent.RECEIVER_SPIKE, resource, [], subject, message, facts)


# -- the push API -----------------------------------------------------------------------------

_API_TODO = {
    "quota": "Nothing, if the day's quota is all there is: the API sends the held messages "
    "after midnight, Beijing time. If WeChat raised the account's quota, `wxpush setup "
    "--daily-quota N` says so.",
    "breaker": "Check WeChat's status and this server's network; the API tries again by "
    "itself and sends the held messages once WeChat answers.",
}


def api_held(
    app: str,
    app_id: str | None,
    kind: str,
    cause: str,
    reason: str,
    queued: int,
    resumes_at: datetime | None,
) -> Alert:
    """The event for the push API holding an account's messages of one kind: its daily
    quota is spent, or WeChat's API kept failing (the breaker). Messages stay queued and
    go when the API tries again; callers see `queued` until then."""
    resource = {
        "prefect.resource.id": f"wxpush.api.{app}",
        "prefect.resource.name": app,
        "wxpush.app": app,
        "wxpush.cause": cause,
    }
    related = [account_resource(app_id, app)] if app_id else []
    why = _CAUSE_WORDS.get(cause, cause)
    named = f"{app} ({app_id})" if app_id else app
    message = _lines(
        f"**Push API holding {kind} messages**: account {app}: {why}",
        _quote("Account", named),
        _quote("Reason", reason),
        _quote("Queued", f"{queued:,} message(s) waiting"),
        _quote("Tries again", _beijing(resumes_at)) if resumes_at else None,
        f"What to do: {_API_TODO.get(cause, 'Fix what the reason names; the API tries again.')}",
    )
    facts = {
        "app": app,
        "app_id": app_id,
        "kind": kind,
        "cause": cause,
        "reason": reason,
        "queued": queued,
        "resumes_at": resumes_at.isoformat() if resumes_at else None,
    }
    subject = f"wxpush: the push API holds {kind} messages of {app}: {why}"
    return Alert(WxpushEvent.API_HELD, resource, related, subject, message, facts)
