"""Callback crypto: WeChat's SHA-1 signatures and safe-mode AES (docs/wechat-protocol.md).

One implementation serves the receiver (verify + decrypt pushes, encrypt replies), the
simulator and the bench (sign + encrypt pushes exactly as WeChat does). The exceptions
say which check failed so the receiver can map them to HTTP statuses; no message ever
contains the token, the EncodingAESKey or decrypted content.

    CallbackError                   anything a callback check refuses (http_status says how)
     ├── SignatureError             signature / msg_signature mismatch        (403)
     ├── DecryptError               bad base64, bad padding, bad length, key  (400)
     ├── AppIdMismatch              decrypts fine but is for another AppID    (403)
     └── CallbackXMLError           the body is not a flat, safe <xml> doc    (400)
          ├── XMLTooLargeError      over the size limit                       (413)
          ├── XMLForbiddenError     DTD, entity declaration, external reference
          ├── XMLSyntaxError        not well-formed XML
          ├── XMLShapeError         root is not <xml>, nested/duplicate elements
          └── CallbackFieldError    a required field is missing or not a number
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from xml.sax.saxutils import escape

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wechat.identifiers import encoding_aes_key_problem

#: PKCS#7 block size WeChat uses (32, not AES's 16: wechatpy and WxJava agree).
PAD_BLOCK = 32


class CallbackError(Exception):
    """Base of every refusal of a callback; `reason` is a short code, `http_status` a hint."""

    http_status: int = 400
    reason: str = "callback"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class SignatureError(CallbackError):
    """The signature does not match: not from WeChat, or the token is wrong."""

    http_status = 403
    reason = "signature"


class DecryptError(CallbackError):
    """The ciphertext cannot be decrypted: bad base64, bad padding, bad length or wrong key."""

    reason = "decrypt"


class AppIdMismatch(CallbackError):
    """Decrypted cleanly, but the trailing AppID/CorpID is not ours: meant for another app."""

    http_status = 403
    reason = "app_id"

    def __init__(self, message: str, *, expected: str, received: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.received = received


class CallbackXMLError(CallbackError):
    """The body is not a flat, safe `<xml>` document of simple elements."""

    reason = "xml"


class XMLTooLargeError(CallbackXMLError):
    """Larger than any real WeChat push: refused before parsing."""

    http_status = 413
    reason = "too_large"


class XMLForbiddenError(CallbackXMLError):
    """DTD, entity declaration or external reference: the XXE / billion-laughs family."""

    reason = "forbidden"


class XMLSyntaxError(CallbackXMLError):
    """Not well-formed XML."""

    reason = "malformed"


class XMLShapeError(CallbackXMLError):
    """Well-formed, but not WeChat's shape: wrong root, nested, duplicate or mixed content."""

    reason = "shape"


class CallbackFieldError(CallbackXMLError):
    """A required field is missing, or a numeric field is not a number."""

    reason = "field"


class EncodingAESKeyError(ValueError):
    """The configured EncodingAESKey is unusable (a setup error, raised at construction)."""


def signature(token: str, timestamp: str, nonce: str, *extra: str) -> str:
    """SHA-1 hex of the sorted strings joined: plain `signature`, or `msg_signature` with Encrypt.

    Python sorts str by code point, which is the byte order of their UTF-8 (what wechatpy
    sorts), so non-ASCII tokens sign the same.
    """
    parts = sorted([token, timestamp, nonce, *extra])
    return hashlib.sha1("".join(parts).encode("utf-8")).hexdigest()


def signatures_match(expected: str, actual: str) -> bool:
    """Constant-time comparison, so a forger learns nothing from response timing."""
    return hmac.compare_digest(expected.encode("utf-8"), actual.encode("utf-8"))


def verify_signature(token: str, received: str, timestamp: str, nonce: str, *extra: str) -> None:
    """Raise `SignatureError` unless `received` signs (token, timestamp, nonce, *extra)."""
    if not signatures_match(signature(token, timestamp, nonce, *extra), received or ""):
        what = "msg_signature" if extra else "signature"
        raise SignatureError(f"callback {what} does not match (wrong token, or not from WeChat)")


