"""`send_test_message`: the campaign's message to a few followers before the campaign.

What an operator runs first (listmonk's "send test message"): the same message fields as the
campaign form plus one or more OpenIDs, each rendered with that follower's `recipients` row or
sample values, sent through the campaign's send path (tasks/test_send.py). It writes no
ledger; the run ends Failed, with the refusals in its message, when WeChat refused any.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.states import Completed, Failed

from tasks.params import TestSendForm
from tasks.test_send import TestSendReport, send_tests


def _markdown(report: TestSendReport) -> str:
    lines = [
        f"# Test send: {report.summary()}",
        "",
        "| OpenID | filled from | answer | what to fix |",
        "|---|---|---|---|",
    ]
    for a in report.answers:
        answer = (
            f"sent, msgid `{a.msgid}`"
            if a.sent
            else (f"errcode {a.errcode}: " if a.errcode is not None else "") + str(a.meaning)
        )
        lines.append(f"| `{a.openid}` | {a.filled_from} | {answer} | {a.fix or ''} |")
    lines += [
        "",
        "Nothing was written to any campaign's ledger. Delivery to the phone is confirmed "
        "later by WeChat's receipt (TEMPLATESENDJOBFINISH).",
    ]
    return "\n".join(lines) + "\n"


@flow(name="send-test-message", flow_run_name="test-message-{params.app}", log_prints=False)
async def send_test_message(params: TestSendForm) -> Any:
    """Send the campaign's message once to each OpenID; Completed only if WeChat took all."""
    log = get_run_logger()
    report = await send_tests(params)
    for answer in report.answers:
        (log.info if answer.sent else log.warning)("%s", answer.line())
    await acreate_markdown_artifact(
        key="test-send",
        markdown=_markdown(report),
        description="Test send: WeChat's answer per OpenID",
    )
    if report.all_sent:
        return Completed(message=report.summary(), data=report)
    refused = "; ".join(a.line() for a in report.answers if not a.sent)
    # A Failed state, not an exception: the refusals are the answer, not a crash (no traceback).
    return Failed(message=f"{report.summary()}. {refused}", data=report)
