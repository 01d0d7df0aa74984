"""The push API over real HTTP: `wxpush api` in a child process, the simulator, the Prefect
harness for the keys and blocks. What does not depend on the database runs on SQLite
(test_api_idempotency.py runs the database-bound rules on PostgreSQL too)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api.process import ApiProcess, start_api
from tests.api_helpers import Client, Key, new_app, new_key, template
from tests.fixtures.database import sqlite_only

pytestmark = pytest.mark.harness

db_backend = sqlite_only()


@pytest.fixture(scope="module")
def key(prefect_harness: Any) -> Key:
    return new_key()


@pytest.fixture(scope="module")
def api(
    migrated_db_url: str, prefect_harness: Any, simulator_server: Any, key: Key
) -> Iterator[ApiProcess]:
    """One API for the module (its tests use apps of their own)."""
    process = start_api(migrated_db_url, env=prefect_harness.env())
    yield process
    process.stop()


@pytest.fixture
def client(api: ApiProcess, key: Key) -> Iterator[Client]:
    http = Client(api.base, key)
    yield http
    http.close()


def test_one_template_message_is_sent_and_answered(
    client: Client, sim: Any, migrated_db_url: str
) -> None:
    app = new_app(sim)
    answer = client.post("/v1/messages", template(app))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "sent" and body["id"].startswith("msg_") and body["msgid"] > 0
    sent = sim.admin.messages(kind="template").items
    assert [m.msgid for m in sent] == [body["msgid"]]
    view = client.get(f"/v1/messages/{body['id']}")
    assert view.status_code == 200 and view.json()["status"] == "sent"
