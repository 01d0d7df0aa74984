"""The push API and a campaign of the same account share its limits (issue 14's acceptance):
a campaign in a `wxpush campaign run` process and signed API traffic from six clients at
once go out at the account's 100/s together (±5 %, from the simulator's acceptance
times), and the account's daily quota row counts the messages of both.

Real parts: the API (`wxpush api`) and the campaign in child processes of their own, the
simulator over HTTP, the Prefect harness for the blocks and the key, SQLite and PostgreSQL
for the account's shared rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select

from api.process import ApiProcess, start_api
from db.account_limits import beijing_day
from db.models import AccountQuota
from tests.api_helpers import Client, Key, new_key, template
from tests.campaign_helpers import DATA, followers, make_app, start_cli
from wechat.simulator.defaults import DEMO_TEMPLATE_ID

pytestmark = [pytest.mark.harness, pytest.mark.process]

ACCOUNT_RATE = 100.0
TOLERANCE = 0.05
CAMPAIGN = 1_000  # recipients: ~10 s of the account's whole rate, longer while the API shares it
API_CLIENTS = 6
API_FOLLOWERS = 4_000  # more than the API can send in the time it is given (40 s at 100/s)


@pytest.fixture
def key(prefect_harness: Any) -> Key:
    return new_key()


@pytest.fixture
def api(db_url: str, prefect_harness: Any, sim: Any, key: Key) -> Iterator[ApiProcess]:
    """The API, started after the key exists: it knows the key from its first request."""
    process = start_api(db_url, env=prefect_harness.env())
    yield process
    process.stop()


def _campaign(app: str, db_url: str, harness: Any) -> Any:
    audience = (
        "SELECT openid, nickname, city, subscribed, blocked, last_interaction_at, attributes "
        "FROM recipients WHERE app_id = :app_id AND openid LIKE 'oc%'"
    )
    return start_cli(
        ["campaign", "run"],
        *("--name", "shared-with-api", "--app", app, "--campaign-id", "shared-with-api"),
        *("--template-id", DEMO_TEMPLATE_ID, "--audience-sql", audience, "--batch-size", "100"),
        *[f"--data={k}={v}" for k, v in DATA.items()],
        db_url=db_url,
        harness=harness,
    )


class Traffic:
    """`API_CLIENTS` threads posting one signed message each at a time, to followers of their
    own, until stopped; what each answer said."""

    def __init__(self, base: str, key: Key, app: str, openids: list[str]) -> None:
        self.base, self.key, self.app = base, key, app
        self.todo = list(reversed(openids))
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.answers: list[tuple[int, str | None]] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(API_CLIENTS)]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        client = Client(self.base, self.key)
        try:
            while not self.stop.is_set():
                with self.lock:
                    if not self.todo:
                        return
                    openid = self.todo.pop()
                answer = client.post("/v1/messages?wait=30", template(self.app, openid=openid))
                status = answer.json().get("status") if answer.status_code < 500 else None
                with self.lock:
                    self.answers.append((answer.status_code, status))
        finally:
            client.close()


def _rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def test_a_campaign_and_api_traffic_share_the_accounts_rate_and_quota(
    db_url: str,
    db_engine: Engine,
    sim: Any,
    make_wechat_app: Any,
    prefect_harness: Any,
    api: ApiProcess,
    key: Key,
) -> None:
    campaign_ids = followers(db_engine, sim, "oc", CAMPAIGN)
    api_ids = [f"oa{i:05d}" for i in range(API_FOLLOWERS)]
    sim.admin.add_followers({"openid": openid} for openid in api_ids)
    app = make_app(lambda: make_wechat_app(rate_per_second=ACCOUNT_RATE))

    with Traffic(api.base, key, app.name, api_ids) as traffic:
        proc = _campaign(app.name, db_url, prefect_harness)
        try:
            output = proc.communicate(timeout=180)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        time.sleep(1.0)  # the API goes on alone for a moment: the window ends with the campaign
    assert proc.returncode == 0, output[-3000:]
    assert traffic.answers, "the API clients got answers"
    assert all(code == 200 and status == "sent" for code, status in traffic.answers), sorted(
        set(traffic.answers)
    )

    messages = sorted(sim.admin.iter_messages(kind="template"), key=lambda m: m.accepted_at)
    by_campaign = [m.accepted_at.timestamp() for m in messages if m.openid.startswith("oc")]
    by_api = [m.accepted_at.timestamp() for m in messages if m.openid.startswith("oa")]
    assert sorted(m.openid for m in messages if m.openid.startswith("oc")) == campaign_ids
    assert len(by_api) == len(traffic.answers), "one send per API answer"
    start = max(by_campaign[0], by_api[0])
    end = by_campaign[-1]
    assert end - start > 3.0, f"the campaign and the API sent together for {end - start:.1f} s"
    both = [t for t in (*by_campaign, *by_api) if start <= t <= end]
    combined = _rate(sorted(both))
    shared = [t for t in by_api if start <= t <= end]
    print(
        f"combined {combined:.1f}/s over {end - start:.1f} s: campaign "
        f"{len([t for t in by_campaign if t >= start])}, API {len(shared)}"
    )
    assert combined == pytest.approx(ACCOUNT_RATE, rel=TOLERANCE), "the account's rate holds"
    assert len(shared) > 50, "the API really sent beside the campaign"

    # The quota row counts both, once the API has given back what it held unsent.
    api.stop()
    with db_engine.connect() as conn:
        used = conn.execute(
            select(AccountQuota.used).where(
                AccountQuota.app_id == sim.app_id, AccountQuota.day == beijing_day()
            )
        ).scalar_one()
    assert used == len(messages), f"quota row {used}, template messages sent {len(messages)}"
