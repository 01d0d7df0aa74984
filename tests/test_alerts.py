"""Issue 13's alerts, end to end: `wxpush setup --alert-wecom-key` makes the channel and the
automations in the real Prefect server (the harness runs its triggers and actions services),
the flows emit wxpush's events, and the simulator's WeCom group robot receives the markdown.

- A campaign that hits the account's daily quota: one alert naming the campaign, the account
  and the reason, within seconds.
- A campaign run that crashes: one alert.
- Two failed token refreshes in a row: one alert (the first failure alone: none).
- No alert holds a secret (the AppSecret, the robot's key, the access token).
- Setting the alerts up twice changes nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from sqlalchemy import Engine

from cli.alerts import AlertChannels, asetup_alerts
from db.outcomes import CampaignStatus
from tasks.alerts import ALERT_AUTOMATIONS
from tests.campaign_helpers import followers, make_app, params, run_campaign

pytestmark = pytest.mark.harness
#: One database is enough: what is tested is Prefect's side.
sqlite_only = pytest.mark.parametrize("db_backend", ["sqlite"], scope="session")

#: How long an alert may take from the event to the robot (the server's trigger and action
#: services run every second or so); the test returns as soon as it is there.
ARRIVAL_SECONDS = 30.0


@pytest.fixture
def robot(sim: Any, prefect_harness: Any) -> Iterator[str]:
    """A robot key on the simulator, with wxpush's alerts pointed at it; afterwards the
    automations are deleted, so other tests on this server send no alerts."""
    key = str(uuid.uuid4())
    sim.admin.add_robot(key, per_minute=1000)

    async def setup() -> Any:
        async with get_client() as client:
            return await asetup_alerts(
                client, AlertChannels(wecom_key=_secret(key), wecom_url=sim.base_url)
            )

    report = asyncio.run(setup())
    assert report.notified == ["custom-webhook/wxpush-alerts-wecom-robot"]
    assert set(report.automations) == {rule.name for rule in ALERT_AUTOMATIONS}
    yield key

    async def teardown() -> None:
        async with get_client() as client:
            for rule in ALERT_AUTOMATIONS:
                for automation in await client.read_automations_by_name(rule.name):
                    await client.delete_automation(automation.id)

    asyncio.run(teardown())


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def _alerts(sim: Any, key: str, mentioning: str) -> list[str]:
    return [m.content for m in sim.admin.robot_messages(key).items if mentioning in m.content]


def _wait_for_alert(sim: Any, key: str, mentioning: str) -> list[str]:
    """The robot's markdown messages that mention `mentioning`, once there is one; then
    a short while longer, so a second (duplicate) alert would be seen too."""
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while time.monotonic() < deadline:
        if _alerts(sim, key, mentioning):
            time.sleep(3.0)  # a duplicate would arrive within the same trigger cycle
            return _alerts(sim, key, mentioning)
        time.sleep(0.25)
    return []


def _no_secrets(messages: list[str], *secrets: str) -> None:
    for message in messages:
        for secret in secrets:
            assert secret not in message, "an alert holds a secret"


def test_setting_the_alerts_up_twice_changes_nothing(robot: str, sim: Any) -> None:
    async def again() -> Any:
        async with get_client() as client:
            return await asetup_alerts(
                client, AlertChannels(wecom_key=_secret(robot), wecom_url=sim.base_url)
            )

    report = asyncio.run(again())
    assert report.channels == {"wecom-robot": "unchanged"}
    assert set(report.automations.values()) == {"unchanged"}
    assert not report.changed


@sqlite_only
def test_a_campaign_paused_by_its_quota_sends_one_alert(
    ledger_env: str, db_engine: Engine, sim: Any, make_wechat_app: Any, robot: str
) -> None:
    followers(db_engine, sim, "oa", 60)
    app = make_app(lambda: make_wechat_app(daily_quota=40))
    name = f"quota-alert-{uuid.uuid4().hex[:6]}"

    result = run_campaign(
        params(app.name, name=name, batch_size=20, when_quota_short="send_what_fits")
    )

    assert result.status == CampaignStatus.PAUSED
    alerts = _wait_for_alert(sim, robot, name)
    assert len(alerts) == 1, alerts
    (alert,) = alerts
    assert "Campaign paused" in alert
    assert result.campaign_id in alert and app.name in alert and sim.app_id in alert
    assert "daily template quota" in alert, "the reason is in it"
    assert "40 sent" in alert, "the figures are in it"
    assert "wxpush campaign resume" in alert, "what to do is in it"
    inbox = sim.admin.robot_messages(robot)
    assert {m.msgtype for m in inbox.items} == {"markdown"}
    _no_secrets(alerts, app.app_secret, robot)


class Boom(BaseException):
    """Not an Exception: what Prefect calls a crash (as a killed process's run is)."""


@sqlite_only
def test_a_crashed_campaign_sends_one_alert(
    ledger_env: str,
    db_engine: Engine,
    sim: Any,
    make_wechat_app: Any,
    robot: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows import campaign as campaign_flow
    from flows.campaign import push_campaign

    followers(db_engine, sim, "oc", 10)
    app = make_app(make_wechat_app)
    name = f"crash-alert-{uuid.uuid4().hex[:6]}"

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise Boom()

    monkeypatch.setattr(campaign_flow, "_send_all", crash)
    with pytest.raises(Boom):
        asyncio.run(push_campaign(params(app.name, name=name)))

    alerts = _wait_for_alert(sim, robot, name)
    assert len(alerts) == 1, alerts
    assert "Campaign run crashed" in alerts[0] and app.name in alerts[0]
    assert "wxpush campaign resume" in alerts[0]
    _no_secrets(alerts, app.app_secret, robot)


def test_two_failed_token_refreshes_in_a_row_send_one_alert(
    sim: Any, make_wechat_app: Any, robot: str
) -> None:
    from flows.token import refresh_access_token

    app = make_app(lambda: make_wechat_app(app_secret="wrong" + "0" * 27))

    def refresh_fails() -> None:
        state = asyncio.run(refresh_access_token(app.name, return_state=True))
        assert state.is_failed(), "the simulator refuses a wrong AppSecret"

    refresh_fails()
    time.sleep(3.0)  # the server's trigger cycle: an alert after one failure would be here
    assert _alerts(sim, robot, app.name) == [], "one failure alone is routine: no alert"

    refresh_fails()
    alerts = _wait_for_alert(sim, robot, f"app {app.name}")
    assert len(alerts) == 1, alerts
    assert "Token refresh failed 2 times in a row" in alerts[0]
    assert "AppSecret" in alerts[0], "what to check is in it"
    _no_secrets(alerts, app.app_secret, robot)


def test_setup_from_the_command_line_says_what_it_made_and_never_the_key(
    sim: Any, make_wechat_app: Any, robot: str
) -> None:
    from typer.testing import CliRunner

    from cli.main import app as wxpush

    block = make_app(make_wechat_app)
    result = CliRunner().invoke(
        wxpush,
        ["setup", "--app", block.name, "--alert-wecom-url", sim.base_url],
        env={"WXPUSH_ALERT_WECOM_KEY": robot},
    )
    assert result.exit_code == 0, result.output
    assert "alert channel wecom-robot: unchanged" in result.output
    assert "alerts go to: custom-webhook/wxpush-alerts-wecom-robot" in result.output
    assert "automation 'wxpush: campaign paused': unchanged" in result.output
    assert robot not in result.output


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--alert-email-to", "ops@example.com"], "Alerts by email need --alert-email-to"),
        (["--alert-webhook-url", "ops.example.com/hook"], "must start with http:// or https://"),
        (["--alert-block", "slack-webhook/nosuch"], "there is no slack-webhook block named"),
        (["--alert-block", "wechat-app/x"], "there is no wechat-app block named 'x'"),
    ],
)
def test_a_channel_that_cannot_work_is_one_clear_line(
    sim: Any, make_wechat_app: Any, flags: list[str], says: str
) -> None:
    from typer.testing import CliRunner

    from cli.main import app as wxpush

    block = make_app(make_wechat_app)
    result = CliRunner().invoke(wxpush, ["setup", "--app", block.name, *flags])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], result.output
    assert "Traceback" not in result.output


