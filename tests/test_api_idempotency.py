"""Exactly once through the push API, on SQLite and PostgreSQL: concurrent duplicates of one
idempotency key make one send and equal answers; a repeat after a restart makes none; rows
an earlier process left queued follow the restart rule (docs/api.md, "Exactly once")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.pool import NullPool

from api.process import ApiProcess, start_api
from db import api_messages
from db.api_messages import NewMessage, Request, Result
from db.engine import make_engine
from sending.message import client_msg_id_for
from tests.api_helpers import Client, Key, new_app, new_key, sends, template, wait_until
from wechat.simulator.defaults import DEMO_OPENID

pytestmark = pytest.mark.harness


@dataclass
class Api:
    """The module's API, restartable."""

    url: str
    env: dict[str, str]
    process: ApiProcess

    def restart(self) -> None:
        self.process.stop()
        self.process = start_api(self.url, env=self.env)

    @property
    def base(self) -> str:
        return self.process.base


@pytest.fixture(scope="module")
def key(prefect_harness: Any) -> Key:
    return new_key()


@pytest.fixture(scope="module")
def api(
    migrated_db_url: str, prefect_harness: Any, simulator_server: Any, key: Key
) -> Iterator[Api]:
    env = prefect_harness.env()
    running = Api(migrated_db_url, env, start_api(migrated_db_url, env=env))
    yield running
    running.process.stop()


@pytest.fixture
def client(api: Api, key: Key, db_url: str) -> Iterator[Client]:
    http = Client(api.base, key)
    yield http
    http.close()


def test_twenty_concurrent_duplicates_make_one_send_and_equal_answers(
    client: Client, sim: Any
) -> None:
    app = new_app(sim)
    body = template(app, idempotency_key=f"order-{uuid.uuid4().hex}")
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/messages", body), range(20)))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    bodies = [a.json() for a in answers]
    assert all(b == bodies[0] for b in bodies), bodies
    assert bodies[0]["status"] == "sent"
    assert sends(sim) == 1
    (message,) = sim.admin.messages(kind="template").items
    assert message.msgid == bodies[0]["msgid"]
    key = body["idempotency_key"]
    assert message.client_msg_id == client_msg_id_for(f"api:{client.key.caller}", key)
    # The same key with another body is refused on that field, and sends nothing.
    other = client.post("/v1/messages", {**body, "openid": DEMO_OPENID + "x"})
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["body", "idempotency_key"]
    assert sends(sim) == 1


def _leave_queued(url: str, caller: str, key_id: str, app: str, kind: str, attempted: bool) -> str:
    """A row an earlier API process accepted and never finished (it was killed)."""
    engine = make_engine(url, poolclass=NullPool)
    message_id = api_messages.new_message_id()
    payload: dict[str, Any]
    if kind == "template":
        payload = {"data": template(app)["data"]}
    else:
        payload = {"text": "your order shipped"}
    try:
        with engine.begin() as conn:
            api_messages.accept(
                conn,
                [
                    Request(
                        None,
                        [
                            NewMessage(
                                id=message_id,
                                caller=caller,
                                key_id=key_id,
                                idempotency_key=None,
                                request_hash="0" * 64,
                                app=app,
                                kind=kind,
                                openid=DEMO_OPENID,
                                template_id=template(app)["template_id"]
                                if kind == "template"
                                else None,
                                payload=payload,
                                client_msg_id=client_msg_id_for("api", message_id)
                                if kind == "template"
                                else None,
                                created_at=datetime.now(UTC),
                            )
                        ],
                    )
                ],
            )
            if attempted:
                api_messages.record(
                    conn, [Result(message_id, "queued", first_attempt_at=datetime.now(UTC))]
                )
    finally:
        engine.dispose()
    return message_id


def test_after_a_restart_a_repeat_sends_nothing_and_queued_rows_follow_the_rule(
    api: Api, client: Client, sim: Any, migrated_db_url: str
) -> None:
    app = new_app(sim)
    body = template(app, idempotency_key=f"order-{uuid.uuid4().hex}")
    first = client.post("/v1/messages", body)
    assert first.status_code == 200 and first.json()["status"] == "sent"
    api.process.stop()
    caller, key_id = client.key.caller, client.key.key_id
    left = _leave_queued(migrated_db_url, caller, key_id, app, "template", attempted=False)
    unsure = _leave_queued(migrated_db_url, caller, key_id, app, "customer_service", True)
    api.restart()
    restarted = Client(api.base, client.key)
    try:
        again = restarted.post("/v1/messages", body)
        assert again.status_code == 200 and again.json() == first.json()
        # The template row left queued is sent (the same client_msg_id: WeChat dedupes);
        # the customer_service row that may have gone is `unknown`, never sent again.
        sent = wait_until(
            lambda: (r := restarted.get(f"/v1/messages/{left}").json())["status"] == "sent" and r
        )
        assert sent["msgid"] > 0
        view = restarted.get(f"/v1/messages/{unsure}").json()
        assert view["status"] == "unknown" and "does not dedupe" in view["reason"]
    finally:
        restarted.close()
    assert sends(sim) == 2
    assert sim.admin.counters().accepted_by_kind.get("custom", 0) == 0
