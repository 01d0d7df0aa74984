"""A test send: the campaign's message to a few OpenIDs, through the campaign's own send path.

Each OpenID gets the message rendered with its row in `recipients` (the default audience's
columns), and sample values for whatever that row does not fill. It goes through `send_rows`
with the token from the block, the same client, retries and errcode classes as a campaign,
but with a client_msg_id of its own (a repeated test is not deduplicated away) and no ledger:
no campaign row, no delivery row, ever. The answer per OpenID says sent (msgid) or what to fix.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

from db.audience import recipient_row
from db.outcomes import DeliveryOutcome, DeliveryStatus
from sending.message import MessageSpec
from sending.sender import StopSignal, TokenSource, send_rows
from tasks.database import engine
from tasks.params import TestSendParams
from tasks.token import get_access_token, load_app, refresh_if_current
from wechat.client import WeChatClient
from wechat.errors import AccountKind, ErrorClass, fix_hint, lookup
from wechat.fields import field_type

#: A value each template field type accepts (wechat/fields.py's rules; a test pins them).
SAMPLE_BY_TYPE: Mapping[str, str] = {
    "thing": "测试",
    "short_thing": "测试",
    "number": "1",
    "letter": "A",
    "symbol": "#",
    "character_string": "TEST001",
    "time": "2026-01-01 09:00",
    "date": "2026-01-01",
    "amount": "¥1.00",
    "phone_number": "13800000000",
    "car_number": "粤A12345",
    "name": "张三",
    "phrase": "测试",
    "const": "测试",
    "enum": "测试",
}
#: For a column used outside a typed field (old-style keys, text, link, page path).
SAMPLE_TEXT = "sample"
#: How long one send waits for WeChat's answer: a test send has no form field for it.
TIMEOUT_SECONDS = 10.0

Source = Literal["recipient row", "sample values"]


class TestSendAnswer(BaseModel):
    """What WeChat (or wxpush's own field check) answered for one OpenID."""

    __test__ = False  # not a pytest test class

    openid: str
    filled_from: Source
    sent: bool
    msgid: int | None = None
    errcode: int | None = None
    meaning: str | None = None
    fix: str | None = None

    def line(self) -> str:
        """One line per OpenID: sent with its msgid, or the refusal and what to fix."""
        if self.sent:
            return f"{self.openid}: sent, msgid {self.msgid} (filled from {self.filled_from})"
        code = f"errcode {self.errcode}" if self.errcode is not None else "not sent"
        return f"{self.openid}: REFUSED, {code} ({self.meaning}): {self.fix}"


class TestSendReport(BaseModel):
    """Every OpenID's answer, in the order given."""

    __test__ = False

    template_id: str | None
    answers: list[TestSendAnswer]

    @property
    def all_sent(self) -> bool:
        return all(answer.sent for answer in self.answers)

    def summary(self) -> str:
        sent = sum(answer.sent for answer in self.answers)
        return f"{sent} of {len(self.answers)} test messages accepted by WeChat"


def message_of(params: TestSendParams) -> MessageSpec:
    """The campaign's message from the test form (MessageSpec takes the flat mini-program
    fields as the campaign form has them)."""
    return MessageSpec.model_validate(
        params.model_dump(exclude={"app", "openids", "sample_values"})
    )


def sample_row(spec: MessageSpec, given: Mapping[str, str]) -> dict[str, str]:
    """A value for every column the message uses: `given` first, else one that fits the
    type of the first field using the column."""
    samples: dict[str, str] = {}
    for key, columns in spec.field_placeholders().items():
        kind = field_type(key)
        for column in columns:
            samples.setdefault(column, SAMPLE_BY_TYPE.get(kind or "", SAMPLE_TEXT))
    for column in spec.placeholders():
        samples.setdefault(column, SAMPLE_TEXT)
    samples.update({k: v for k, v in given.items() if k in spec.placeholders()})
    return samples


def _answer(
    openid: str, source: Source, outcome: DeliveryOutcome | None, kind: AccountKind
) -> TestSendAnswer:
    if outcome is None:  # send_rows only leaves a row unanswered after a stop before it
        return TestSendAnswer(
            openid=openid, filled_from=source, sent=False, meaning="not attempted", fix="retry"
        )
    if outcome.status == DeliveryStatus.SENT:
        return TestSendAnswer(openid=openid, filled_from=source, sent=True, msgid=outcome.msgid)
    if outcome.status == DeliveryStatus.INVALID:
        return TestSendAnswer(
            openid=openid,
            filled_from=source,
            sent=False,
            meaning=f"breaks WeChat's field rules: {outcome.reason}",
            fix="fix the template fields, or give sample values that fit (docs/template-fields.md)",
        )
    if outcome.errcode is None:  # a network failure after the retries, a token problem
        return TestSendAnswer(
            openid=openid,
            filled_from=source,
            sent=False,
            meaning=outcome.reason or outcome.errmsg,
            fix="check the wechat-app block's api_base_url and the network, then try again",
        )
    cls = (
        ErrorClass(outcome.error_class)
        if outcome.error_class
        else lookup(outcome.errcode, kind).error_class
    )
    return TestSendAnswer(
        openid=openid,
        filled_from=source,
        sent=False,
        errcode=outcome.errcode,
        meaning=lookup(outcome.errcode, kind).meaning,
        fix=fix_hint(outcome.errcode, cls, kind),
    )


async def send_tests(params: TestSendParams) -> TestSendReport:
    """Send the message once to each OpenID, one at a time, and say what WeChat answered."""
    spec = message_of(params)
    app = await load_app(params.app)
    samples = sample_row(spec, params.sample_values)
    rows: list[tuple[str, Source, dict[str, Any]]] = []
    with engine().connect() as conn:
        for openid in params.openids:
            found = recipient_row(conn, app.app_id, openid)
            source: Source = "sample values" if found is None else "recipient row"
            rows.append((openid, source, {**samples, **(found or {}), "openid": openid}))
    # Never a campaign's id: its own client_msg_ids, so WeChat does not drop a repeated test.
    test_id = f"test-{uuid.uuid4().hex}"
    token = TokenSource(
        await get_access_token(params.app),
        refresh=lambda failed: refresh_if_current(params.app, failed),
    )
    answers: list[TestSendAnswer] = []
    async with WeChatClient(
        app.api_base_url, kind=app.kind, max_connections=1, timeout=TIMEOUT_SECONDS
    ) as client:
        for openid, source, row in rows:
            # A stop of its own per OpenID: one refusal does not leave the others unanswered.
            result = await send_rows(
                [row],
                spec=spec,
                campaign_id=test_id,
                client=client,
                token=token,
                concurrency=1,
                stop=StopSignal(),
            )
            outcome = result.outcomes[0] if result.outcomes else None
            answers.append(_answer(openid, source, outcome, app.kind))
    return TestSendReport(template_id=params.template_id, answers=answers)
