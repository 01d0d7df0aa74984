"""How an error or a signal that ended a campaign run becomes a stop: its kind and a reason.

The flow turns the stop into the campaign's status in one place (`decide_status` in
flows/campaign.py): `stop` → failed (someone must fix something first), `pause` → paused
(transient; a resume finishes the work), `cancel` → cancelled. The rule is the one the send
path follows for errcodes (wechat/errors.py): RETRY and QUOTA pause, CONFIG / REQUEST /
REFRESH stop. Reasons are in an operator's words and say what to do. A database's own message
can carry row values, so it is never quoted: the reason names the error class and SQLSTATE.
An error the reason fully explains is `expected`: the run ends Failed with the reason as its
message and logs no traceback; any other error is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal

import httpx
from prefect.exceptions import TerminationSignal
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from db.audience import AudienceQueryError
from db.errors import causes, error_name
from sending.sender import StopKind
from wechat.errors import QuotaError, RetryableError, TransportError, WeChatError

#: Longest reason stored in `campaigns.status_reason` (the operator reads it in one glance).
MAX_REASON = 400


class CampaignFailed(RuntimeError):
    """The campaign stopped before or while sending; the message says what to fix."""


#: A quote of a database message is recognised by its first this many characters, so a
#: shortened quote is caught too.
_QUOTE_PREFIX = 12


def _value_free(message: str, exc: BaseException) -> str:
    """`message` cut where it starts quoting a database error of `exc`'s chain, which is
    named instead (class and SQLSTATE): the database's text can carry row values."""
    for cause in causes(exc):
        if not isinstance(cause, DBAPIError):
            continue
        for text in (str(cause.orig).strip(), str(cause).strip()):
            start = message.find(text[:_QUOTE_PREFIX]) if text else -1
            if start >= 0:
                message = f"{message[:start]}{error_name(cause)}"
    return message


def _short(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


def signal_name(exc: BaseException) -> str:
    """How the operator calls the signal that stopped the run."""
    if isinstance(exc, KeyboardInterrupt):
        return "Ctrl-C (SIGINT)"
    number = getattr(exc, "signal", None)
    try:
        return signal.Signals(number).name if number is not None else "a signal"
    except ValueError:
        return f"signal {number}"


def stop_for_error(exc: BaseException, campaign_id: str) -> tuple[StopKind, str]:
    """The stop (kind, reason) for the exception or signal that ended the run."""
    resume = f"`wxpush campaign resume {campaign_id}`"
    kind: StopKind
    if isinstance(exc, KeyboardInterrupt | TerminationSignal):
        kind, reason = "pause", f"stopped by {signal_name(exc)}; {resume} sends the rest"
    elif not isinstance(exc, Exception):
        kind = "pause"
        reason = f"the run was interrupted ({type(exc).__name__}); {resume} sends the rest"
    else:
        kind, reason = _classify(exc, resume) or (
            "stop",
            f"the run failed with an unexpected {type(exc).__name__}; the flow run's logs say "
            f"where. Fix the cause, then {resume}",
        )
    return kind, _short(_value_free(reason, exc))


def expected(exc: BaseException) -> bool:
    """Whether the reason `stop_for_error` gives says all there is (a refusal, an outage, an
    audience SQL that cannot work): such an ending is logged in one line, without a
    traceback. Any other exception is a bug, whose traceback the logs keep."""
    return isinstance(exc, Exception) and _classify(exc, "") is not None


def _classify(exc: Exception, resume: str) -> tuple[StopKind, str] | None:
    """The stop for an error wxpush knows how to explain; None for any other."""
    if isinstance(exc, CampaignFailed | AudienceQueryError):
        return "stop", str(exc)
    if isinstance(exc, WeChatError):
        return _wechat(exc, resume)
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return "pause", f"the database failed ({error_name(exc)}); once it is back, {resume}"
    if isinstance(exc, DBAPIError):
        return "stop", (
            f"the database refused a statement ({error_name(exc)}); check that "
            f"`wxpush db upgrade` ran and the database is healthy, then {resume}"
        )
    if isinstance(exc, httpx.HTTPError | OSError):
        return "pause", f"a connection failed ({type(exc).__name__}); once it works, {resume}"
    return None


def _wechat(exc: WeChatError, resume: str) -> tuple[StopKind, str]:
    code = f"errcode {exc.errcode} ({exc.meaning})" if exc.errcode is not None else None
    where = f" at {exc.endpoint}" if exc.endpoint else ""
    if isinstance(exc, TransportError):
        status = f" (HTTP {exc.status_code})" if exc.status_code else ""
        return "pause", (
            f"could not reach WeChat's API{where}{status}; check the network and the app's "
            f"api_base_url, then {resume}"
        )
    if isinstance(exc, QuotaError):
        return "pause", f"WeChat says {code}{where}; {exc.fix}, then {resume}"
    if isinstance(exc, RetryableError):
        said = f"WeChat kept answering {code}{where}" if code else str(exc)
        return "pause", f"{said}; when it recovers, {resume}"
    if code is None:
        return "stop", f"{str(exc).rstrip('.')}; then {resume}"
    return "stop", f"WeChat refused: {code}{where}; {exc.fix}, then {resume}"