def signed_query(
    token: str,
    timestamp: str,
    nonce: str,
    *,
    encrypt: str | None = None,
    openid: str | None = None,
) -> dict[str, str]:
    """The POST query string WeChat sends with a push (plain mode, or safe mode if `encrypt`).

    Safe mode keeps the plain `signature` and adds `encrypt_type=aes` and `msg_signature`
    over the Encrypt value; WeChat also appends the sender's `openid` to pushes.
    """
    query = {
        "signature": signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    if openid is not None:
        query["openid"] = openid
    if encrypt is not None:
        query["encrypt_type"] = "aes"
        query["msg_signature"] = signature(token, timestamp, nonce, encrypt)
    return query


def cdata(value: str) -> str:
    """`value` as CDATA; a literal `]]>` is split across two sections so it cannot close early."""
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _aes_key(encoding_aes_key: str, which: str) -> bytes:
    """The 32-byte key from a 43-char EncodingAESKey; the error names the problem, not the key."""
    problem = encoding_aes_key_problem(encoding_aes_key)  # the one rule: wechat/identifiers.py
    if problem is not None:
        raise EncodingAESKeyError(f"{which} EncodingAESKey {problem}")
    key = base64.b64decode(encoding_aes_key + "=")
    if len(key) != 32:  # pragma: no cover - 43 base64 chars always give 32 bytes
        raise EncodingAESKeyError(f"{which} EncodingAESKey does not decode to 32 bytes")
    return key


class MessageCrypto:
    """Safe-mode crypto for one account: AES-256-CBC, IV = key[:16], PKCS#7 to 32 bytes.

    `app_id` is the AppID (Official Account) or CorpID/ReceiveId (WeCom; "" for smart bots).
    `previous_encoding_aes_key` is tried when the current key fails, so a key rotation in
    the WeChat console does not drop the pushes already in flight (docs/wechat-protocol.md).
    """

    __slots__ = ("_keys", "_token", "app_id")

    def __init__(
        self,
        token: str,
        encoding_aes_key: str,
        app_id: str,
        previous_encoding_aes_key: str | None = None,
    ) -> None:
        if not token:
            raise ValueError("callback token must not be empty")
        self._token = token
        self.app_id = app_id
        keys = [_aes_key(encoding_aes_key, "current")]
        if previous_encoding_aes_key:
            keys.append(_aes_key(previous_encoding_aes_key, "previous"))
        self._keys: tuple[bytes, ...] = tuple(keys)

    def __repr__(self) -> str:
        previous = ", previous key set" if len(self._keys) > 1 else ""
        return f"MessageCrypto(app_id={self.app_id!r}, token=***, key=***{previous})"

    def encrypt(self, plaintext: bytes, *, random_prefix: bytes | None = None) -> str:
        """Base64 of AES(random16 + len(msg) big-endian + msg + app_id), with the current key.

        `random_prefix` is for known-answer tests; production leaves it to os.urandom.
        """
        prefix = os.urandom(16) if random_prefix is None else random_prefix
        if len(prefix) != 16:
            raise ValueError("random_prefix must be exactly 16 bytes")
        body = prefix + struct.pack(">I", len(plaintext)) + plaintext + self.app_id.encode("utf-8")
        pad = PAD_BLOCK - len(body) % PAD_BLOCK
        body += bytes([pad]) * pad
        key = self._keys[0]
        encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
        return base64.b64encode(encryptor.update(body) + encryptor.finalize()).decode("ascii")

    def decrypt(self, encrypted: str) -> bytes:
        """The message inside `encrypted`, trying the current key then the previous one.

        A structural failure under every key raises `DecryptError`; a clean decrypt whose
        trailing id is not ours raises `AppIdMismatch` (more telling, so it wins).
        """
        try:
            raw = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecryptError("ciphertext is not valid base64", reason="base64") from exc
        if not raw or len(raw) % 16:
            raise DecryptError("ciphertext length is not a whole number of AES blocks")
        first: CallbackError | None = None
        mismatch: AppIdMismatch | None = None
        for key in self._keys:
            try:
                return self._decrypt_with(key, raw)
            except AppIdMismatch as exc:
                mismatch = mismatch or exc
            except DecryptError as exc:
                first = first or exc
        raise mismatch or first or DecryptError("ciphertext could not be decrypted")

    def _decrypt_with(self, key: bytes, raw: bytes) -> bytes:
        decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
        plain = decryptor.update(raw) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= PAD_BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise DecryptError(
                "bad PKCS#7 padding (wrong key or tampered ciphertext)", reason="padding"
            )
        content = plain[16:-pad]
        if len(content) < 4:
            raise DecryptError("decrypted block too short for its length field", reason="length")
        (length,) = struct.unpack(">I", content[:4])
        if 4 + length > len(content):
            raise DecryptError(
                "length field exceeds the decrypted data (wrong key or tampered)", reason="length"
            )
        message, received = content[4 : 4 + length], content[4 + length :]
        if received != self.app_id.encode("utf-8"):
            shown = received.decode("utf-8", errors="replace")[:64]
            raise AppIdMismatch(
                f"message is for app id {shown!r}, this receiver is {self.app_id!r}",
                expected=self.app_id,
                received=shown,
            )
        return message

    def verify_and_decrypt(
        self, msg_signature: str, timestamp: str, nonce: str, encrypted: str
    ) -> bytes:
        """Check `msg_signature` over the Encrypt value (constant time), then decrypt it."""
        verify_signature(self._token, msg_signature, timestamp, nonce, encrypted)
        return self.decrypt(encrypted)

    def decrypt_echostr(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """WeCom URL verification: the plaintext to answer with (no quotes, no newline)."""
        plain = self.verify_and_decrypt(msg_signature, timestamp, nonce, echostr)
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecryptError("echostr is not UTF-8 text", reason="encoding") from exc

    def sign(self, timestamp: str, nonce: str, *extra: str) -> str:
        """`signature(token, timestamp, nonce, *extra)` without handing the token around."""
        return signature(self._token, timestamp, nonce, *extra)

    def verify(self, received: str, timestamp: str, nonce: str, *extra: str) -> None:
        """`verify_signature` with this account's token (e.g. the plain `signature` of a POST)."""
        verify_signature(self._token, received, timestamp, nonce, *extra)

    def encrypted_reply(
        self,
        plaintext_xml: bytes,
        timestamp: str,
        nonce: str,
        *,
        random_prefix: bytes | None = None,
    ) -> bytes:
        """A safe-mode reply body: `<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>`."""
        encrypted = self.encrypt(plaintext_xml, random_prefix=random_prefix)
        signed = self.sign(timestamp, nonce, encrypted)
        return (
            f"<xml><Encrypt>{cdata(encrypted)}</Encrypt>"
            f"<MsgSignature>{cdata(signed)}</MsgSignature>"
            f"<TimeStamp>{escape(timestamp)}</TimeStamp>"
            f"<Nonce>{cdata(nonce)}</Nonce></xml>"
        ).encode()

    def encrypted_push(
        self,
        plaintext_xml: bytes,
        timestamp: str,
        nonce: str,
        *,
        to_user: str,
        openid: str | None = None,
        random_prefix: bytes | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A safe-mode push as WeChat sends it: the envelope body and its query parameters."""
        encrypted = self.encrypt(plaintext_xml, random_prefix=random_prefix)
        body = (
            f"<xml><ToUserName>{cdata(to_user)}</ToUserName>"
            f"<Encrypt>{cdata(encrypted)}</Encrypt></xml>"
        )
        query = signed_query(self._token, timestamp, nonce, encrypt=encrypted, openid=openid)
        return body.encode("utf-8"), query
