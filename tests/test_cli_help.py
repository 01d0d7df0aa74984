"""`--help` shows every option's real default (and unit), read from the model that holds it,
and `wxpush simulator --help` is drawn like the other commands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from cli.help import model_default
from cli.main import app
from receiver.config import ReceiverConfig
from tasks.blocks import WeChatApp
from tasks.params import CampaignParams

runner = CliRunner()


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield " ".join(path), command
        return
    for name, sub in subcommands.items():
        yield from _commands(sub, (*path, name))


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_every_option_with_a_value_shows_its_default() -> None:
    missing = []
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            if param.param_type_name != "option" or param.required or param.hidden:
                continue
            if getattr(param, "is_flag", False):
                continue  # a switch: off unless given
            shown = param.show_default
            if not (isinstance(shown, str) or (param.default is not None and shown is not False)):
                missing.append(f"wxpush {path} {param.opts[0]}")
    assert missing == []


@pytest.mark.parametrize(
    ("flag", "field", "unit"),
    [
        ("--window-hours", "window_hours", "h"),
        ("--batch-size", "batch_size", "recipients"),
        ("--concurrency", "concurrency", "messages in flight"),
        ("--max-error-ratio", "max_error_ratio", ""),
        ("--app", "app", ""),
        ("--kind", "kind", ""),
    ],
)
def test_campaign_run_shows_campaign_params_defaults(flag: str, field: str, unit: str) -> None:
    text = _help("campaign", "run")
    shown = model_default(CampaignParams, field, unit)
    assert f"[default: ({shown})]" in text
    default = str(CampaignParams.model_fields[field].default)
    assert default in shown.replace(",", "")  # the model's own value (2000 shows as 2,000)
    assert "block name ." not in text  # the old help lost its bracketed default


def test_the_receiver_limits_come_from_receiver_config() -> None:
    text = _help("receiver")
    fields = ReceiverConfig.model_fields
    assert f"[default: ({fields['max_header_bytes'].default:,} bytes)]" in text
    assert f"[default: ({fields['nonce_cache_entries'].default:,} entries)]" in text
    assert f"[default: ({fields['header_timeout_seconds'].default} s)]" in text
    assert "[16384]" not in text  # no hand-written copy left to drift


def test_setup_shows_the_account_limits_defaults_from_the_block() -> None:
    text = _help("setup")
    quota = model_default(WeChatApp, "daily_quota", "messages")
    assert quota == "100,000 messages"
    assert "--rate-per-second <float>" in text and "--daily-quota <int>" in text
    assert "[default: (the block's current value, else unlimited)]" in text
    assert f"[default: (the block's current value, else {quota})]" in text
    assert "0 = back to unlimited" in text


def test_simulator_help_looks_like_the_other_commands() -> None:
    text = _help("simulator")
    assert text.startswith("Usage: wxpush simulator [OPTIONS]")
    assert "╭─ Options" in text and "╭─ Faults" in text
    assert "--daily-quota <int>" in text and "[default: 100000]" in text
    assert "usage:" not in text  # not argparse's own layout
