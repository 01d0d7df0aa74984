"""What the push API's tests share: a signed client, an account on the simulator, its key.

The API runs as `wxpush api` in a child process (api/process.py), pointed at the session's
Prefect harness (keys and blocks) and at the test's database; the simulator is the
session's.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from prefect.utilities.asyncutils import run_coro_as_sync
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from api.signing import signed_headers
from db.engine import make_engine
from wechat.simulator.defaults import DEMO_OPENID, DEMO_TEMPLATE_ID, DEMO_TEMPLATE_VALUES

TEMPLATE_DATA = dict(DEMO_TEMPLATE_VALUES)
JSON = "application/json"


@dataclass(frozen=True)
class Key:
    """An API key as a client holds it."""

    key_id: str
    secret: str
    caller: str


def new_key(caller: str | None = None) -> Key:
    """A fresh API key on the harness's Prefect server."""
    from tasks.api_keys import create_key

    caller = caller or f"t-{uuid.uuid4().hex[:8]}"
    key, _ = run_coro_as_sync(create_key(caller))
    return Key(key.key_id, key.secret.get_secret_value(), key.caller)


def new_app(sim: Any, **overrides: Any) -> str:
    """A fresh wechat-app block for the simulator's demo account; its name."""
    from cli.setup import asetup_app

    name = f"api-{uuid.uuid4().hex[:8]}"
    values = {
        "app_id": sim.app_id,
        "app_secret": sim.app_secret,
        "api_base_url": sim.base_url,
        **overrides,
    }
    run_coro_as_sync(asetup_app(name, **values))
    return name


def template(app: str, **fields: Any) -> dict[str, Any]:
    """A template message the simulator accepts."""
    body: dict[str, Any] = {
        "app": app,
        "kind": "template",
        "openid": DEMO_OPENID,
        "template_id": DEMO_TEMPLATE_ID,
        "data": dict(TEMPLATE_DATA),
    }
    body.update(fields)
    return body


class Client:
    """A signed client of the API (what a caller's backend does, in a few lines)."""

    def __init__(self, base: str, key: Key) -> None:
        self.base = base
        self.key = key
        self.http = httpx.Client(base_url=base, timeout=60)

    def close(self) -> None:
        self.http.close()

    def post(
        self,
        path: str,
        body: Any,
        *,
        key: Key | None = None,
        now: float | None = None,
        nonce: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        key = key or self.key
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        signed = signed_headers(key.key_id, key.secret, "POST", path, raw, now=now, nonce=nonce)
        signed.update(headers or {})
        signed["content-type"] = "application/json"
        return self.http.post(path, content=raw, headers=signed)

    def send(self, path: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST `raw` with exactly these headers (a replay sends the same twice)."""
        return self.http.post(path, content=raw, headers={**headers, "content-type": JSON})

    def get(self, path: str, *, key: Key | None = None) -> httpx.Response:
        key = key or self.key
        return self.http.get(path, headers=signed_headers(key.key_id, key.secret, "GET", path, b""))


def rows(database_url: str) -> int:
    """Rows in api_messages."""
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM api_messages")).scalar_one())
    finally:
        engine.dispose()


def sends(sim: Any) -> int:
    """Messages the simulator accepted (every kind)."""
    return int(sim.admin.counters().accepted)


def wait_until(condition: Any, timeout: float = 20.0, poll: float = 0.1) -> Any:
    """Poll `condition()` until it returns something true; that value (AssertionError after
    `timeout` s)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {condition}")
        time.sleep(poll)
