"""The simulator's command lines: `python -m wechat.simulator` flags come from the config
models (so every knob is a flag), and `wxpush simulator` passes its arguments through."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from wechat.simulator.__main__ import build_parser, settings_from_args
from wechat.simulator.config import AccountConfig, FaultConfig
from wechat.simulator.defaults import APP_SECRET_ENV, DEMO_APP_ID, DEMO_APP_SECRET


def test_every_config_field_is_a_flag() -> None:
    destinations = {action.dest for action in build_parser()._actions}
    assert set(AccountConfig.model_fields) | set(FaultConfig.model_fields) <= destinations


def test_flags_build_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(APP_SECRET_ENV, raising=False)
    settings = settings_from_args(
        [
            "--port", "8999", "--token-expires-in", "600", "--token-overlap", "10",
            "--daily-quota", "5", "--rate-limit", "50", "--fault-seed", "3",
            "--drop-rate", "0.1", "--apply-to-token-endpoints", "--no-demo",
        ]
    )  # fmt: skip
    assert settings.port == 8999 and not settings.seed_demo
    account = settings.account
    assert account.app_id == DEMO_APP_ID and account.app_secret == DEMO_APP_SECRET
    assert (account.token_expires_in, account.classic_overlap_seconds) == (600, 10)
    assert account.daily_quota == 5
    faults = settings.faults
    assert (faults.rate_limit_per_second, faults.seed, faults.drop_rate) == (50, 3, 0.1)
    assert faults.apply_to_token_endpoints


def test_the_secret_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APP_SECRET_ENV, "a" * 32)
    assert settings_from_args([]).account.app_secret == "a" * 32
    assert settings_from_args(["--app-secret", "b" * 32]).account.app_secret == "b" * 32


def test_invalid_flags_are_refused() -> None:
    with pytest.raises(SystemExit):
        settings_from_args(["--daily-quota", "many"])
    with pytest.raises(ValueError):
        settings_from_args(["--drop-rate", "0.8", "--slow-rate", "0.5"])


def test_wxpush_simulator_passes_flags_through() -> None:
    result = CliRunner().invoke(app, ["simulator", "--help"])
    assert result.exit_code == 0
    for flag in ("--app-id", "--token-overlap", "--daily-quota", "--rate-limit", "--fault-seed"):
        assert flag in result.output
    assert DEMO_APP_SECRET not in result.output
