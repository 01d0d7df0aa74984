"""The push API's keys (docs/api.md): one Prefect Block document per key, `WxpushApiKey`.

A key is an id (`wxk` + 20 hex digits, shown in requests and logs) and a secret (shown once,
at creation; stored as a SecretStr like the other secrets, never logged). It belongs to a
caller, the `--name` it was created with: idempotency keys are per caller, and a caller
may have two active keys at once so it can rotate one without downtime. A revoked key is
kept (flagged), so the API refuses it by name instead of not knowing it.

The API service calls `load_keys` at start and every `KEY_RELOAD_SECONDS`.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from pydantic import ConfigDict, Field, SecretStr, field_validator

__all__ = [
    "ACTIVE_KEYS_PER_CALLER",
    "KEY_RELOAD_SECONDS",
    "ApiKeyError",
    "KeyInfo",
    "StoredKey",
    "WxpushApiKey",
    "create_key",
    "list_keys",
    "load_keys",
    "revoke_key",
]

logger = logging.getLogger(__name__)

#: Active keys one caller may hold: the current one and its replacement, for rotation.
ACTIVE_KEYS_PER_CALLER = 2
#: How often the API service reads the keys again: a revoke takes effect within this.
KEY_RELOAD_SECONDS = 2
#: A caller's name: lower-case letters, digits, `_` and `-`, up to 63 characters.
CALLER_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
#: A key id: `wxk` + 20 lower-case hex digits (a valid block name and header value).
KEY_ID_PATTERN = re.compile(r"wxk[0-9a-f]{20}")
_DOCUMENT_PREFIX = "api-key-"


class ApiKeyError(Exception):
    """A key operation refused for a reason the operator can fix; one line, no secret."""


class WxpushApiKey(Block):
    """One key of the push API: which caller it belongs to and the secret it signs with."""

    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name: ClassVar[str] = "wxpush API key"
    _block_type_slug: ClassVar[str] = "wxpush-api-key"
    _description: ClassVar[str] = (
        "A key of the wxpush push API (docs/api.md). Made by `wxpush api-key create`, "
        "revoked by `wxpush api-key revoke`; there is no need to edit it by hand."
    )

    key_id: str = Field(title="Key id", description="Sent as X-Wxpush-Key-Id.")
    caller: str = Field(title="Caller", description="The system this key belongs to.")
    secret: SecretStr = Field(
        title="Secret", description="Signs the requests. Never shown again, never logged."
    )
    created_at: datetime = Field(title="Created at (UTC)")
    revoked_at: datetime | None = Field(
        default=None, title="Revoked at (UTC)", description="Empty while the key is active."
    )

    @field_validator("created_at", "revoked_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown of a key: everything but its secret."""

    key_id: str
    caller: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the API verifies with it (api.signing's `SigningKey`: the same fields as
    `api.signing.ApiKey`, defined here because tasks/ may not import api/)."""

    key_id: str
    caller: str
    secret: SecretStr
    revoked: bool = False


def _document_name(key_id: str) -> str:
    return f"{_DOCUMENT_PREFIX}{key_id}"


def _info(block: WxpushApiKey) -> KeyInfo:
    return KeyInfo(block.key_id, block.caller, block.created_at, block.revoked_at)


async def _all(client: PrefectClient, *, include_secrets: bool) -> list[WxpushApiKey]:
    """Every key document (none yet: the block type is not even registered)."""
    try:
        documents = await client.read_block_documents_by_type(
            WxpushApiKey.get_block_type_slug(), include_secrets=include_secrets
        )
    except PrefectHTTPStatusError as exc:  # this call does not turn a 404 into ObjectNotFound
        if exc.response.status_code == 404:
            return []
        raise
    keys = [
        WxpushApiKey.model_validate(document.data)
        for document in documents
        if document.name and document.name.startswith(_DOCUMENT_PREFIX)
    ]
    return sorted(keys, key=lambda key: (key.created_at, key.key_id))


async def create_key(
    caller: str, client: PrefectClient | None = None
) -> tuple[StoredKey, datetime]:
    """A new key for `caller`, saved; the only moment its secret is handed out.
    Refused: a malformed caller name, or a caller that already has two active keys."""
    if not CALLER_PATTERN.fullmatch(caller):
        raise ApiKeyError(
            f"{caller!r} is not a caller name: use 1-63 lower-case letters, digits, _ and -, "
            "starting with a letter or digit (e.g. orders)"
        )
    if client is None:
        async with get_client() as own:
            return await create_key(caller, own)
    active = [
        key
        for key in await _all(client, include_secrets=False)
        if key.caller == caller and key.revoked_at is None
    ]
    if len(active) >= ACTIVE_KEYS_PER_CALLER:
        ids = ", ".join(key.key_id for key in active)
        raise ApiKeyError(
            f"{caller} already has {len(active)} active keys ({ids}): revoke one first "
            "(`wxpush api-key revoke <id>`)"
        )
    key_id = f"wxk{secrets.token_hex(10)}"
    created_at = datetime.now(UTC).replace(microsecond=0)
    block = WxpushApiKey(
        key_id=key_id,
        caller=caller,
        secret=SecretStr(secrets.token_urlsafe(32)),
        created_at=created_at,
    )
    await block.asave(_document_name(key_id), client=client)
    logger.info("created API key %s for caller %s", key_id, caller)
    return StoredKey(key_id=key_id, caller=caller, secret=block.secret), created_at


async def list_keys(client: PrefectClient | None = None) -> list[KeyInfo]:
    """Every key, oldest first, revoked ones included; never a secret."""
    if client is None:
        async with get_client() as own:
            return await list_keys(own)
    return [_info(key) for key in await _all(client, include_secrets=False)]


async def revoke_key(key_id: str, client: PrefectClient | None = None) -> KeyInfo:
    """Revoke a key (the API refuses it within KEY_RELOAD_SECONDS); a second revoke changes
    nothing. ApiKeyError if there is no such key."""
    if client is None:
        async with get_client() as own:
            return await revoke_key(key_id, own)
    unknown = ApiKeyError(f"there is no API key {key_id!r}: `wxpush api-key list` shows them")
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise unknown
    try:
        block = await WxpushApiKey.aload(_document_name(key_id), client=client)
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            raise unknown from None
        raise
    if block.revoked_at is None:
        block.revoked_at = datetime.now(UTC).replace(microsecond=0)
        await block.asave(_document_name(key_id), overwrite=True, client=client)
        logger.info("revoked API key %s of caller %s", key_id, block.caller)
    return _info(block)


async def load_keys(client: PrefectClient | None = None) -> dict[str, StoredKey]:
    """Every key by id, with its secret, revoked ones flagged: what the API verifies with."""
    if client is None:
        async with get_client() as own:
            return await load_keys(own)
    return {
        key.key_id: StoredKey(
            key_id=key.key_id,
            caller=key.caller,
            secret=key.secret,
            revoked=key.revoked_at is not None,
        )
        for key in await _all(client, include_secrets=True)
    }
