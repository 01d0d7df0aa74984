"""The receiver notices spikes of refused pushes (receiver/spikes.py) and tells whoever
started it once per spike; `wxpush receiver` turns that into the `wxpush.receiver.spike`
event the alert automations send (docs/alerts.md)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from receiver.app import CALLBACK_PATH, create_app
from receiver.config import ReceiverConfig
from receiver.spikes import SPIKE_THRESHOLD, SpikeWatch
from tests.test_receiver import APP_ID, TOKEN


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_spike_is_told_once_per_window() -> None:
    clock, told = Clock(), []
    watch = SpikeWatch("refused", lambda *a: told.append(a), threshold=5, seconds=60, clock=clock)
    for _ in range(4):
        watch.note("bad signature")
        clock.now += 1
    assert told == [], "four in a minute: no spike"
    watch.note("bad signature")
    assert told == [("refused", 5, 60, "bad signature")]
    for _ in range(20):
        watch.note("bad signature")
    assert len(told) == 1, "told once, not once per refusal"
    clock.now += 61
    for _ in range(5):
        watch.note("replayed nonce")
    assert len(told) == 2 and told[1][3] == "replayed nonce", "a new window: told again"


def test_refusals_spread_thinly_are_no_spike() -> None:
    clock, told = Clock(), []
    watch = SpikeWatch("refused", lambda *a: told.append(a), threshold=5, seconds=60, clock=clock)
    for _ in range(20):
        watch.note("bad signature")
        clock.now += 20  # three a minute
    assert told == []


def test_a_broken_tell_never_breaks_the_receiver() -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("no server")

    watch = SpikeWatch("unmatched", broken, threshold=1)
    watch.note("x")
    assert watch.spikes == 1


@pytest.mark.parametrize("db_backend", ["sqlite"], scope="session")
def test_the_app_tells_of_a_burst_of_badly_signed_pushes(db_engine: Engine) -> None:
    told: list[tuple[Any, ...]] = []
    config = ReceiverConfig(app_id=APP_ID, token=TOKEN)
    with TestClient(create_app(config, db_engine, lambda *a: told.append(a))) as client:
        query = {"signature": "0" * 40, "timestamp": "1700000000", "nonce": "n1"}
        for _ in range(SPIKE_THRESHOLD + 10):
            assert client.post(CALLBACK_PATH, params=query, content=b"<xml/>").status_code == 403
        health = client.get("/health").json()
    assert len(told) == 1, "one spike, one call"
    kind, count, _seconds, detail = told[0]
    assert (kind, count) == ("refused", SPIKE_THRESHOLD) and detail == "bad signature"
    assert TOKEN not in repr(told), "no secret in what is told"
    assert health["refusal_spikes"] == 1
