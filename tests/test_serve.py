"""`make serve` end to end: deployments on a real Prefect server, a real worker process, the
simulator; the operator's actions (run from the API, cancel, resume, the UI's form in a real
browser); Ctrl-C leaves nothing.

One `make serve` for the module (it takes ~40 s to come up); the tests run in file order
and the last one presses Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import PrefectHTTPStatusError
from sqlalchemy import Engine, create_engine, text

from api.signing import signed_headers
from cli.deploy import DAILY_DIGEST, PUSH_CAMPAIGN, REFRESH_TOKEN, SEND_TEST_MESSAGE
from processes import ChildFailed, pick_port, start
from sending.message import client_msg_id_for
from tasks.report import artifact_key
from tests.browser import form_field, open_browser, table_with
from tests.waiting import wait_until
from wechat.simulator import defaults
from wechat.simulator.admin import SimulatorAdmin

pytestmark = [pytest.mark.timeout(300), pytest.mark.process]
REPO = Path(__file__).resolve().parents[1]
RECIPIENTS = 300


@dataclass
class Served:
    """A running `make serve` and how to reach its parts."""

    process: subprocess.Popen[bytes]
    folder: Path
    ui: str
    simulator: str
    database: str
    output: Path
    push_api: str

    @property
    def api(self) -> str:
        return f"{self.ui}/api"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PREFECT_API_URL": self.api,
            "WXPUSH_DATABASE_URL": self.database,
            "PREFECT_HOME": str(self.folder / "client-home"),
        }

    def engine(self) -> Engine:
        return create_engine(self.database)

    def wxpush(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def call(self, work: Any) -> Any:
        """Run `work(client)` against this server's API."""

        async def go() -> Any:
            async with get_client(httpx_settings={"base_url": self.api}) as client:
                return await work(client)

        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api}):
            return asyncio.run(go())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("serve")
    ready = folder / "ready.json"
    output = folder / "serve.out"
    env = {
        "WXPUSH_STATE_DIR": str(folder / ".wxpush"),
        "PREFECT_HOME": str(folder / "client-home"),
        "PREFECT_API_URL": None,
        "WXPUSH_DATABASE_URL": None,
    }
    args = (
        # Ports the OS picks: a developer's own `make serve` (or the demo test on another
        # worker) may hold 4200, 8900 and 8902.
        f"--ui-port {pick_port(0)} --simulator-port {pick_port(0)} "
        f"--receiver-port {pick_port(0)} --api-port {pick_port(0)} "
        f"--recipients {RECIPIENTS} --ready-file {ready}"
    )
    child = start(  # its own group, like a terminal's foreground job
        ["make", "--no-print-directory", "-C", str(REPO), "serve", f"SERVE_ARGS={args}"],
        name="make serve",
        log=output,
        env=env,
    )
    try:
        child.wait_ready(ready.exists, timeout=240, poll=0.5)
    except ChildFailed as exc:
        child.stop()
        pytest.fail(f"{exc}:\n{child.log_tail(5000)}")
    process = child.process
    urls = json.loads(ready.read_text())
    served = Served(
        process, folder, urls["ui"], urls["simulator"], urls["database"], output, urls["api"]
    )
    with SimulatorAdmin(served.simulator) as admin:
        admin.set_config(dedupe_window_seconds=0)  # a double send would show up twice
    yield served
    if process.poll() is None:  # a failed test before the Ctrl-C one
        child.send(signal.SIGINT)
        process.wait(timeout=60)


def _message(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "from the api",
        "template_id": defaults.DEMO_TEMPLATE_ID,
        "data": {**dict(defaults.DEMO_TEMPLATE_VALUES), "thing1": "{nickname}"},
        **overrides,
    }


