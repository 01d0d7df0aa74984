"""`wxpush setup`: blocks, the token lock, idempotency, clear errors, no secrets printed."""

from __future__ import annotations

import socket
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr
from typer.testing import CliRunner

from cli.main import app as wxpush
from cli.setup import SetupError, asetup_app
from tasks.blocks import WeChatApp
from tasks.token import lock_name

SECRET = "setup-secret-7f3a-should-never-print"
runner = CliRunner()


def new_app() -> str:
    return f"setup-{uuid.uuid4().hex[:8]}"


def count_limits(name: str) -> int:
    with get_client(sync_client=True) as client:
        limits = client.read_global_concurrency_limits(limit=200)
    return sum(1 for limit in limits if limit.name == name)


def count_app_blocks(name: str) -> int:
    with get_client(sync_client=True) as client:
        docs = client.read_block_documents_by_type("wechat-app", include_secrets=False)
    return sum(1 for doc in docs if doc.name == name)


@pytest.mark.harness
def test_setup_twice_is_idempotent(prefect_harness: object) -> None:
    # Sync test: the command runs its own event loop (asyncio.run), as from a shell.
    name = new_app()
    env = {"WXPUSH_APP_ID": "wx00000000000000a1", "WXPUSH_APP_SECRET": SECRET}

    first = runner.invoke(wxpush, ["setup", "--app", name], env=env)
    assert first.exit_code == 0, first.output
    assert f"block wechat-app/{name}: created" in first.output
    assert f"concurrency limit {lock_name(name)} (limit 1): created" in first.output
    assert "Done." in first.output

    second = runner.invoke(wxpush, ["setup", "--app", name], env=env)
    assert second.exit_code == 0, second.output
    assert "Nothing to change: already set up." in second.output
    assert "created" not in second.output and "updated" not in second.output
    assert "block type wechat-app: unchanged" in second.output

    assert count_limits(lock_name(name)) == 1
    assert count_app_blocks(name) == 1
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(lock_name(name))
        for slug in ("wechat-app", "wechat-access-token"):
            assert client.read_block_type_by_slug(slug).slug == slug
    assert limit.limit == 1 and limit.active
    block = WeChatApp.load(name)
    assert block.app_id == "wx00000000000000a1" and block.app_secret.get_secret_value() == SECRET
    assert SECRET not in first.output + second.output


@pytest.mark.harness
async def test_changes_are_named_and_other_fields_kept(prefect_harness: object) -> None:
    name = new_app()
    await asetup_app(name, app_id="wx00000000000000a2", app_secret=SECRET, callback_token="cb-1")
    report = await asetup_app(name, token_mode="classic", app_secret="new-secret-value")
    assert report.app_block == "updated"
    assert report.changed_fields == ["app_secret", "token_mode"]
    assert report.limits == {lock_name(name): "unchanged"}
    text = "\n".join(report.lines())
    assert "new-secret-value" not in text and SECRET not in text
    block = await WeChatApp.aload(name)
    assert block.token_mode == "classic" and block.app_id == "wx00000000000000a2"
    assert block.callback_token is not None and block.callback_token.get_secret_value() == "cb-1"


@pytest.mark.harness
async def test_setup_restores_a_tampered_limit(prefect_harness: object) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    name = new_app()
    await asetup_app(name, app_id="wx00000000000000a3", app_secret=SECRET)
    async with get_client() as client:
        await client.update_global_concurrency_limit(
            lock_name(name), GlobalConcurrencyLimitUpdate(limit=5, active=False)
        )
    report = await asetup_app(name)
    assert report.limits == {lock_name(name): "updated"} and report.app_block == "unchanged"
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(lock_name(name))
    assert (limit.limit, limit.active) == (1, True)


@pytest.mark.harness
def test_new_app_without_credentials_is_a_clear_error(prefect_harness: object) -> None:
    name = new_app()
    result = runner.invoke(
        wxpush, ["setup", "--app", name, "--app-id", "wx00000000000000a4"], env={}
    )
    assert result.exit_code == 1
    assert f"wechat-app/{name} does not exist yet" in result.output
    assert "--app-secret" in result.output and "WXPUSH_APP_SECRET" in result.output


