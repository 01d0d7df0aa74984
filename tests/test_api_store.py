"""The push API's group commit (api/store.py) on a real database: many requests share a
transaction and each gets its own answer; a database that cannot be reached fails a request
with StoreUnavailable after the commit timeout (a 503), never a hang."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.pool import NullPool

from api.store import Store, StoreUnavailable
from db import api_messages
from db.api_messages import Accepted, NewMessage, Replayed, Request, Result
from db.engine import make_engine
from db.models import callback_nonces
from db.nonces import claim
from processes import pick_port
from tests.fixtures.database import sqlite_only

db_backend = sqlite_only()


def _message(key: str | None = None) -> NewMessage:
    return NewMessage(
        id=api_messages.new_message_id(),
        caller="tests",
        key_id="wxk" + "0" * 20,
        idempotency_key=key,
        request_hash="0" * 64,
        app="default",
        kind="template",
        openid="o-1",
        template_id="T",
        payload={"data": {"thing1": "x"}},
        client_msg_id=None,
        created_at=datetime.now(UTC),
    )


async def test_many_requests_share_transactions_and_each_gets_its_answer(
    db_engine: Engine,
) -> None:
    store = Store(db_engine)
    store.start()
    try:
        requests = [Request(f"nonce-{n}", [_message()]) for n in range(60)]
        requests.append(Request("nonce-0", [_message()]))  # a replay of the first
        answers = await asyncio.gather(*(store.accept(r) for r in requests))
        assert all(isinstance(a, Accepted) for a in answers[:60])
        assert isinstance(answers[60], Replayed)
        assert store.transactions < 60  # grouped: fewer transactions than requests
        first = answers[0]
        assert isinstance(first, Accepted)
        row = first.messages[0][0]
        await store.record([Result(row.id, "sent", msgid=7, attempts=1)])
        stored = await store.get(row.id)
        assert stored is not None and (stored.status, stored.msgid) == ("sent", 7)
        assert await store.claim_nonce("get-nonce") is True
        assert await store.claim_nonce("get-nonce") is False
    finally:
        await store.close()


async def test_an_unreachable_database_is_503_after_the_commit_timeout() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{pick_port(0)}/nothing?connect_timeout=1"
    engine = make_engine(url, poolclass=NullPool)
    store = Store(engine, commit_timeout=0.5)
    store.start()
    try:
        with pytest.raises(StoreUnavailable, match="could not be written"):
            await asyncio.wait_for(store.accept(Request("n", [_message()])), 20)
        assert not store.healthy and store.last_error
    finally:
        await store.close()
        engine.dispose()


async def test_request_nonces_older_than_two_windows_are_forgotten(db_engine: Engine) -> None:
    """A nonce is kept 600 s (a replay within the ±300 s timestamp window is refused by it),
    then deleted by the API itself, even when no receiver runs to prune the table."""
    now = datetime.now(UTC)
    with db_engine.begin() as conn:
        claim(conn, ["recent"], now=now - timedelta(seconds=590))
        claim(conn, ["old-1", "old-2"], now=now - timedelta(seconds=700))
    store = Store(db_engine)
    assert await store.forget_replay_keys() == 2
    with db_engine.connect() as conn:
        assert list(conn.execute(select(callback_nonces.c.key)).scalars()) == ["recent"]