@sqlite_only
def test_a_campaign_paused_by_the_breaker_sends_one_alert(
    ledger_env: str, db_engine: Engine, sim: Any, make_wechat_app: Any, robot: str
) -> None:
    """WeChat answers -1 to everything: the breaker holds sending, then gives up after its
    limit (3 s here) and pauses; the alert says WeChat's API kept failing."""
    followers(db_engine, sim, "ob", 30)
    app = make_app(make_wechat_app)
    name = f"breaker-alert-{uuid.uuid4().hex[:6]}"
    sim.admin.set_faults(minus_one_rate=1.0)
    try:
        result = run_campaign(
            params(app.name, name=name, breaker_window=10, breaker_give_up_minutes=0.05)
        )
    finally:
        sim.admin.set_faults()

    assert result.status == CampaignStatus.PAUSED
    alerts = _wait_for_alert(sim, robot, name)
    assert len(alerts) == 1, alerts
    assert "Campaign paused" in alerts[0] and "WeChat's API kept failing" in alerts[0]
    assert "Check WeChat's status" in alerts[0], "what to do, for this cause"
    _no_secrets(alerts, app.app_secret, robot)


def test_a_receiver_spike_reaches_the_robot_without_prefect_in_the_receiver(
    sim: Any, robot: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver's hook posts the event over plain HTTP to the API (as `wxpush receiver`
    does with PREFECT_API_URL set); the automation sends it on."""
    from prefect.settings import PREFECT_API_URL

    from cli.receiver_alerts import tell_spike

    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    tell_spike("refused", 50, 60, "bad signature")

    alerts = _wait_for_alert(sim, robot, "Receiver: 50 pushes refused in 60 s")
    assert len(alerts) == 1, alerts
    assert "bad signature" in alerts[0] and "EncodingAESKey" in alerts[0], "what to check"