@pytest.mark.harness
async def test_invalid_value_is_reported_without_echoing_it(prefect_harness: object) -> None:
    with pytest.raises(SetupError, match="api_base_url") as info:
        await asetup_app(new_app(), app_id="x", app_secret=SECRET, api_base_url="ftp://nope")
    assert "ftp://nope" not in str(info.value) and SECRET not in str(info.value)
    with pytest.raises(SetupError, match="lowercase letters, digits and dashes"):
        await asetup_app("Shop_1", app_id="x", app_secret=SECRET)


def test_unreachable_prefect_api_is_a_clear_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        result = runner.invoke(
            wxpush, ["setup", "--app-id", "x"], env={"WXPUSH_APP_SECRET": SECRET}
        )
    assert result.exit_code == 1
    assert f"Cannot reach the Prefect API at {url}" in result.output
    assert "prefect server start" in result.output
    assert SECRET not in result.output


@pytest.mark.harness
@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--app-id", "wxapp"], "AppID 'wxapp' is not wx followed by 16 lowercase hex"),
        (["--encoding-aes-key", "k" * 42], "EncodingAESKey must be 43 characters, got 42"),
        (["--encoding-aes-key", "k" * 42 + "/"], "must contain only A-Z, a-z and 0-9"),
        (["--callback-token", " "], "the callback Token is empty"),
    ],
)
def test_setup_refuses_a_malformed_identifier_in_one_line(
    prefect_harness: object, flags: list[str], reason: str
) -> None:
    name = new_app()
    args = ["setup", "--app", name, "--app-id", "wx00000000000000a5", *flags]
    result = runner.invoke(wxpush, args, env={"WXPUSH_APP_SECRET": SECRET})
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wxpush setup: Invalid settings"), lines
    assert reason in lines[0] and "Traceback" not in result.output
    if flags[0] != "--app-id" and flags[1].strip():
        assert flags[1] not in lines[0]  # a secret is never echoed
    assert count_app_blocks(name) == 0


@pytest.mark.harness
async def test_a_block_saved_before_the_appid_rule_is_repaired_by_setup(
    prefect_harness: object,
) -> None:
    name = new_app()
    old = WeChatApp.model_construct(
        app_id="wx-old-form",
        app_secret=SecretStr(SECRET),
        api_base_url="https://api.weixin.qq.com",
        kind="official_account",
        token_mode="stable",
        callback_token=None,
        encoding_aes_key=None,
        previous_encoding_aes_key=None,
    )
    await old.asave(name)
    with pytest.raises(SetupError, match="AppID 'wx-old-form' is not wx followed by 16"):
        await asetup_app(name, token_mode="classic")
    report = await asetup_app(name, app_id="wx00000000000000a6")
    assert report.app_block == "updated" and report.changed_fields == ["app_id"]
    block = await WeChatApp.aload(name)
    assert block.app_id == "wx00000000000000a6" and block.app_secret.get_secret_value() == SECRET


# -- the account's limits ------------------------------------------------------------------


def _limits_line(output: str) -> str:
    return next(line.strip() for line in output.splitlines() if "account rate:" in line)