def _run_and_wait(
    served: Served,
    params: dict[str, Any] | None,
    deployment_name: str = PUSH_CAMPAIGN,
    timeout: float = 180,
) -> Any:
    """Trigger the deployment through the API (params None: its defaults), wait for the end."""

    async def work(client: PrefectClient) -> Any:
        deployment = await client.read_deployment_by_name(deployment_name)
        run = await client.create_flow_run_from_deployment(
            deployment.id, parameters=None if params is None else {"params": params}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = await client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                return run
            await asyncio.sleep(1)
        raise AssertionError(f"flow run still {run.state} after {timeout} s")

    return served.call(work)


def _campaign_of_run(served: Served, flow_run_id: Any) -> dict[str, Any]:
    with served.engine().connect() as conn:
        row = (
            conn.execute(
                text("SELECT * FROM campaigns WHERE flow_run_id = :r"), {"r": str(flow_run_id)}
            )
            .mappings()
            .one()
        )
    return dict(row)


def _ledger(served: Served, campaign_id: str) -> dict[str, dict[str, Any]]:
    with served.engine().connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM deliveries WHERE campaign_id = :c"), {"c": campaign_id}
        ).mappings()
        return {row["openid"]: dict(row) for row in rows}


def _accepted(served: Served, campaign_id: str) -> Counter[str]:
    """How often the simulator accepted this campaign's message, per openid."""
    with SimulatorAdmin(served.simulator) as admin:
        return Counter(
            m.openid
            for m in admin.iter_messages()
            if m.client_msg_id == client_msg_id_for(campaign_id, m.openid)
        )


def _assert_exactly_once(served: Served, campaign_id: str) -> dict[str, dict[str, Any]]:
    rows = _ledger(served, campaign_id)
    sent = {openid for openid, row in rows.items() if row["status"] == "sent"}
    accepted = _accepted(served, campaign_id)
    assert set(accepted) == sent, "the simulator got exactly the rows the ledger says sent"
    assert max(accepted.values()) == 1, "nobody got the message twice"
    assert len(rows) == RECIPIENTS, "every recipient has one ledger row"
    return rows


# -- the deployments --------------------------------------------------------------------------


def test_deployments_carry_their_schedules_and_limits(served: Served) -> None:
    async def work(client: PrefectClient) -> dict[str, Any]:
        return {
            name: await client.read_deployment_by_name(name)
            for name in (PUSH_CAMPAIGN, SEND_TEST_MESSAGE, REFRESH_TOKEN, DAILY_DIGEST)
        }

    found = served.call(work)
    refresh = found[REFRESH_TOKEN].schedules
    assert len(refresh) == 1 and refresh[0].active
    assert refresh[0].schedule.interval.total_seconds() == 600
    digest = found[DAILY_DIGEST].schedules
    assert len(digest) == 1 and digest[0].active
    assert digest[0].schedule.cron == "0 9 * * *"
    assert digest[0].schedule.timezone == "Asia/Shanghai"
    campaign = found[PUSH_CAMPAIGN]
    assert campaign.schedules == []
    # Several campaigns run at once: each account's limits are held in the database.
    assert campaign.global_concurrency_limit is None
    assert campaign.concurrency_options is None
    test_send = found[SEND_TEST_MESSAGE]
    assert test_send.schedules == [], "manual, like push-campaign"
    assert test_send.entrypoint == "flows.test_message.send_test_message"
    assert (
        "openids"
        in test_send.parameter_openapi_schema["definitions"]["TestSendParams"]["properties"]
    )
    for deployment in found.values():
        assert deployment.work_pool_name == "wxpush"
        assert deployment.enforce_parameter_schema
        assert "secret" not in json.dumps(deployment.parameters).lower()


