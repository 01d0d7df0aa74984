"""The push API's request signing (api/signing.py): the worked example of docs/api.md is a
known-answer test, and every refusal has its reason and status and never quotes a secret.

Fast: pure functions, no server, no process."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from api import signing
from api.signing import (
    KEY_ID_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WINDOW_SECONDS,
    ApiKey,
    Refusal,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)

KEY_ID = "wxk00112233445566778899"
SECRET = "s3cret-for-the-signing-tests_0123456789abcdef"
OTHER_SECRET = "an-other-secret-for-the-signing-tests_987654"
NOW = 1_800_000_000.0
METHOD = "POST"
PATH = "/v1/messages?wait=5"
BODY = b'{"app":"default","kind":"template","openid":"o1","template_id":"t","data":{}}'
NONCE = "nonce-0001_abc"


def _example() -> dict[str, object]:
    """The worked example's blocks: inputs, body, canonical string, signing headers."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## A worked example", 1)[1]
    blocks = FENCE.findall(section)
    assert [kind for kind, _ in blocks[:4]] == ["text", "json", "text", "text"], blocks
    (_, inputs), (_, body), (_, canonical), (_, headers) = blocks[:4]

    def pairs(block: str) -> dict[str, str]:
        return dict(
            (name.strip(), value.strip())
            for name, value in (line.split(":", 1) for line in block.splitlines())
        )

    return {
        "inputs": pairs(inputs),
        "body": body.removesuffix("\n").encode(),
        "canonical": canonical.removesuffix("\n"),
        "headers": pairs(headers),
    }


def test_the_worked_example_in_docs_api_md_is_reproduced() -> None:
    example = _example()
    inputs, headers = example["inputs"], example["headers"]
    assert isinstance(inputs, dict) and isinstance(headers, dict)
    body = example["body"]
    assert isinstance(body, bytes) and body.startswith(b"{") and not body.endswith(b"\n")
    args = (inputs["method"], inputs["path"], inputs["timestamp"], inputs["nonce"], body)

    canonical = signing.canonical(*args)
    assert canonical == example["canonical"]
    assert canonical.splitlines()[-1] == hashlib.sha256(body).hexdigest()
    signature = signing.sign(inputs["secret"], *args)
    assert signature == headers[SIGNATURE_HEADER]
    # Independently of api.signing: the scheme as the doc states it.
    plain = hmac.new(inputs["secret"].encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert plain == signature

    assert headers == signing.signed_headers(
        inputs["key id"],
        inputs["secret"],
        inputs["method"],
        inputs["path"],
        body,
        now=float(inputs["timestamp"]),
        nonce=inputs["nonce"],
    )
    key = ApiKey(inputs["key id"], "docs", SecretStr(inputs["secret"]))
    found = signing.verify(
        headers,
        inputs["method"],
        inputs["path"],
        body,
        {key.key_id: key}.get,
        now=float(inputs["timestamp"]) + 1,
    )
    assert found is key


# -- verify -----------------------------------------------------------------------------------


def _keys(*keys: ApiKey) -> Callable[[str], ApiKey | None]:
    return {key.key_id: key for key in keys}.get


ACTIVE = ApiKey(KEY_ID, "orders", SecretStr(SECRET))
REVOKED = ApiKey("wxkffeeddccbbaa99887766", "orders", SecretStr(OTHER_SECRET), revoked=True)


def _headers(
    secret: str = SECRET, key_id: str = KEY_ID, at: float = NOW, nonce: str = NONCE, **kw: str
) -> dict[str, str]:
    headers = signing.signed_headers(key_id, secret, METHOD, PATH, BODY, now=at, nonce=nonce)
    headers.update(kw)
    return headers


def _refusal(
    headers: dict[str, str],
    *,
    method: str = METHOD,
    path: str = PATH,
    body: bytes = BODY,
    now: float = NOW,
) -> Refusal:
    with pytest.raises(Refusal) as caught:
        signing.verify(headers, method, path, body, _keys(ACTIVE, REVOKED), now=now)
    refusal = caught.value
    text = str(refusal)
    assert "\n" not in text and text.startswith(f"{refusal.status} {refusal.reason}: ")
    for secret in (SECRET, OTHER_SECRET):
        assert secret not in text and secret not in repr(refusal)
    expected = signing.sign(SECRET, method, path, headers.get(TIMESTAMP_HEADER, ""), NONCE, body)
    assert expected not in text, "a refusal never tells the expected signature"
    return refusal


def test_a_correctly_signed_request_gives_its_key() -> None:
    assert signing.verify(_headers(), METHOD, PATH, BODY, _keys(ACTIVE), now=NOW) is ACTIVE


def test_header_names_are_case_insensitive() -> None:
    lower = {name.lower(): value for name, value in _headers().items()}
    upper = {name.upper(): value for name, value in _headers().items()}
    for headers in (lower, upper):
        assert signing.verify(headers, METHOD, PATH, BODY, _keys(ACTIVE), now=NOW) is ACTIVE


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": BODY.replace(b'"o1"', b'"o2"')}, "tampered body"),
        ({"body": BODY + b" "}, "one byte more"),
        ({"path": "/v1/messages?wait=30"}, "tampered query"),
        ({"path": "/v1/messages/batch?wait=5"}, "tampered path"),
        ({"method": "PUT"}, "another method"),
    ],
)
def test_a_tampered_request_is_a_bad_signature(change: dict[str, object], reason: str) -> None:
    refusal = _refusal(_headers(), **change)  # type: ignore[arg-type]
    assert (refusal.status, refusal.reason) == (401, "bad-signature"), reason


