"""Where alerts go, and the Prefect automations that send them (`wxpush setup --alert-…`).

A channel is a Prefect notification block; every alert automation notifies every channel:
- a WeCom group robot (企业微信群机器人): Prefect's built-in custom-webhook block posting
  `{"msgtype": "markdown", …}` to `<base>/cgi-bin/webhook/send?key=…`, the key a secret;
- a generic webhook: the same block posting `{"subject", "text", "source"}`, its URL a secret;
- email: Prefect's Apprise-based SendGrid block;
- any other notification block an operator made in the UI (Slack, Teams, …), by name.

The automations trigger on wxpush's own events (tasks/events.py) and send the words the
event carries. Built-in block types only, so the Prefect server, which sends the
notifications, needs nothing of wxpush installed. Creating them twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit
from uuid import UUID

from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SendgridEmail
from prefect.client.orchestration import PrefectClient
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr

from tasks.events import WxpushEvent

__all__ = [
    "ALERT_AUTOMATIONS",
    "AlertRule",
    "ChannelName",
    "ensure_alerts",
    "save_email",
    "save_webhook",
    "save_wecom_robot",
]

#: WeCom's robot API host (developer.work.weixin.qq.com/document/path/91770).
WECOM_ROBOT_BASE_URL = "https://qyapi.weixin.qq.com"
WECOM_ROBOT_PATH = "/cgi-bin/webhook/send"
#: Block document names of the channels `wxpush setup` writes.
WECOM_BLOCK = "wxpush-alerts-wecom-robot"
WEBHOOK_BLOCK = "wxpush-alerts-webhook"
EMAIL_BLOCK = "wxpush-alerts-email"
#: The tag on every automation wxpush made (the UI's automation list filters on it).
TAG = "wxpush"

ChannelName = Literal["wecom-robot", "webhook", "email"]
Change = Literal["created", "updated", "unchanged"]


def _is_local(url: str) -> bool:
    """Prefect refuses to post to private addresses unless told: allowed for loopback only
    (the simulator's robot endpoint, a local sink), never for other private networks."""
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


async def _save(block: Block, name: str, client: PrefectClient) -> Change:
    """Save a channel block; "unchanged" when the stored one already holds the same values."""
    try:
        stored = await type(block).aload(name, client=client)
    except ValueError as exc:
        if not isinstance(exc.__cause__, ObjectNotFound):
            raise
        await block.asave(name, client=client)
        return "created"
    if _values(stored) == _values(block):
        return "unchanged"
    await block.asave(name, overwrite=True, client=client)
    return "updated"


def _values(block: Block) -> dict[str, object]:
    """The block's fields, secrets revealed (SecretStr, SecretDict), to compare two blocks."""
    fields = type(block).model_fields
    values = {key: getattr(block, key) for key in fields}
    return {
        key: value.get_secret_value() if hasattr(value, "get_secret_value") else value
        for key, value in values.items()
    }


async def save_wecom_robot(
    key: SecretStr, client: PrefectClient, *, base_url: str = WECOM_ROBOT_BASE_URL
) -> Change:
    """The WeCom group robot channel: markdown messages to the robot's webhook."""
    block = CustomWebhookNotificationBlock(
        name="WeCom group robot (wxpush alerts)",
        url=base_url.rstrip("/") + WECOM_ROBOT_PATH + "?key={{key}}",
        method="POST",
        json_data={"msgtype": "markdown", "markdown": {"content": "{{body}}"}},
        secrets={"key": key.get_secret_value()},
        timeout=10,
        allow_private_urls=_is_local(base_url),
    )
    return await _save(block, WECOM_BLOCK, client)


async def save_webhook(url: SecretStr, client: PrefectClient) -> Change:
    """The generic webhook channel: `{"subject", "text", "source": "wxpush"}` as JSON. The
    URL is kept as a secret: webhook URLs often carry their own token."""
    block = CustomWebhookNotificationBlock(
        name="Webhook (wxpush alerts)",
        url="{{url}}",
        method="POST",
        json_data={"subject": "{{subject}}", "text": "{{body}}", "source": "wxpush"},
        secrets={"url": url.get_secret_value()},
        timeout=10,
        allow_private_urls=_is_local(url.get_secret_value()),
    )
    return await _save(block, WEBHOOK_BLOCK, client)


async def save_email(
    api_key: SecretStr, sender: str, to: list[str], client: PrefectClient
) -> Change:
    """The email channel: Prefect's Apprise-based SendGrid block."""
    block = SendgridEmail(api_key=api_key, sender_email=sender, to_emails=to)
    return await _save(block, EMAIL_BLOCK, client)


# -- the automations ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One automation: its name, what it watches, and when it fires."""

    name: str
    description: str
    events: tuple[WxpushEvent, ...]
    resource: str  # a prefect.resource.id pattern


ALERT_AUTOMATIONS: tuple[AlertRule, ...] = (
    AlertRule(
        "wxpush: campaign paused",
        "A campaign stopped sending and can be resumed: the daily quota, too many failures, "
        "WeChat's API failing (the breaker), or quiet hours.",
        (WxpushEvent.CAMPAIGN_PAUSED,),
        "wxpush.campaign.*",
    ),
    AlertRule(
        "wxpush: campaign failed or crashed",
        "A campaign failed (WeChat refused the template or the account's settings) or its run "
        "crashed.",
        (WxpushEvent.CAMPAIGN_FAILED, WxpushEvent.CAMPAIGN_CRASHED),
        "wxpush.campaign.*",
    ),
    AlertRule(
        "wxpush: campaign finished with many failures",
        "A campaign finished, but more of its messages failed than its alert threshold.",
        (WxpushEvent.CAMPAIGN_FAILURES,),
        "wxpush.campaign.*",
    ),
    AlertRule(
        "wxpush: access token in trouble",
        "The token refresh failed twice in a row, or the stored token is about to expire.",
        (WxpushEvent.TOKEN_REFRESH_FAILING, WxpushEvent.TOKEN_EXPIRING),
        "wxpush.token.*",
    ),
    AlertRule(
        "wxpush: daily quota 80% used",
        "An account used 80% of its daily template quota.",
        (WxpushEvent.QUOTA_CROSSED,),
        "wxpush.account.*",
    ),
    AlertRule(
        "wxpush: receiver refusals or unmatched receipts",
        "The callback receiver refused many pushes, or many receipts matched no message.",
        (WxpushEvent.RECEIVER_SPIKE,),
        "wxpush.receiver",
    ),
    AlertRule(
        "wxpush: push API holding messages",
        "The push API holds an account's messages: its daily quota is spent, or WeChat's API "
        "kept failing (the breaker); they are sent when it tries again.",
        (WxpushEvent.API_HELD,),
        "wxpush.api.*",
    ),
)


def _automation(rule: AlertRule, channels: list[UUID]) -> AutomationCore:
    return AutomationCore(
        name=rule.name,
        description=rule.description,
        enabled=True,
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": rule.resource},
            expect={str(event) for event in rule.events},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="{{ event.payload.subject }}",
                body="{{ event.payload.message }}",
            )
            for block_id in channels
        ],
    )


