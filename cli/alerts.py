"""The alert channels and automations `wxpush setup --alert-…` creates (docs/alerts.md).

Idempotent like the rest of setup: a channel saved with the same values, or an automation
that already says the same, is left alone and reported `unchanged`. Secrets (the robot's
key, the webhook URL, the SendGrid key) go into the blocks' secret fields, never on screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from prefect.client.orchestration import PrefectClient
from pydantic import SecretStr

from cli.errors import OperatorError
from tasks.alerts import (
    WECOM_ROBOT_BASE_URL,
    channel_ids,
    ensure_alerts,
    save_email,
    save_webhook,
    save_wecom_robot,
)

Change = Literal["created", "updated", "unchanged"]


class AlertSetupError(OperatorError):
    """An alert channel that cannot be set up; the message says how to fix it."""


@dataclass
class AlertChannels:
    """What the operator asked for (None: keep what is saved)."""

    wecom_key: SecretStr | None = None
    wecom_url: str | None = None
    webhook_url: SecretStr | None = None
    email_to: Sequence[str] = ()
    email_from: str | None = None
    sendgrid_api_key: SecretStr | None = None
    blocks: Sequence[str] = ()

    def given(self) -> bool:
        return any(
            (self.wecom_key, self.webhook_url, self.email_to, self.sendgrid_api_key, self.blocks)
        )


@dataclass
class AlertsReport:
    """What setting the alerts up did, item by item (never a secret)."""

    channels: dict[str, Change] = field(default_factory=dict)
    notified: list[str] = field(default_factory=list)
    automations: dict[str, Change] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        items = [*self.channels.values(), *self.automations.values()]
        return any(item != "unchanged" for item in items)

    def lines(self) -> list[str]:
        if not self.notified:
            return [
                "  alerts: no channel (`wxpush setup --alert-wecom-key KEY`, "
                "`--alert-webhook-url URL` or `--alert-email-to ADDRESS`; docs/alerts.md)"
            ]
        out = [f"  alert channel {name}: {change}" for name, change in self.channels.items()]
        out.append(f"  alerts go to: {', '.join(self.notified)}")
        out += [f"  automation {name!r}: {change}" for name, change in self.automations.items()]
        return out


async def asetup_alerts(client: PrefectClient, asked: AlertChannels) -> AlertsReport:
    """Save the channels asked for, then point every alert automation at every channel
    saved (so a second `setup` without alert flags keeps them and repairs the automations)."""
    report = AlertsReport()
    if asked.wecom_key is not None:
        url = asked.wecom_url or WECOM_ROBOT_BASE_URL
        report.channels["wecom-robot"] = await save_wecom_robot(
            asked.wecom_key, client, base_url=url
        )
    if asked.webhook_url is not None:
        if not asked.webhook_url.get_secret_value().startswith(("http://", "https://")):
            raise AlertSetupError(
                "--alert-webhook-url must start with http:// or https:// (the URL alerts are "
                "POSTed to)."
            )
        report.channels["webhook"] = await save_webhook(asked.webhook_url, client)
    if asked.email_to or asked.sendgrid_api_key or asked.email_from:
        if not (asked.email_to and asked.sendgrid_api_key and asked.email_from):
            raise AlertSetupError(
                "Alerts by email need --alert-email-to, --alert-email-from and a SendGrid API "
                "key (--alert-sendgrid-api-key or WXPUSH_ALERT_SENDGRID_API_KEY)."
            )
        report.channels["email"] = await save_email(
            asked.sendgrid_api_key, asked.email_from, list(asked.email_to), client
        )
    try:
        found = await channel_ids(client, asked.blocks)
    except ValueError as exc:
        raise AlertSetupError(f"--alert-block {exc}.") from None
    report.notified = list(found)
    if found:
        report.automations = await ensure_alerts(client, list(found.values()))
    return report
