"""The fast tier's marks follow the fixtures, and an unmarked test that starts a process
fails in it (tests/fixtures/tiers.py). Runs pytest in-process on a small suite: no process."""

from __future__ import annotations

import pytest

CONFTEST = """
import pytest

pytest_plugins = ["tests.fixtures.tiers"]


@pytest.fixture(scope="session")
def prefect_harness():
    return "a Prefect server"


@pytest.fixture(scope="session")
def simulator_server():
    return "a simulator process"


@pytest.fixture
def app(prefect_harness):
    return prefect_harness


@pytest.fixture
def sim(simulator_server):
    return simulator_server
"""

SUITE = """
import subprocess
import sys

import pytest


def test_harness_through_another_fixture(app):
    pass


def test_process_through_another_fixture(sim):
    pass


def test_plain():
    pass


def test_starts_a_process_unmarked():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.process
def test_starts_a_process_marked():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    harness: h\n    process: p\n"
    )
    return pytester


def test_marks_come_from_the_fixture_closure(suite: pytest.Pytester) -> None:
    harness = suite.runpytest_inprocess("-m", "harness", "-q")
    harness.assert_outcomes(passed=1, deselected=4)
    harness.stdout.no_fnmatch_line("*test_plain*")
    process = suite.runpytest_inprocess("-m", "process", "--collect-only", "-q")
    process.stdout.fnmatch_lines(
        ["*test_process_through_another_fixture*", "*test_starts_a_process_marked*"]
    )
    process.stdout.no_fnmatch_line("*test_starts_a_process_unmarked*")


def test_the_fast_tier_refuses_an_unmarked_process(suite: pytest.Pytester) -> None:
    fast = suite.runpytest_inprocess("-m", "not harness and not process", "-q")
    fast.assert_outcomes(passed=1, failed=1, deselected=3)
    fast.stdout.fnmatch_lines(
        ["*RuntimeError: this test starts a process (subprocess.Popen) but is not marked*"]
    )
