"""`send_test_message`: one template message to one follower, to check an app end to end.

What an operator runs before a campaign (listmonk's "send test message"): it uses the same
token path, field rules and client as campaigns, and reports WeChat's answer in the UI.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import BaseModel, Field

from tasks.token import get_access_token, load_app, refresh_if_current
from wechat.client import WeChatClient
from wechat.errors import TokenError
from wechat.fields import TemplateDataError, validate_template_data
from wechat.models import TemplateMessage


class TestMessage(BaseModel):
    """What to send, and to whom."""

    __test__ = False  # not a pytest test class

    app: str = Field("default", title="App", description="Name of the wechat-app block.")
    openid: str = Field(min_length=1, title="OpenID", description="The follower to send to.")
    template_id: str = Field(min_length=1, title="Template ID")
    data: dict[str, str] = Field(
        title="Fields", description="Template field key → text, e.g. thing1 → 'Order shipped'."
    )
    url: str | None = Field(None, title="URL", description="Page the message opens (optional).")


class TestMessageResult(BaseModel):
    """WeChat's answer: it accepted the message under this msgid."""

    __test__ = False

    openid: str
    template_id: str
    msgid: int
    token_refreshed: bool


@flow(name="send-test-message", flow_run_name="test-message-{message.app}-{message.openid}")
async def send_test_message(message: TestMessage) -> TestMessageResult:
    """Validate the fields, take the token from the Block, send once, report the msgid."""
    log = get_run_logger()
    problems = validate_template_data(message.data)
    if problems:
        raise TemplateDataError(problems)
    app = await load_app(message.app)
    token = await get_access_token(message.app)
    outgoing = TemplateMessage(
        touser=message.openid,
        template_id=message.template_id,
        data=dict(message.data),
        url=message.url,
    )
    refreshed = False
    async with WeChatClient(app.api_base_url, kind=app.kind) as client:
        try:
            answer = await client.send_template(token, outgoing)
        except TokenError as exc:
            log.warning("WeChat refused the token (errcode %s); refreshing once.", exc.errcode)
            token = await refresh_if_current(message.app, token)
            refreshed = True
            answer = await client.send_template(token, outgoing)
    if answer.msgid is None:
        raise RuntimeError("WeChat accepted the message but returned no msgid")
    log.info(
        "WeChat accepted the test message to %s (template %s): msgid %d.",
        message.openid,
        message.template_id,
        answer.msgid,
    )
    await acreate_markdown_artifact(
        key="test-message",
        markdown=(
            "# Test message sent\n\n"
            f"| openid | template | msgid |\n|---|---|---|\n"
            f"| `{message.openid}` | `{message.template_id}` | `{answer.msgid}` |\n\n"
            "WeChat accepted it; delivery is confirmed later by a TEMPLATESENDJOBFINISH "
            "callback.\n"
        ),
        description=f"Test message to {message.openid}",
    )
    return TestMessageResult(
        openid=message.openid,
        template_id=message.template_id,
        msgid=answer.msgid,
        token_refreshed=refreshed,
    )
