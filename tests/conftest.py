"""Shared fixtures: each family lives in its own module under tests/fixtures/."""

from collections.abc import Iterator

import pytest

import config

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.prefect",
    "tests.fixtures.database",
    "tests.fixtures.campaign",
    "tests.fixtures.tiers",
    "tests.fixtures.syspath",
    "pytester",  # test_tiers runs pytest on a small suite of its own
]


@pytest.fixture(autouse=True)
def _settings_read_afresh() -> Iterator[None]:
    """Each test reads the WXPUSH_* settings anew (config/ caches them per process), so a
    `monkeypatch.setenv` made before the test's first read counts; one made after a read
    needs `config.reload()`."""
    config.reload()
    yield
    config.reload()
