"""Keep the simulator's demo template off a real account's daily-digest schedule.

`prefect.yaml` deploys `daily-digest` on a 09:00 schedule with the flow's default parameters,
whose template is the simulator's demo one: it exists in no real account. Before deploying,
`wxpush deploy` looks at the `wechat-app` block the digest sends as. A real account (see
`is_simulator_url`) gets the digest's schedule deployed paused unless a template ID was given
(`--digest-template-id`), and the operator is told how to enable it (docs/digests.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: The digest's entry in prefect.yaml, found by its flow (its name may be changed).
DIGEST_ENTRYPOINT = "flows.digest.daily_digest"
#: The flow's name: the first half of the deployment's full name.
DIGEST_FLOW = "daily-digest"


def is_simulator_url(api_base_url: str) -> bool:
    """The rule: an API on a loopback address (127.0.0.0/8, ::1, `localhost`) is the wxpush
    simulator; anything else (api.weixin.qq.com, a proxy, another host) is a real account.
    The simulator is only ever started on 127.0.0.1, and the real API is never local."""
    host = (urlsplit(api_base_url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DigestPlan:
    """How `daily-digest` is deployed: its app's API, the template given, hence paused or not."""

    deployment: str  # "daily-digest/<deployment name>"
    app: str
    api_base_url: str | None  # None: the app has no wechat-app block yet
    template_id: str | None  # --digest-template-id; None keeps the flow's default

    @property
    def paused(self) -> bool:
        """No template given and the account is not (known to be) the simulator."""
        simulator = self.api_base_url is not None and is_simulator_url(self.api_base_url)
        return self.template_id is None and not simulator

    def why_paused(self) -> str:
        """Why the schedule is paused, in the operator's words."""
        if self.api_base_url is None:
            where = f"there is no wechat-app block {self.app!r} yet (`wxpush setup`)"
        else:
            where = f"the wechat-app block {self.app!r} calls {self.api_base_url}, a real account"
        return (
            f"{self.deployment}: deployed with its schedule PAUSED: {where}, and the digest's "
            "default template is the simulator's demo one, which no real account has."
        )


def digest_entry(config: dict[str, Any]) -> dict[str, Any] | None:
    """prefect.yaml's daily-digest deployment, if the file has one."""
    for entry in config.get("deployments") or []:
        if entry.get("entrypoint") == DIGEST_ENTRYPOINT:
            return entry
    return None


def digest_app(entry: dict[str, Any]) -> str:
    """The app the deployed digest sends as: its `params.app`, else the flow's default."""
    from tasks.params import DigestParams

    params = (entry.get("parameters") or {}).get("params") or {}
    return str(params.get("app") or DigestParams.model_fields["app"].default)


async def aplan_digest(entry: dict[str, Any], template_id: str | None) -> DigestPlan:
    """Read the digest's wechat-app block (on PREFECT_API_URL) and decide."""
    from prefect.exceptions import ObjectNotFound

    from tasks.blocks import WeChatApp

    app = digest_app(entry)
    try:
        block: WeChatApp | None = await WeChatApp.aload(app)
    except ValueError as exc:
        if not isinstance(exc.__cause__, ObjectNotFound):
            raise
        block = None
    return DigestPlan(
        deployment=f"{DIGEST_FLOW}/{entry['name']}",
        app=app,
        api_base_url=block.api_base_url if block is not None else None,
        template_id=template_id,
    )


def apply_plan(entry: dict[str, Any], plan: DigestPlan) -> bool:
    """Change the digest's entry in place as planned; True if anything changed."""
    changed = False
    if plan.template_id is not None:
        parameters = entry.setdefault("parameters", {}) or {}
        entry["parameters"] = parameters
        params = parameters.setdefault("params", {}) or {}
        parameters["params"] = params
        params["template_id"] = plan.template_id
        changed = True
    if plan.paused:
        for schedule in entry.get("schedules") or []:
            schedule["active"] = False
            changed = True
    return changed


def how_to_enable(plan: DigestPlan, schedule_ids: list[str]) -> str:
    """The note printed after a paused deploy: the two ways to switch the digest on."""
    from tasks.params import DEFAULT_DIGEST_DATA

    fields = ", ".join(DEFAULT_DIGEST_DATA)
    resume = "\n".join(
        f"      prefect deployment schedule resume {plan.deployment} {schedule_id}"
        for schedule_id in schedule_ids
    )
    return (
        f"{plan.why_paused()}\n"
        "  To enable it, redeploy with your template:\n"
        "      wxpush deploy --digest-template-id YOUR_TEMPLATE_ID\n"
        f"  (its fields stay the demo's, {fields}, until you change them in the deployment's "
        "parameters; docs/digests.md),\n"
        "  or set the template and its fields in the Prefect UI (Deployments ▸ daily-digest ▸ "
        "Edit) and resume the schedule:\n"
        f"{resume}"
    )
