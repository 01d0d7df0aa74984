"""`wxpush api`'s one-line refusals, before it listens: a database not at the newest schema,
no Prefect API (unset, or nothing listening), a port in use; and its help."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from cli.main import app
from processes import pick_port
from tests.fixtures.database import sqlite_only
from tests.test_cli_errors import _one_line

db_backend = sqlite_only()


def test_an_unmigrated_database_says_run_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    line = _one_line(["api", "--database-url", url])
    assert line.startswith("wxpush api: ") and "wxpush db upgrade" in line


def test_without_prefect_api_url_it_says_where_the_keys_are(migrated_db_url: str) -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        line = _one_line(["api", "--database-url", migrated_db_url])
    assert "PREFECT_API_URL is not set" in line and "wxpush serve" in line


def test_an_unreachable_prefect_api_says_how_to_start_one(migrated_db_url: str) -> None:
    api = f"http://127.0.0.1:{pick_port(0)}/api"
    with temporary_settings(updates={PREFECT_API_URL: api}):
        line = _one_line(["api", "--database-url", migrated_db_url])
    assert f"cannot reach the Prefect API at {api}" in line


def test_a_port_in_use_is_one_line(migrated_db_url: str, prefect_harness: object) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line(["api", "--database-url", migrated_db_url, "--port", str(port)])
    assert f"127.0.0.1:{port} is already in use" in line and "Push API on" not in line


def test_help_names_every_option() -> None:
    result = CliRunner().invoke(app, ["api", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--database-url", "--wait", "--concurrency"):
        assert option in result.output


def test_setup_turns_the_api_guardrails_on_and_off(prefect_harness: object) -> None:
    from prefect.utilities.asyncutils import run_coro_as_sync

    from tasks.token import load_app
    from wechat.simulator.defaults import DEMO_APP_ID, DEMO_APP_SECRET

    name = f"g-{uuid.uuid4().hex[:8]}"
    base = ["setup", "--app", name, "--app-id", DEMO_APP_ID, "--app-secret", DEMO_APP_SECRET]
    runner = CliRunner()
    assert runner.invoke(app, base).exit_code == 0
    assert run_coro_as_sync(load_app(name)).api_follows_guardrails is False  # the default
    assert runner.invoke(app, [*base, "--api-follows-guardrails"]).exit_code == 0
    assert run_coro_as_sync(load_app(name)).api_follows_guardrails is True
    assert runner.invoke(app, base).exit_code == 0  # not given: kept
    assert run_coro_as_sync(load_app(name)).api_follows_guardrails is True
    assert runner.invoke(app, [*base, "--api-ignores-guardrails"]).exit_code == 0
    assert run_coro_as_sync(load_app(name)).api_follows_guardrails is False