def test_a_signature_made_with_another_secret_is_a_bad_signature() -> None:
    refusal = _refusal(_headers(secret=OTHER_SECRET))
    assert (refusal.status, refusal.reason) == (401, "bad-signature")


def test_a_changed_timestamp_or_nonce_is_a_bad_signature() -> None:
    signed = _headers()
    moved = _refusal({**signed, TIMESTAMP_HEADER: str(int(NOW) + 1)})
    renonced = _refusal({**signed, NONCE_HEADER: "nonce-0002_abc"})
    assert moved.reason == renonced.reason == "bad-signature"


def test_an_upper_case_signature_is_refused() -> None:
    headers = _headers()
    assert signing.verify(headers, METHOD, PATH, BODY, _keys(ACTIVE), now=NOW) is ACTIVE
    upper = {**headers, SIGNATURE_HEADER: headers[SIGNATURE_HEADER].upper()}
    assert upper[SIGNATURE_HEADER] != headers[SIGNATURE_HEADER]
    assert _refusal(upper).reason == "bad-signature"


@pytest.mark.parametrize("given", ["", "abc", "z" * 64, "0" * 63, "0" * 65, "é" * 64])
def test_a_malformed_signature_is_refused_without_an_error(given: str) -> None:
    refusal = _refusal({**_headers(), SIGNATURE_HEADER: given})
    assert refusal.reason == ("missing-header" if given == "" else "bad-signature")


def test_an_unknown_key_id() -> None:
    refusal = _refusal(_headers(key_id="wxk99999999999999999999"))
    assert (refusal.status, refusal.reason) == (401, "unknown-key")
    assert "wxk99999999999999999999" in str(refusal), "names the id it does not know"


def test_an_unknown_key_id_that_is_not_an_id_is_not_quoted() -> None:
    refusal = _refusal(_headers(key_id="x" * 200))
    assert refusal.reason == "unknown-key" and "x" * 41 not in str(refusal)


def test_a_revoked_key_even_with_a_correct_signature() -> None:
    refusal = _refusal(_headers(secret=OTHER_SECRET, key_id=REVOKED.key_id))
    assert (refusal.status, refusal.reason) == (401, "revoked-key")


@pytest.mark.parametrize("skew", [WINDOW_SECONDS + 1, -(WINDOW_SECONDS + 1), 3600, -86400])
def test_a_timestamp_outside_the_window_is_stale(skew: int) -> None:
    refusal = _refusal(_headers(at=NOW + skew))
    assert (refusal.status, refusal.reason) == (401, "stale-timestamp")


@pytest.mark.parametrize("skew", [WINDOW_SECONDS, -WINDOW_SECONDS, 0])
def test_a_timestamp_at_the_window_s_edge_is_accepted(skew: int) -> None:
    headers = _headers(at=NOW + skew)
    assert signing.verify(headers, METHOD, PATH, BODY, _keys(ACTIVE), now=NOW) is ACTIVE


def test_the_window_is_300_seconds() -> None:
    assert WINDOW_SECONDS == 300


@pytest.mark.parametrize("timestamp", ["1800000000.5", "-1800000000", " 1800000000", "1e9", "x"])
def test_a_timestamp_that_is_not_unix_seconds(timestamp: str) -> None:
    refusal = _refusal(_headers(**{TIMESTAMP_HEADER: timestamp}))
    assert (refusal.status, refusal.reason) == (401, "bad-timestamp")


