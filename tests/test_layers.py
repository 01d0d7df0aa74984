"""The layer rules of docs/architecture.md hold: imports only point down the table."""

from __future__ import annotations

import subprocess
import sys

import pytest

import wechat


def test_public_surface_is_pinned() -> None:
    assert sorted(wechat.__all__) == sorted(
        name for name in dir(wechat) if not name.startswith("_") and name in wechat.__all__
    )
    for name in wechat.__all__:
        assert getattr(wechat, name) is not None


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("wechat", ("prefect", "sqlalchemy")),
        ("wechat.simulator.app", ("prefect", "sqlalchemy")),
    ],
)
def test_protocol_layer_never_imports_prefect_or_sql(
    module: str, forbidden: tuple[str, ...]
) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {forbidden!r}]\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