def test_the_campaign_form_has_titles_descriptions_and_bounds(served: Served) -> None:
    async def work(client: PrefectClient) -> Any:
        return (await client.read_deployment_by_name(PUSH_CAMPAIGN)).parameter_openapi_schema

    schema = served.call(work)
    fields = schema["definitions"]["CampaignParams"]["properties"]
    for name in ("name", "template_id", "batch_size", "window_hours", "concurrency"):
        assert fields[name]["title"], name
        assert fields[name]["description"], name
    assert fields["batch_size"]["minimum"] == 1
    assert fields["batch_size"]["maximum"] == 5000
    assert fields["window_hours"]["minimum"] == 0


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"template_id": ""}, "template_id"),
        ({"window_hours": -1}, "window_hours"),
    ],
)
def test_invalid_parameters_are_refused_before_a_run_exists(
    served: Served, change: dict[str, Any], complaint: str
) -> None:
    async def work(client: PrefectClient) -> tuple[int, str]:
        deployment = await client.read_deployment_by_name(PUSH_CAMPAIGN)
        only_this = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        before = await client.count_flow_runs(deployment_filter=only_this)
        with pytest.raises(PrefectHTTPStatusError) as refused:
            await client.create_flow_run_from_deployment(
                deployment.id, parameters={"params": _message(**change)}
            )
        after = await client.count_flow_runs(deployment_filter=only_this)
        return after - before, refused.value.response.text

    created, answer = served.call(work)
    assert created == 0
    assert complaint in answer


# -- operating campaigns -----------------------------------------------------------------------


def test_a_campaign_triggered_through_the_api_completes_on_the_worker(served: Served) -> None:
    run = _run_and_wait(served, _message(name="through the worker"))
    assert run.state.is_completed(), run.state.message
    campaign = _campaign_of_run(served, run.id)
    assert campaign["status"] in ("completed", "completed_with_failures")
    assert campaign["deployment_name"] == "push-campaign"
    assert campaign["started_by"] == "deployment"
    rows = _assert_exactly_once(served, campaign["id"])
    sent = sum(row["status"] == "sent" for row in rows.values())
    assert sent > RECIPIENTS // 2
    # The simulator pushes a receipt per send to the receiver that serve started.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        receipts = [row["receipt_status"] for row in _ledger(served, campaign["id"]).values()]
        if sum(status is not None for status in receipts) == sent:
            break
        time.sleep(0.5)
    assert sum(status is not None for status in receipts) == sent
    assert receipts.count("delivered") > sent // 2