@pytest.mark.parametrize(
    ("nonce", "reason"),
    [
        ("n" * 65, "too long (65)"),
        ("n" * 7, "too short (7)"),
        ("nonce with space", "a space"),
        ("nonce.0001", "a dot"),
        ("nonce+0001/ab=", "base64's + / ="),
        ("nöncé-0001", "not ASCII"),
    ],
)
def test_a_malformed_nonce(nonce: str, reason: str) -> None:
    refusal = _refusal(_headers(nonce=nonce))
    assert (refusal.status, refusal.reason) == (401, "bad-nonce"), reason


@pytest.mark.parametrize("nonce", ["n" * 8, "n" * 64, "Az09_-Az09_-"])
def test_a_nonce_of_8_to_64_allowed_characters_is_accepted(nonce: str) -> None:
    headers = _headers(nonce=nonce)
    assert signing.verify(headers, METHOD, PATH, BODY, _keys(ACTIVE), now=NOW) is ACTIVE


@pytest.mark.parametrize(
    "missing", [KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER]
)
def test_a_missing_header_is_named(missing: str) -> None:
    headers = _headers()
    del headers[missing]
    refusal = _refusal(headers)
    assert (refusal.status, refusal.reason) == (401, "missing-header")
    assert missing in str(refusal)


def test_no_headers_at_all() -> None:
    refusal = _refusal({})
    assert refusal.reason == "missing-header"
    assert all(name in str(refusal) for name in signing.HEADERS)


def test_the_checks_come_in_the_documented_order() -> None:
    """A stale timestamp is told before an unknown key, an unknown key before a bad
    signature: a request is refused for its first failing check."""
    stale_unknown = _headers(key_id="wxk99999999999999999999", at=NOW + 999)
    assert _refusal(stale_unknown).reason == "stale-timestamp"
    bad_nonce_unknown = _headers(key_id="wxk99999999999999999999", nonce="short")
    assert _refusal(bad_nonce_unknown).reason == "bad-nonce"
    unknown_badly_signed = _headers(key_id="wxk99999999999999999999", secret=OTHER_SECRET)
    assert _refusal(unknown_badly_signed).reason == "unknown-key"


def test_a_get_signs_the_empty_body() -> None:
    headers = signing.signed_headers(KEY_ID, SECRET, "GET", "/v1/messages/msg_1", b"", now=NOW)
    canonical = signing.canonical(
        "GET", "/v1/messages/msg_1", headers[TIMESTAMP_HEADER], headers[NONCE_HEADER], b""
    )
    assert canonical.endswith("\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert signing.verify(headers, "GET", "/v1/messages/msg_1", b"", _keys(ACTIVE), now=NOW)


def test_the_default_nonce_is_fresh_and_well_formed() -> None:
    nonces = {
        signing.signed_headers(KEY_ID, SECRET, METHOD, PATH, BODY)[NONCE_HEADER] for _ in "ab"
    }
    assert len(nonces) == 2
    assert all(signing.NONCE_PATTERN.fullmatch(nonce) for nonce in nonces)


# -- the refusal itself -----------------------------------------------------------------------


def test_every_reason_has_its_status() -> None:
    for reason, (status, _) in signing.REASONS.items():
        refusal = Refusal(status, reason)
        assert (refusal.status, refusal.reason) == (status, reason)
        assert "\n" not in str(refusal)
    assert Refusal(409, "replayed-nonce").status == 409
    with pytest.raises(ValueError, match="replayed-nonce refusal is 409"):
        Refusal(401, "replayed-nonce")


def test_a_refusal_s_detail_is_folded_onto_one_line() -> None:
    assert str(Refusal(401, "bad-nonce", "two\nlines")) == "401 bad-nonce: two lines"


def test_an_api_key_never_shows_its_secret() -> None:
    assert SECRET not in repr(ACTIVE) and SECRET not in str(ACTIVE)


def test_the_nonce_key_is_per_key_id_and_nonce() -> None:
    one = signing.nonce_key(KEY_ID, NONCE)
    assert one == signing.nonce_key(KEY_ID, NONCE)
    assert len(one) == 64 and re.fullmatch(r"[0-9a-f]{64}", one)
    assert one != signing.nonce_key(REVOKED.key_id, NONCE)
    assert one != signing.nonce_key(KEY_ID, "nonce-0002_abc")
