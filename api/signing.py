"""The request-signing scheme of the push API (docs/api.md, "Signing a request").

Every /v1 request carries a key id, a unix timestamp, a nonce and an HMAC-SHA256 over
`METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nsha256(body)`. This module computes and checks that,
and nothing else: no I/O, no database, standard library and pydantic's SecretStr only, so
clients, tests and benches can sign with exactly the code the server verifies with. A
replayed nonce (409) needs the database and is decided by the service (`nonce_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pydantic import SecretStr

__all__ = [
    "KEY_ID_HEADER",
    "NONCE_HEADER",
    "NONCE_PATTERN",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WINDOW_SECONDS",
    "ApiKey",
    "Refusal",
    "SigningKey",
    "canonical",
    "nonce_key",
    "sign",
    "signed_headers",
    "verify",
]

KEY_ID_HEADER = "X-Wxpush-Key-Id"
TIMESTAMP_HEADER = "X-Wxpush-Timestamp"
NONCE_HEADER = "X-Wxpush-Nonce"
SIGNATURE_HEADER = "X-Wxpush-Signature"
HEADERS = (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
#: A request whose timestamp is further than this from the server's clock is refused (401).
WINDOW_SECONDS = 300
#: 8–64 characters of A–Z a–z 0–9 _ - (fullmatch).
NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
#: Unix seconds, digits only (no sign, no fraction, no spaces).
_TIMESTAMP_PATTERN = re.compile(r"[0-9]{1,12}")
#: The only form of a signature: 64 lowercase hex digits.
_SIGNATURE_PATTERN = re.compile(r"[0-9a-f]{64}")
#: What a refusal may quote of a key id the client sent (it is not a secret, but it is input).
_SHOWN_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")

#: Each refusal's stable code, its status and the line that explains it.
REASONS: dict[str, tuple[int, str]] = {
    "missing-header": (401, "a signing header is missing"),
    "bad-timestamp": (401, f"{TIMESTAMP_HEADER} must be unix seconds (digits only)"),
    "stale-timestamp": (
        401,
        f"{TIMESTAMP_HEADER} is more than {WINDOW_SECONDS} s away from the server's clock "
        "(check the client's clock)",
    ),
    "bad-nonce": (401, f"{NONCE_HEADER} must be 8-64 characters of A-Z a-z 0-9 _ -"),
    "unknown-key": (401, "no API key has this id"),
    "revoked-key": (401, "this API key was revoked"),
    "bad-signature": (
        401,
        f"{SIGNATURE_HEADER} is not the lowercase hex HMAC-SHA256 of the request's canonical "
        "string (docs/api.md)",
    ),
    "replayed-nonce": (409, "this key id and nonce were already used within the window"),
}


class SigningKey(Protocol):
    """What `verify` needs of a key: `ApiKey` here, or the stored record of tasks/api_keys.py
    (which may not import this package: tasks/ is below api/ in docs/architecture.md)."""

    @property
    def key_id(self) -> str: ...
    @property
    def caller(self) -> str: ...
    @property
    def secret(self) -> SecretStr: ...
    @property
    def revoked(self) -> bool: ...


K = TypeVar("K", bound=SigningKey)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What the server knows of one API key."""

    key_id: str
    caller: str  # the --name given at creation; idempotency keys are per caller
    secret: SecretStr
    revoked: bool = False


class Refusal(Exception):
    """A request the API refuses: `status` 401 or 409, `reason` a stable code (REASONS).
    Its text is one line and never holds a secret, a signature or a header's raw value."""

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        expected, default = REASONS[reason]
        if status != expected:
            raise ValueError(f"a {reason} refusal is {expected}, not {status}")
        self.status = status
        self.reason = reason
        self.detail = " ".join((detail or default).split())
        super().__init__(self.detail)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.detail}"


def _sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    """The string that is signed. METHOD in upper case; PATH the path and query exactly as
    sent (raw, not decoded); the body's lowercase hex SHA-256 (of b"" for a GET)."""
    return "\n".join((method.upper(), path, timestamp, nonce, _sha256_hex(body)))


def sign(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of the canonical string under `secret`."""
    message = canonical(method, path, timestamp, nonce, body).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    key_id: str,
    secret: str,
    method: str,
    path: str,
    body: bytes,
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers of a signed request (a fresh random nonce unless one is given)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(18) if nonce is None else nonce
    return {
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(secret, method, path, timestamp, nonce, body),
    }


def _lookup(headers: Mapping[str, str]) -> dict[str, str]:
    """The signing headers by their lower-case names (header names are case-insensitive;
    a plain dict must work as well as Starlette's Headers)."""
    wanted = {name.lower() for name in HEADERS}
    return {name.lower(): value for name, value in headers.items() if name.lower() in wanted}


def verify(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    keys: Callable[[str], K | None],
    now: float | None = None,
) -> K:
    """The key that signed this request, or Refusal(401). Checks, in order: the four
    headers, the timestamp's window, the nonce's form, the key (known, not revoked), then
    the signature, compared in constant time. The body is only hashed, never parsed."""
    found = _lookup(headers)
    missing = [name for name in HEADERS if not found.get(name.lower())]
    if missing:
        raise Refusal(401, "missing-header", f"missing header {', '.join(missing)}")
    key_id = found[KEY_ID_HEADER.lower()]
    timestamp = found[TIMESTAMP_HEADER.lower()]
    nonce = found[NONCE_HEADER.lower()]
    given = found[SIGNATURE_HEADER.lower()]

    if not _TIMESTAMP_PATTERN.fullmatch(timestamp):
        raise Refusal(401, "bad-timestamp")
    clock = time.time() if now is None else now
    if abs(clock - int(timestamp)) > WINDOW_SECONDS:
        raise Refusal(401, "stale-timestamp")
    if not NONCE_PATTERN.fullmatch(nonce):
        raise Refusal(401, "bad-nonce")

    key = keys(key_id)
    if key is None:
        shown = key_id if _SHOWN_KEY_ID.fullmatch(key_id) else "given"
        raise Refusal(401, "unknown-key", f"no API key has the id {shown}")
    if key.revoked:
        raise Refusal(401, "revoked-key", f"the API key {key.key_id} was revoked")

    expected = sign(key.secret.get_secret_value(), method, path, timestamp, nonce, body)
    # The form first (so compare_digest gets ASCII of equal length), then constant time.
    if not _SIGNATURE_PATTERN.fullmatch(given) or not hmac.compare_digest(expected, given):
        raise Refusal(401, "bad-signature")
    return key


def nonce_key(key_id: str, nonce: str) -> str:
    """The replay key of (key id, nonce) in `callback_nonces`, the receivers' replay table:
    claimed in the transaction that stores the request, so a replay gets 409."""
    from db.nonces import replay_key  # lazily: signing itself stays free of the database

    return replay_key(f"api:{key_id}", "", nonce)
