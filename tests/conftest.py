"""Shared fixtures: each family lives in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.prefect",
    "tests.fixtures.database",
    "tests.fixtures.campaign",
    "tests.fixtures.tiers",
    "tests.fixtures.syspath",
    "pytester",  # test_tiers runs pytest on a small suite of its own
]
