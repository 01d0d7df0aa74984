"""`make test` runs the suite on two workers: the modules that must stay on one worker are
the ones tests/fixtures/parallel.py groups, and its scheduler keeps them whole."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.fixtures.parallel import (
    GROUPED_MODULES,
    module_of,
    pytest_xdist_make_scheduler,
    shares_a_fixture,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_sharing_a_fixture_is_grouped(request: pytest.FixtureRequest) -> None:
    sharing = {module_of(item.nodeid) for item in request.session.items if shares_a_fixture(item)}
    missing = sorted(sharing - GROUPED_MODULES)
    assert not missing, f"add {missing} to GROUPED_MODULES in tests/fixtures/parallel.py"


def test_every_grouped_module_exists() -> None:
    for module in GROUPED_MODULES:
        assert (ROOT / module).is_file(), f"{module} is gone: take it out of GROUPED_MODULES"


def _scheduler(dist: str) -> Any:
    """The scheduler `-n 2 --dist <dist>` gets (xdist reads only these two options)."""
    options = {"dist": dist, "tx": ["2*popen"]}
    config = cast(pytest.Config, SimpleNamespace(getvalue=options.__getitem__))
    return pytest_xdist_make_scheduler(config, None)


def test_a_grouped_module_is_one_unit_and_other_tests_are_one_each() -> None:
    pytest.importorskip("xdist")
    scheduler = _scheduler("loadgroup")
    served = "tests/test_serve.py::test_deployments_carry_their_schedules_and_limits"
    other = "tests/test_ratelimit.py::test_unlimited_costs_nothing"
    assert scheduler._split_scope(served) == "tests/test_serve.py"
    assert scheduler._split_scope(f"{served}[x]") == "tests/test_serve.py"
    assert scheduler._split_scope(other) == other
    assert scheduler._split_scope(f"{other}@mine") == "mine", "xdist_group marks still count"
    assert _scheduler("load") is None, "other modes are xdist's own"