def _same(stored: AutomationCore, wanted: AutomationCore) -> bool:
    keep = {"name", "description", "enabled", "tags", "trigger", "actions"}

    def shape(automation: AutomationCore) -> dict[str, object]:
        dumped = automation.model_dump(mode="json", include=keep)
        dumped["trigger"].pop("id", None)
        dumped["trigger"]["expect"] = sorted(dumped["trigger"]["expect"])
        return dumped

    return shape(stored) == shape(wanted)


async def ensure_alerts(client: PrefectClient, channels: list[UUID]) -> dict[str, Change]:
    """Create or update every alert automation to notify `channels`; what changed, by name."""
    changes: dict[str, Change] = {}
    for rule in ALERT_AUTOMATIONS:
        wanted = _automation(rule, channels)
        found = await client.read_automations_by_name(rule.name)
        if not found:
            await client.create_automation(wanted)
            changes[rule.name] = "created"
            continue
        first, *extra = found
        for duplicate in extra:  # two setups raced: keep one
            await client.delete_automation(duplicate.id)
        if _same(first, wanted) and not extra:
            changes[rule.name] = "unchanged"
            continue
        await client.update_automation(first.id, wanted)
        changes[rule.name] = "updated"
    return changes


async def channel_ids(client: PrefectClient, extra: Sequence[str] = ()) -> dict[str, UUID]:
    """The block documents alerts go to, by `<type-slug>/<name>`: the channels `wxpush setup`
    saved, the blocks the automations already notify (still existing), and `extra`
    notification blocks named `<type-slug>/<name>`."""
    found: dict[str, UUID] = {}
    for automation in await client.read_automations_by_name(ALERT_AUTOMATIONS[0].name):
        for action in automation.actions:
            block_id = getattr(action, "block_document_id", None)
            if block_id is None:
                continue
            try:
                document = await client.read_block_document(block_id, include_secrets=False)
            except ObjectNotFound:  # deleted in the UI: no longer a channel
                continue
            slug = document.block_type.slug if document.block_type else "block"
            found[f"{slug}/{document.name}"] = block_id
    own = [
        (CustomWebhookNotificationBlock, WECOM_BLOCK),
        (CustomWebhookNotificationBlock, WEBHOOK_BLOCK),
        (SendgridEmail, EMAIL_BLOCK),
    ]
    for block_type, name in own:
        try:
            document = await client.read_block_document_by_name(
                name, block_type.get_block_type_slug(), include_secrets=False
            )
        except ObjectNotFound:
            continue
        found[f"{block_type.get_block_type_slug()}/{name}"] = document.id
    for named in extra:
        slug, _, name = named.partition("/")
        if not name:
            raise ValueError(f"{named!r}: name a notification block as <block-type>/<name>")
        try:
            document = await client.read_block_document_by_name(name, slug, include_secrets=False)
        except ObjectNotFound:
            raise ValueError(
                f"there is no {slug} block named {name!r}; create it in the UI (Blocks) first"
            ) from None
        schema = document.block_schema
        if schema is None or "notify" not in schema.capabilities:
            raise ValueError(f"{named!r} is not a notification block: it cannot send an alert")
        found[named] = document.id
    return found
