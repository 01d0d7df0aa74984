"""The push API over real HTTP: `wxpush api` in a child process, the simulator, the Prefect
harness for the keys and blocks. What does not depend on the database runs on SQLite
(test_api_idempotency.py runs the database-bound rules on PostgreSQL too)."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prefect.utilities.asyncutils import run_coro_as_sync

from api.process import ApiProcess, start_api
from api.signing import signed_headers
from bench.receiver import start_receiver
from tasks.api_keys import revoke_key
from tests.api_helpers import (
    TEMPLATE_DATA,
    Client,
    Key,
    new_app,
    new_key,
    rows,
    sends,
    template,
    wait_until,
)
from tests.fixtures.database import sqlite_only
from wechat.simulator.defaults import DEMO_OPENID, DEMO_TEMPLATE_ID, DEMO_TEMPLATE_KEYS

pytestmark = pytest.mark.harness

db_backend = sqlite_only()
TOKEN = "api-callback-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


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
    assert "Traceback" not in process.output(), process.output()[-4000:]


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


# -- signature refusals: each its status, nothing written, nothing sent -----------------------


def test_signature_refusals_get_their_status_and_write_nothing(
    api: ApiProcess, client: Client, key: Key, sim: Any, migrated_db_url: str
) -> None:
    app = new_app(sim)
    body = json.dumps(template(app)).encode()
    path = "/v1/messages"
    now = time.time()

    def headers(**kw: Any) -> dict[str, str]:
        values = {"key_id": key.key_id, "secret": key.secret, "path": path, "raw": body, **kw}
        return signed_headers(
            values["key_id"],
            values["secret"],
            "POST",
            values["path"],
            values["raw"],
            now=kw.get("now", now),
            nonce=kw.get("nonce"),
        )

    other = new_key()  # a real key, revoked before use
    wait_until(lambda: client.post(path, b"{}", key=other).status_code == 422)
    run_coro_as_sync(revoke_key(other.key_id))
    cases: dict[str, tuple[Any, str, bytes, int, str]] = {
        "tampered body": (
            headers(),
            path,
            body.replace(b"thing1", b"thing9"),
            401,
            "bad-signature",
        ),
        "tampered path": (headers(), f"{path}?wait=1", body, 401, "bad-signature"),
        "wrong key": (
            headers(secret="not-the-secret-" + "x" * 20),
            path,
            body,
            401,
            "bad-signature",
        ),
        "unknown key": (headers(key_id="wxk" + "0" * 20), path, body, 401, "unknown-key"),
        # Signed the moment they are sent, so the skew is 301 s or a little more.
        "skew +301": (
            lambda: headers(now=math.ceil(time.time()) + 301),
            path,
            body,
            401,
            "stale-timestamp",
        ),
        "skew -301": (
            lambda: headers(now=math.floor(time.time()) - 301),
            path,
            body,
            401,
            "stale-timestamp",
        ),
        "nonce too long": (headers(nonce="n" * 65), path, body, 401, "bad-nonce"),
    }
    rows_before, sends_before = rows(migrated_db_url), sends(sim)
    for name, (sent_headers, sent_path, sent_body, status, reason) in cases.items():
        if callable(sent_headers):
            sent_headers = sent_headers()
        answer = client.send(sent_path, sent_body, sent_headers)
        assert (answer.status_code, answer.json().get("error")) == (status, reason), (
            name,
            answer.text,
        )
    # Revoked within a few seconds (the keys are read again every 2 s); an empty body, so
    # nothing could be sent before the revoke is seen.
    wait_until(lambda: client.post(path, b"{}", key=other).status_code == 401, timeout=10)
    revoked = client.post(path, body, key=other)
    assert (revoked.status_code, revoked.json()["error"]) == (401, "revoked-key")
    # A replay: the very request that was answered, sent again.
    replayed = headers(nonce="replay-" + uuid.uuid4().hex[:12])
    first = client.send(path, body, replayed)
    assert first.status_code == 200, first.text
    rows_between, sends_between = rows(migrated_db_url), sends(sim)
    again = client.send(path, body, replayed)
    assert (again.status_code, again.json()["error"]) == (409, "replayed-nonce")
    assert (rows_before + 1, sends_before + 1) == (rows_between, sends_between)
    assert (rows(migrated_db_url), sends(sim)) == (rows_between, sends_between)
    refused = httpx.get(f"{api.base}/health").json()["refused"]
    for reason in ("bad-signature", "unknown-key", "stale-timestamp", "bad-nonce", "revoked-key"):
        assert refused.get(reason, 0) >= 1, reason
    assert refused["replayed-nonce"] >= 1
    # No secret in anything the API printed, nor in /health.
    text = api.output() + httpx.get(f"{api.base}/health").text
    for secret in (key.secret, other.secret, sim.app_secret):
        assert secret not in text


# -- field rules ----------------------------------------------------------------------------


def test_a_broken_field_is_422_naming_it_and_nothing_is_sent(
    client: Client, sim: Any, migrated_db_url: str
) -> None:
    app = new_app(sim)
    before = rows(migrated_db_url), sends(sim)
    broken = template(
        app, data={**TEMPLATE_DATA, "thing1": "这是一个超过二十个字符的商品名称用来测试字段规则"}
    )
    answer = client.post("/v1/messages", broken)
    assert answer.status_code == 422
    (problem,) = answer.json()["detail"]
    assert problem["loc"] == ["body", "data", "thing1"] and "20" in problem["msg"]
    missing = client.post("/v1/messages", {k: v for k, v in template(app).items() if k != "openid"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "openid"]
    no_app = client.post("/v1/messages", template("no-such-app"))
    assert no_app.status_code == 422 and no_app.json()["detail"][0]["loc"] == ["body", "app"]
    wait = client.post("/v1/messages?wait=31", template(app))
    assert wait.status_code == 422 and wait.json()["detail"][0]["loc"] == ["query", "wait"]
    assert (rows(migrated_db_url), sends(sim)) == before


# -- per-message errors fail that message only --------------------------------------------------


def test_a_bad_template_id_fails_that_message_only(client: Client, sim: Any) -> None:
    app = new_app(sim)
    bad = client.post("/v1/messages", template(app, template_id="no-such-template"))
    assert bad.status_code == 200, bad.text
    assert bad.json()["status"] == "failed" and bad.json()["errcode"] == 40037
    good = client.post("/v1/messages", template(app))
    assert good.status_code == 200 and good.json()["status"] == "sent"
    lanes = httpx.get(f"{client.base}/health").json()["lanes"]
    assert lanes[app]["template"]["state"] == "open"


# -- the batch endpoint ---------------------------------------------------------------------------


def test_a_batch_answers_each_message(client: Client, sim: Any, migrated_db_url: str) -> None:
    app = new_app(sim)
    key = f"order-{uuid.uuid4().hex}"
    first = client.post("/v1/messages", template(app, idempotency_key=key))
    assert first.status_code == 200
    messages = [
        template(app),
        template(app, template_id="no-such-template"),
        template(app, idempotency_key=key),  # a repeat: the first answer, no send
        template(app, idempotency_key=key, url="https://example.com/other"),  # another body
        template(app, idempotency_key=f"order-{uuid.uuid4().hex}"),
    ]
    answer = client.post("/v1/messages/batch", {"messages": messages})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["sent", "failed", "sent", "rejected", "sent"]
    assert results[1]["errcode"] == 40037
    assert results[2] == first.json()
    assert results[3]["id"] == first.json()["id"] and "idempotency_key" in results[3]["reason"]
    assert len({r["id"] for r in results}) == 4
    assert sends(sim) == 3  # the first single message, and two of the batch

    before = rows(migrated_db_url), sends(sim)
    broken = [template(app), template(app, data={"thing1": ""})]
    refused = client.post("/v1/messages/batch", {"messages": broken})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "messages", 1, "data", "thing1"]
    too_many = client.post("/v1/messages/batch", {"messages": [template(app)] * 1001})
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["loc"] == ["body", "messages"]
    assert (rows(migrated_db_url), sends(sim)) == before


# -- receipts --------------------------------------------------------------------------------------


def test_a_receipt_reaches_get_message(client: Client, sim: Any, migrated_db_url: str) -> None:
    app = new_app(sim)
    receiver = start_receiver(migrated_db_url, app_id=sim.app_id, token=TOKEN, aes_key=AES_KEY)
    try:
        sim.admin.set_callbacks(
            callback_url=f"{receiver.base}/wechat/callback",
            callback_token=TOKEN,
            encoding_aes_key=AES_KEY,
            receipt_mix={"failed:user block": 1.0},
        )
        sent = client.post("/v1/messages", template(app)).json()
        assert sent["status"] == "sent"
        view = wait_until(
            lambda: (
                (v := client.get(f"/v1/messages/{sent['id']}").json()).get("receipt_status") and v
            )
        )
        assert view["receipt_status"] == "user_block" and view["receipt_at"]
        assert view["msgid"] == sent["msgid"]
    finally:
        receiver.stop(timeout=30)


# -- the account's limits ------------------------------------------------------------------------


def test_a_spent_daily_quota_holds_the_lane_and_messages_stay_queued(
    api: ApiProcess, client: Client, sim: Any
) -> None:
    app_id = "wx" + uuid.uuid4().hex[:16]
    secret = uuid.uuid4().hex
    sim.admin.add_account(app_id, secret)
    account = sim.admin.account(app_id)
    account.add_follower(DEMO_OPENID)
    account.add_template(DEMO_TEMPLATE_ID, DEMO_TEMPLATE_KEYS)
    app = new_app(sim, app_id=app_id, app_secret=secret, daily_quota=1)
    first = client.post("/v1/messages", template(app))
    assert first.status_code == 200 and first.json()["status"] == "sent", first.text
    held = client.post("/v1/messages", template(app))
    assert held.status_code == 202 and held.json()["status"] == "queued"
    health = httpx.get(f"{api.base}/health").json()
    lane = health["lanes"][app]["template"]
    assert lane["state"] == "held:quota" and "quota" in lane["reason"]
    assert health["holds"]["quota"] >= 1
    # Held: the next one is answered at once, and nothing more reaches WeChat.
    third = client.post("/v1/messages", template(app))
    assert third.status_code == 202
    assert account.counters().accepted == 1
    assert client.get(f"/v1/messages/{held.json()['id']}").json()["status"] == "queued"


# -- the other kinds ------------------------------------------------------------------------------


def test_customer_service_and_subscribe_messages_are_sent(client: Client, sim: Any) -> None:
    app = new_app(sim)
    sim.admin.add_follower(DEMO_OPENID, subscribe_authorizations={DEMO_TEMPLATE_ID: 1})
    sim.admin.follower_sends_message(DEMO_OPENID)  # opens the 48-hour window
    text = {"app": app, "kind": "customer_service", "openid": DEMO_OPENID, "text": "已发货"}
    answer = client.post("/v1/messages", text)
    assert answer.status_code == 200 and answer.json()["status"] == "sent", answer.text
    subscribe = template(app, kind="subscribe", page="pages/order?id=1")
    answer = client.post("/v1/messages", subscribe)
    assert answer.status_code == 200 and answer.json()["status"] == "sent", answer.text
    kinds = sim.admin.counters().accepted_by_kind
    assert (kinds.get("custom"), kinds.get("subscribe")) == (1, 1)
    (sent,) = sim.admin.messages(kind="custom").items
    assert sent.client_msg_id is None  # WeChat has no dedupe for this kind
    # A text on a template message is refused, naming the field.
    wrong = client.post("/v1/messages", template(app, text="hello"))
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "text"]
