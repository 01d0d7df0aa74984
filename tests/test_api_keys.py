"""The push API's keys (tasks/api_keys.py, `wxpush api-key …`) on a real Prefect server:
create, list and revoke round trip; a third active key per caller is refused; a revoked key
is loaded flagged; the secret is shown once and never again (not by `list`, not in logs);
the CLI's failures are one line."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from api.signing import KEY_ID_HEADER, SIGNATURE_HEADER
from cli.main import app
from tasks.api_keys import (
    ACTIVE_KEYS_PER_CALLER,
    KEY_ID_PATTERN,
    ApiKeyError,
    StoredKey,
    WxpushApiKey,
    create_key,
    list_keys,
    load_keys,
    revoke_key,
)

pytestmark = pytest.mark.harness
runner = CliRunner()


def _caller() -> str:
    """A caller of this test only: the session's server is shared."""
    return f"caller-{uuid.uuid4().hex[:8]}"


def _cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), terminal_width=200)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def _one_line(*args: str) -> str:
    output = _cli(*args, code=1)
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def logs(all_logs: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    all_logs.set_level(logging.DEBUG)
    return all_logs


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        for record in caplog.records
    )


def test_create_list_revoke_round_trip(
    prefect_harness: Any, logs: pytest.LogCaptureFixture
) -> None:
    caller = _caller()
    key, created_at = asyncio.run(create_key(caller))
    secret = key.secret.get_secret_value()
    assert KEY_ID_PATTERN.fullmatch(key.key_id) and key.caller == caller and not key.revoked
    assert len(secret) >= 43 and secret not in repr(key)

    listed = {info.key_id: info for info in asyncio.run(list_keys())}
    info = listed[key.key_id]
    assert (info.caller, info.created_at, info.revoked_at) == (caller, created_at, None)
    assert not hasattr(info, "secret")

    loaded = asyncio.run(load_keys())
    assert loaded[key.key_id] == StoredKey(key.key_id, caller, loaded[key.key_id].secret)
    assert loaded[key.key_id].secret.get_secret_value() == secret
    assert not loaded[key.key_id].revoked

    revoked = asyncio.run(revoke_key(key.key_id))
    assert revoked.revoked and revoked.revoked_at is not None
    assert revoked.revoked_at >= created_at
    again = asyncio.run(revoke_key(key.key_id))
    assert again.revoked_at == revoked.revoked_at, "a second revoke changes nothing"

    reloaded = asyncio.run(load_keys())[key.key_id]
    assert reloaded.revoked, "load_keys flags the revoked key (the API refuses it by name)"
    assert reloaded.secret.get_secret_value() == secret, "revoking kept the key's secret"
    assert {i.key_id: i for i in asyncio.run(list_keys())}[key.key_id].revoked

    assert secret not in _logged(logs)


def test_the_block_stores_the_secret_as_a_secret(prefect_harness: Any) -> None:
    from prefect.client.orchestration import get_client

    key, _ = asyncio.run(create_key(_caller()))

    async def masked() -> dict[str, Any]:
        async with get_client() as client:
            document = await client.read_block_document_by_name(
                f"api-key-{key.key_id}", WxpushApiKey.get_block_type_slug(), include_secrets=False
            )
            return dict(document.data)

    data = asyncio.run(masked())
    assert data["key_id"] == key.key_id
    assert key.secret.get_secret_value() not in str(data)


def test_a_third_active_key_is_refused_until_one_is_revoked(prefect_harness: Any) -> None:
    caller = _caller()
    first, _ = asyncio.run(create_key(caller))
    second, _ = asyncio.run(create_key(caller))
    assert ACTIVE_KEYS_PER_CALLER == 2 and first.key_id != second.key_id
    with pytest.raises(ApiKeyError, match=f"{caller} already has 2 active keys") as caught:
        asyncio.run(create_key(caller))
    message = str(caught.value)
    assert first.key_id in message and second.key_id in message and "\n" not in message
    for key in (first, second):
        assert key.secret.get_secret_value() not in message

    other, _ = asyncio.run(create_key(_caller()))  # another caller is not limited by these
    assert other.key_id not in (first.key_id, second.key_id)

    line = _one_line("api-key", "create", "--name", caller)
    assert line.startswith(f"wxpush api-key create: {caller} already has 2 active keys")

    asyncio.run(revoke_key(first.key_id))
    third, _ = asyncio.run(create_key(caller))
    active = [k for k in asyncio.run(load_keys()).values() if k.caller == caller and not k.revoked]
    assert {k.key_id for k in active} == {second.key_id, third.key_id}