@pytest.mark.harness
def test_setup_sets_the_account_limits_and_a_rerun_keeps_them(prefect_harness: object) -> None:
    name = new_app()
    env = {"WXPUSH_APP_ID": "wx00000000000000a7", "WXPUSH_APP_SECRET": SECRET}
    first = runner.invoke(wxpush, ["setup", "--app", name], env=env)
    assert first.exit_code == 0, first.output
    assert _limits_line(first.output) == (
        "account rate: unlimited, daily quota: 100,000 template messages"
    )

    args = ["setup", "--app", name, "--rate-per-second", "50", "--daily-quota", "250000"]
    second = runner.invoke(wxpush, args, env=env)
    assert second.exit_code == 0, second.output
    assert f"block wechat-app/{name}: updated (rate_per_second, daily_quota)" in second.output
    assert _limits_line(second.output) == (
        "account rate: 50 messages/s, daily quota: 250,000 template messages"
    )

    # Neither flag given: the stored values stay, and setup says so.
    third = runner.invoke(wxpush, ["setup", "--app", name], env=env)
    assert third.exit_code == 0, third.output
    assert "Nothing to change: already set up." in third.output
    assert _limits_line(third.output) == _limits_line(second.output)
    block = WeChatApp.load(name)
    assert (block.rate_per_second, block.daily_quota) == (50, 250_000)
    assert SECRET not in first.output + second.output + third.output


@pytest.mark.harness
async def test_other_changes_keep_the_limits_and_zero_means_unlimited_again(
    prefect_harness: object,
) -> None:
    name = new_app()
    await asetup_app(
        name, app_id="wx00000000000000a8", app_secret=SECRET, rate_per_second=0.5, daily_quota=9
    )
    report = await asetup_app(name, token_mode="classic")
    assert report.changed_fields == ["token_mode"]
    assert (report.rate_per_second, report.daily_quota) == (0.5, 9)
    block = await WeChatApp.aload(name)
    assert (block.token_mode, block.rate_per_second, block.daily_quota) == ("classic", 0.5, 9)

    report = await asetup_app(name, rate_per_second=0)
    assert report.changed_fields == ["rate_per_second"]
    assert "    account rate: unlimited, daily quota: 9 template messages" in report.lines()
    block = await WeChatApp.aload(name)
    assert (block.rate_per_second, block.daily_quota) == (None, 9)


@pytest.mark.harness
@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--rate-per-second", "0.05"], "rate_per_second: Input should be greater than or equal"),
        (["--rate-per-second", "-2"], "rate_per_second: Input should be greater than or equal"),
        (["--rate-per-second", "inf"], "rate_per_second: Input should be a finite number"),
        (["--daily-quota", "0"], "daily_quota: Input should be greater than or equal to 1"),
    ],
)
def test_setup_refuses_a_bad_account_limit_in_one_line(
    prefect_harness: object, flags: list[str], reason: str
) -> None:
    name = new_app()
    args = ["setup", "--app", name, "--app-id", "wx00000000000000a9", *flags]
    result = runner.invoke(wxpush, args, env={"WXPUSH_APP_SECRET": SECRET})
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"wxpush setup: Invalid settings for wechat-app/{name}: ")
    assert reason in lines[0] and "Traceback" not in result.output
    assert SECRET not in result.output and count_app_blocks(name) == 0


def test_setup_refuses_a_limit_that_is_not_a_number_as_a_usage_error() -> None:
    result = runner.invoke(wxpush, ["setup", "--daily-quota", "lots"], env={})
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "Invalid value for '--daily-quota': Input should be a valid integer" in text
    assert "Traceback" not in result.output


@pytest.mark.harness
async def test_setup_saves_a_block_of_an_older_form_with_the_current_one(
    prefect_harness: object,
) -> None:
    from tests.test_blocks import save_older_form

    name = new_app()
    await save_older_form(name, app_id="wx00000000000000b1", app_secret=SECRET, kind="wecom")
    report = await asetup_app(name)
    assert (report.app_block, report.changed_fields, report.schema_upgraded) == (
        "updated",
        [],
        True,
    )
    assert "saved with the current form, so the UI shows every field" in "\n".join(report.lines())
    async with get_client() as client:
        stored = await client.read_block_document_by_name(name, "wechat-app")
    # The UI edits a document with the schema it points at: now the one with the limits.
    assert stored.block_schema is not None
    assert stored.block_schema.checksum == WeChatApp._calculate_schema_checksum()
    assert stored.data["daily_quota"] == 100_000 and stored.data["kind"] == "wecom"
    again = await asetup_app(name)
    assert again.app_block == "unchanged" and not again.schema_upgraded
