"""Shared fixtures: each family lives in its own module under tests/fixtures/."""

from collections.abc import Iterator
from typing import Any

import pytest

import config

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.prefect",
    "tests.fixtures.database",
    "tests.fixtures.campaign",
    "tests.fixtures.cluster",
    "tests.fixtures.tiers",
    "tests.fixtures.syspath",
    "tests.fixtures.parallel",
    "pytester",  # test_tiers runs pytest on a small suite of its own
]


@pytest.fixture(autouse=True)
def _settings_follow_the_test_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test reads the WXPUSH_* settings anew (config/ keeps them once read), and a
    `monkeypatch.setenv` / `delenv` in the test counts at once, wherever in the test it
    comes: the settings are read again after it (a `wxpush` command run through CliRunner
    reads them afresh by itself)."""

    def again(method: Any) -> Any:
        def patched(self: pytest.MonkeyPatch, name: str, *args: Any, **kwargs: Any) -> None:
            method(self, name, *args, **kwargs)
            config.reload()

        return patched

    for name in ("setenv", "delenv"):
        monkeypatch.setattr(pytest.MonkeyPatch, name, again(getattr(pytest.MonkeyPatch, name)))
    config.reload()
    yield
    config.reload()