@pytest.mark.parametrize("name", ["Orders", "-orders", "", "a b", "x" * 64, "orders\nx"])
def test_a_bad_caller_name_is_refused_before_the_server_is_asked(name: str) -> None:
    with pytest.raises(ApiKeyError, match="is not a caller name"):
        asyncio.run(create_key(name))


def test_the_cli_prints_the_secret_once_and_list_never(
    prefect_harness: Any, logs: pytest.LogCaptureFixture
) -> None:
    caller = _caller()
    created = _cli("api-key", "create", "--name", caller)
    key_id = re.search(r"key id: (\S+)", created)
    secret = re.search(r"secret: (\S+)", created)
    assert key_id and secret, created
    key_id_text, secret_text = key_id.group(1), secret.group(1)
    assert KEY_ID_PATTERN.fullmatch(key_id_text)
    assert "will not be shown again" in created
    assert KEY_ID_HEADER in created and SIGNATURE_HEADER in created, "how to use them"
    assert asyncio.run(load_keys())[key_id_text].secret.get_secret_value() == secret_text

    listed = _cli("api-key", "list")
    assert listed.splitlines()[0].split() == ["id", "caller", "created", "revoked"]
    row = next(line for line in listed.splitlines() if key_id_text in line)
    assert caller in row and row.rstrip().endswith("-")
    assert secret_text not in listed

    revoked = _cli("api-key", "revoke", key_id_text)
    assert f"API key {key_id_text} of caller {caller} is revoked" in revoked
    row = next(line for line in _cli("api-key", "list").splitlines() if key_id_text in line)
    assert row.rstrip().endswith("UTC"), "the revoked column has the time"

    assert secret_text not in _logged(logs)
    assert secret_text not in revoked


@pytest.mark.parametrize("key_id", ["wxk00000000000000000000", "not-a-key-id"])
def test_revoking_an_unknown_id_is_one_line(prefect_harness: Any, key_id: str) -> None:
    line = _one_line("api-key", "revoke", key_id)
    assert line == (
        f"wxpush api-key revoke: there is no API key '{key_id}': `wxpush api-key list` shows them"
    )


def test_a_bad_name_is_one_line() -> None:
    line = _one_line("api-key", "create", "--name", "Orders Team")
    assert line.startswith("wxpush api-key create: 'Orders Team' is not a caller name")


@pytest.mark.parametrize(
    "args", [("list",), ("create", "--name", "orders"), ("revoke", "wxk00000000000000000000")]
)
def test_an_unreachable_prefect_api_is_one_line(args: tuple[str, ...]) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from processes import pick_port

    api = f"http://127.0.0.1:{pick_port(0)}/api"
    with temporary_settings(updates={PREFECT_API_URL: api}):
        line = _one_line("api-key", *args)
    assert f"cannot reach the Prefect API at {api}" in line
    assert line.startswith(f"wxpush api-key {args[0]}: ")


def test_a_loaded_key_verifies_a_request_and_a_revoked_one_is_refused(
    prefect_harness: Any,
) -> None:
    """What the API does with load_keys' answer: api.signing.verify takes the stored keys."""
    from api import signing

    key, _ = asyncio.run(create_key(_caller()))
    secret = key.secret.get_secret_value()
    headers = signing.signed_headers(key.key_id, secret, "POST", "/v1/messages", b"{}")
    keys = asyncio.run(load_keys())
    assert signing.verify(headers, "POST", "/v1/messages", b"{}", keys.get) == key
    asyncio.run(revoke_key(key.key_id))
    with pytest.raises(signing.Refusal) as caught:
        signing.verify(headers, "POST", "/v1/messages", b"{}", asyncio.run(load_keys()).get)
    assert caught.value.reason == "revoked-key" and secret not in str(caught.value)
