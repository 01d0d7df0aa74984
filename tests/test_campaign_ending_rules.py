"""How an error that ended a run becomes the campaign's status and reason (one table, in
tasks/ending.py), and the bounds the campaign form puts on the send rate. No Prefect server."""

from __future__ import annotations

import httpx
import pytest
from prefect.exceptions import TerminationSignal
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, ProgrammingError
from typer.testing import CliRunner

from db.audience import AudienceQueryError
from db.outcomes import CampaignStatus
from flows.campaign import CampaignFailed, decide_status, push_campaign
from sending.sender import StopSignal
from tasks.ending import stop_for_error
from tasks.params import CampaignParams
from tasks.token import AppNotConfigured, TokenLockUnavailable
from wechat.errors import TransportError, api_error

SECRET_ROW_VALUE = "root:x:0:0:root:/root:/bin/bash"


class _PgError(Exception):
    sqlstate = "22P02"


def _status(exc: BaseException, campaign_id: str = "c-1") -> tuple[CampaignStatus, str]:
    stop = StopSignal()
    stop.set(*stop_for_error(exc, campaign_id))
    status, reason = decide_status({"sent": 3}, stop)
    assert reason, "every ending has a reason"
    return status, reason


@pytest.mark.parametrize(
    ("exc", "status", "words"),
    [
        (
            api_error(40125, "invalid appsecret rid: 1-2-3", endpoint="stable_token"),
            CampaignStatus.FAILED,
            ["40125", "AppSecret", "wxpush setup", "resume"],
        ),
        (
            api_error(40037, "invalid template_id", endpoint="template/send"),
            CampaignStatus.FAILED,
            ["40037", "check the template ID", "resume"],
        ),
        (
            AppNotConfigured("There is no wechat-app block named 'x'. Run `wxpush setup`."),
            CampaignStatus.FAILED,
            ["wxpush setup", "wxpush campaign resume c-1"],
        ),
        (
            api_error(-1, "system error", endpoint="stable_token"),
            CampaignStatus.PAUSED,
            ["-1", "wxpush campaign resume c-1"],
        ),
        (
            TransportError("stable_token: connection refused", endpoint="stable_token"),
            CampaignStatus.PAUSED,
            ["could not reach", "wxpush campaign resume c-1"],
        ),
        (TokenLockUnavailable("lock busy"), CampaignStatus.PAUSED, ["resume"]),
        (
            api_error(45009, "api freq out of limit", endpoint="stable_token"),
            CampaignStatus.PAUSED,
            ["45009", "Beijing midnight", "resume"],
        ),
        (
            AudienceQueryError("the audience SQL took longer than the 2 s timeout; make it faster"),
            CampaignStatus.FAILED,
            ["2 s timeout"],
        ),
        (
            CampaignFailed("The message uses {x} but the audience has no such column"),
            CampaignStatus.FAILED,
            ["{x}"],
        ),
        (httpx.ConnectError("boom"), CampaignStatus.PAUSED, ["resume"]),
        (KeyboardInterrupt(), CampaignStatus.PAUSED, ["Ctrl-C", "wxpush campaign resume c-1"]),
        (TerminationSignal(15), CampaignStatus.PAUSED, ["SIGTERM", "resume"]),
        (ZeroDivisionError("1/0"), CampaignStatus.FAILED, ["ZeroDivisionError", "logs"]),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_each_ending_gets_a_status_and_a_reason_to_act_on(
    exc: BaseException, status: CampaignStatus, words: list[str]
) -> None:
    got, reason = _status(exc)
    assert got is status, reason
    for word in words:
        assert word in reason, reason


def test_database_errors_are_named_never_quoted() -> None:
    """A database's message can carry row values: the reason keeps its class and SQLSTATE."""
    lost = OperationalError("UPDATE campaigns …", {}, _PgError(f"x: {SECRET_ROW_VALUE}"))
    status, reason = _status(lost)
    assert status is CampaignStatus.PAUSED
    assert "OperationalError" in reason and "22P02" in reason and "resume" in reason
    assert SECRET_ROW_VALUE not in reason
    broken = ProgrammingError("SELECT …", {}, _PgError(f"bad {SECRET_ROW_VALUE}"))
    status, reason = _status(broken)
    assert status is CampaignStatus.FAILED
    assert SECRET_ROW_VALUE not in reason and "ProgrammingError" in reason
    for quoted in (str(broken.orig), str(broken.orig)[:20]):  # whole, or shortened
        wrapped = AudienceQueryError(f"the audience SQL is not valid: {quoted}")
        wrapped.__cause__ = broken
        failed = CampaignFailed(str(wrapped))
        failed.__cause__ = wrapped
        status, reason = _status(failed)
        assert status is CampaignStatus.FAILED
        assert reason.startswith("the audience SQL is not valid: ProgrammingError")
        assert SECRET_ROW_VALUE[:4] not in reason and "22P02" in reason


def test_an_earlier_cancel_wins_over_the_error_that_followed() -> None:
    stop = StopSignal()
    stop.set("cancel", "cancelled from the UI")
    stop.set(*stop_for_error(TransportError("x"), "c-1"))
    assert decide_status({}, stop) == (CampaignStatus.CANCELLED, "cancelled from the UI")


# -- the send rate's minimum ----------------------------------------------------------------


def test_rate_below_a_tenth_per_second_is_refused() -> None:
    base = {"name": "n", "template_id": "T", "data": {"thing1": "x"}}
    with pytest.raises(ValidationError, match="rate_per_second"):
        CampaignParams.model_validate({**base, "rate_per_second": 0.000000001})
    assert CampaignParams.model_validate({**base, "rate_per_second": 0.1}).rate_per_second == 0.1
    assert CampaignParams.model_validate(base).rate_per_second is None, "empty = no limit"


def test_the_deployment_form_shows_the_minimum() -> None:
    schema = push_campaign.parameters.model_dump()
    rate = schema["definitions"]["CampaignParams"]["properties"]["rate_per_second"]
    assert rate["type"] == "number", "one plain box, empty = no limit"
    assert rate["minimum"] == 0.1


def test_the_cli_refuses_a_tiny_rate_in_one_line() -> None:
    from cli.main import app as cli

    out = CliRunner().invoke(
        cli,
        [
            "campaign",
            "run",
            "--name",
            "x",
            "--template-id",
            "T",
            "--data",
            "thing1=x",
            "--rate",
            "0.000000001",
        ],
    )
    assert out.exit_code == 2, out.output
    assert "rate_per_second" in out.output and "0.1" in out.output
    assert "Traceback" not in out.output
    assert "https://errors.pydantic.dev" not in out.output, "one clear line, not pydantic's dump"