def test_cancel_mid_campaign_then_resume_sends_everyone_exactly_once(served: Served) -> None:
    async def start(client: PrefectClient) -> Any:
        deployment = await client.read_deployment_by_name(PUSH_CAMPAIGN)
        return await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"params": _message(name="cancel me", rate_per_second=8, batch_size=20)},
        )

    run = served.call(start)
    deadline = time.monotonic() + 120
    campaign_id = None
    while time.monotonic() < deadline:
        with served.engine().connect() as conn:
            found = conn.execute(
                text(
                    "SELECT c.id, count(d.id) FROM campaigns c "
                    "LEFT JOIN deliveries d ON d.campaign_id = c.id AND d.status = 'sent' "
                    "WHERE c.flow_run_id = :r GROUP BY c.id"
                ),
                {"r": str(run.id)},
            ).first()
        if found is not None and found[1] >= 20:
            campaign_id = found[0]
            break
        time.sleep(0.5)
    assert campaign_id is not None, "the campaign started sending"

    cancelled = served.wxpush("campaign", "cancel", campaign_id)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "Cancelled" in cancelled.stdout
    campaign = _campaign_of_run(served, run.id)
    assert campaign["status"] == "cancelled"
    rows = _ledger(served, campaign_id)
    eligible = len(rows)  # a lower bound while cut short; the resume below finishes the rest
    assert sum(row["status"] == "sent" for row in rows.values()) < RECIPIENTS // 2, (
        "it was really cut short"
    )
    for row in rows.values():
        # The cancel let the sends in flight finish and recorded them: nothing is left in
        # doubt. A pending row was answered (a retry cut short) or marked and not sent.
        assert row["reason"] != "in_flight", row
        if row["status"] == "pending" and row["attempts"] == 0:
            assert row["reason"] == "not_attempted", row
        elif row["status"] == "pending":
            assert row["last_attempt_at"] is not None, row

    resumed = served.wxpush("campaign", "resume", campaign_id, "--wait", timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with served.engine().connect() as conn:
        status, runs = conn.execute(
            text("SELECT status, run_count FROM campaigns WHERE id = :c"), {"c": campaign_id}
        ).one()
    assert status in ("completed", "completed_with_failures")
    assert runs == 2
    rows = _assert_exactly_once(served, campaign_id)
    assert len(rows) >= eligible
    assert not any(row["status"] == "pending" for row in rows.values())


def test_the_daily_digest_deployment_runs_on_the_worker(served: Served) -> None:
    run = _run_and_wait(served, None, DAILY_DIGEST)  # what the schedule runs: the defaults
    assert run.state.is_completed(), run.state.message
    with served.engine().connect() as conn:
        found = conn.execute(
            text(
                "SELECT c.id, count(*) FILTER (WHERE d.status = 'sent'), "
                "count(*) FILTER (WHERE d.reason = 'nothing_to_send') "
                "FROM campaigns c JOIN deliveries d ON d.campaign_id = c.id "
                "WHERE c.id LIKE 'digest-daily-digest-%' GROUP BY c.id"
            )
        ).all()
    assert len(found) == 1, found
    _campaign_id, sent, quiet = found[0]
    assert sent > 0 and quiet > 0, "some followers had events yesterday, others none"


def test_campaign_list_shows_the_campaigns(served: Served) -> None:
    listed = served.wxpush("campaign", "list")
    assert listed.returncode == 0, listed.stderr
    assert "cancel me" in listed.stdout and "through the worker" in listed.stdout


# -- the UI, in a real browser ----------------------------------------------------------------

#: The form's optional fields that were a `str | None` switch with no box until "str" was
#: clicked (`Property is type "None"`): each must be one plain box now.
PLAIN_OPTIONAL_FIELDS = (
    "Template ID",
    "Link",
    "Mini-program AppID",
    "Audience SQL",
    "Continue campaign",
    "Rate limit (messages/s)",
)
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


# Plain HTTP, not PrefectClient: Playwright's sync API keeps an event loop running on this
# thread, so `Served.call` (asyncio.run) cannot run inside the browser block.
def _runs_of(served: Served, deployment_id: Any) -> int:
    only_this = {"deployments": {"id": {"any_": [str(deployment_id)]}}}
    return int(httpx.post(f"{served.api}/flow_runs/count", json=only_this).json())


def _state_of(served: Served, flow_run_id: str) -> dict[str, Any]:
    return httpx.get(f"{served.api}/flow_runs/{flow_run_id}").json()["state"] or {}


def test_a_marketer_runs_a_campaign_from_the_form_and_reads_its_report(served: Served) -> None:
    """The custom-run form as a marketing person meets it: plain boxes, an example to follow,
    a missing template ID refused before a run exists; then a run, whose report artifact's
    counts are the ledger's and the simulator's."""
    name = "from the browser"

    async def deployment_id(client: PrefectClient) -> Any:
        return (await client.read_deployment_by_name(PUSH_CAMPAIGN)).id

    campaign_deployment = served.call(deployment_id)
    runs_before = _runs_of(served, campaign_deployment)
    with open_browser() as page:
        page.goto(f"{served.ui}/deployments/deployment/{campaign_deployment}/run")
        form_field(page, "Campaign name").wait_for()
        assert "Property is type" not in page.locator("body").inner_text()
        labels = page.locator(".schema-form-property__label").all_inner_texts()
        assert "Campaign" in labels and "params" not in labels, labels
        for title in PLAIN_OPTIONAL_FIELDS:
            field = form_field(page, title)
            assert field.locator("textarea, input").count() == 1, f"{title}: one box"
            assert field.get_by_role("button", name="None").count() == 0, title
        assert '"thing1"' in form_field(page, "Template fields").inner_text(), "an example"

        form_field(page, "Campaign name").locator("textarea").fill(name)
        submit = page.get_by_role("button", name="Submit")
        submit.click()  # no template ID
        page.get_by_text(re.compile("'template_id' is a required property")).first.wait_for()
        assert _runs_of(served, campaign_deployment) == runs_before, "refused before a run"

        form_field(page, "Template ID").locator("textarea").fill(defaults.DEMO_TEMPLATE_ID)
        for tries in range(1, 4):  # on a loaded box a click can land before the form took the text
            submit.click()
            try:
                page.wait_for_url(lambda url: not url.endswith("/run"), timeout=30_000)
                break
            except Exception:
                shown = page.locator("body").inner_text()[-1500:]
                assert tries < 3, f"the form started no run; the page says: {shown}"
                assert _runs_of(served, campaign_deployment) == runs_before, "a run, no page"

        def started() -> Any:
            with served.engine().connect() as conn:
                return conn.execute(
                    text("SELECT id, flow_run_id FROM campaigns WHERE name = :n"), {"n": name}
                ).first()

        wait_until(started, "the form's campaign starts on the worker", timeout=120, poll=0.5)
        campaign_id, flow_run_id = started()
        wait_until(
            lambda: _state_of(served, flow_run_id).get("type") in FINAL_STATES,
            "the form's run ends",
            timeout=120,
            poll=0.5,
        )
        state = _state_of(served, flow_run_id)
        assert state["type"] == "COMPLETED", state

        page.goto(f"{served.ui}/runs/flow-run/{flow_run_id}")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text(artifact_key(campaign_id, "report"), exact=True).click()
        reported = table_with(page, "status")

    rows = _assert_exactly_once(served, campaign_id)
    in_ledger = Counter(row["status"] for row in rows.values())
    assert {s: n for s, n in reported.items() if n} == +in_ledger, (reported, in_ledger)
    assert reported["sent"] == sum(_accepted(served, campaign_id).values()) > RECIPIENTS // 2
    assert sum(reported.values()) == RECIPIENTS


# -- Ctrl-C ------------------------------------------------------------------------------------


def test_a_backend_pushes_one_message_through_the_push_api(served: Served) -> None:
    """`wxpush serve` starts the push API: a key made with `wxpush api-key create` signs a
    request, the message reaches the simulator and its row is in the ledger database."""
    made = served.wxpush("api-key", "create", "--name", "orders")
    assert made.returncode == 0, made.stdout + made.stderr
    key_id = re.search(r"key id: (\S+)", made.stdout)
    secret = re.search(r"secret: (\S+)", made.stdout)
    assert key_id is not None and secret is not None, made.stdout
    body = json.dumps(
        {
            "app": "default",
            "kind": "template",
            "openid": defaults.DEMO_OPENID,
            "template_id": defaults.DEMO_TEMPLATE_ID,
            "data": dict(defaults.DEMO_TEMPLATE_VALUES),
            "idempotency_key": "order-1001-shipped",
        }
    ).encode()

    def post() -> httpx.Response:  # signed afresh each time: a nonce is good once
        headers = signed_headers(key_id.group(1), secret.group(1), "POST", "/v1/messages", body)
        url = f"{served.push_api}/v1/messages"
        return httpx.post(url, content=body, headers=headers, timeout=60)

    # The API re-reads its keys every 2 s: a key made a moment ago is known within that.
    deadline = time.monotonic() + 20
    while (answer := post()).status_code == 401 and time.monotonic() < deadline:
        assert answer.json()["error"] == "unknown-key", answer.text
        time.sleep(0.5)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "sent", answer.text
    with SimulatorAdmin(served.simulator) as admin:
        cmids = {m.client_msg_id for m in admin.iter_messages(openid=defaults.DEMO_OPENID)}
    with served.engine().connect() as conn:
        row = conn.execute(
            text("SELECT status, client_msg_id FROM api_messages WHERE id = :id"),
            {"id": answer.json()["id"]},
        ).one()
    assert row.status == "sent"
    assert row.client_msg_id in cmids, "the simulator got the message the ledger holds"


def test_ctrl_c_stops_everything_make_serve_started(served: Served) -> None:
    family = psutil.Process(served.process.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in family)
    for part in (
        "prefect server start",
        "prefect worker start",
        "cli.main simulator",
        "cli.main receiver",
    ):
        assert part in names, f"{part!r} should be running under make serve"
    os.killpg(served.process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    served.process.wait(timeout=90)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert alive == [], [p.cmdline() for p in alive if p.is_running()]
    assert "Stopped." in served.output.read_text()
