"""Callback signatures and safe-mode AES: known answers, wechatpy interop, every refusal."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wechat import (
    AppIdMismatch,
    CallbackError,
    DecryptError,
    EncodingAESKeyError,
    MessageCrypto,
    SignatureError,
    encrypted_field,
    parse_xml,
    signature,
    signatures_match,
    signed_query,
    verify_signature,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "wechat_crypto_vectors.json").read_text("utf-8")
)
TOKEN: str = VECTORS["token"]
KEY: str = VECTORS["encoding_aes_key"]
APP_ID: str = VECTORS["receive_id"]
OTHER_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
PREFIX = b"0123456789abcdef"
SECRET_TEXT = b"<xml><Content><![CDATA[top secret plaintext]]></Content></xml>"


@pytest.fixture
def crypto() -> MessageCrypto:
    return MessageCrypto(TOKEN, KEY, APP_ID)


def _raw_encrypt(key_text: str, plain: bytes) -> str:
    """AES-CBC with WeChat's key/IV and no padding logic, to build malformed ciphertexts."""
    key = base64.b64decode(key_text + "=")
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def _no_secrets(exc: BaseException) -> None:
    text = str(exc) + repr(exc)
    assert TOKEN not in text
    assert KEY not in text
    assert OTHER_KEY not in text
    assert "top secret" not in text


# -- known-answer vectors --------------------------------------------------------------------


def test_vector_echostr_signature_and_plaintext(crypto: MessageCrypto) -> None:
    v = VECTORS["verify_url"]
    assert signature(TOKEN, v["timestamp"], v["nonce"], v["echostr"]) == v["msg_signature"]
    plain = crypto.decrypt_echostr(v["msg_signature"], v["timestamp"], v["nonce"], v["echostr"])
    assert plain == v["expect_echostr"]


def test_vector_echostr_negative_nonce_is_refused(crypto: MessageCrypto) -> None:
    v = VECTORS["verify_url"]
    with pytest.raises(SignatureError) as info:
        crypto.decrypt_echostr(
            v["msg_signature"], v["timestamp"], v["negative"]["nonce"], v["echostr"]
        )
    assert info.value.http_status == 403
    _no_secrets(info.value)


def test_vector_decrypt(crypto: MessageCrypto) -> None:
    v = VECTORS["decrypt"]
    envelope = parse_xml(v["body"].encode())
    encrypted = encrypted_field(envelope)
    assert signature(TOKEN, v["timestamp"], v["nonce"], encrypted) == v["msg_signature"]
    plain = crypto.verify_and_decrypt(v["msg_signature"], v["timestamp"], v["nonce"], encrypted)
    fields = parse_xml(plain)
    for name, value in v["expect_fields"].items():
        assert fields[name] == value


def test_vector_encrypt_byte_for_byte(crypto: MessageCrypto) -> None:
    v = VECTORS["encrypt"]
    prefix = v["random_prefix"].encode()
    encrypted = crypto.encrypt(v["plaintext"].encode(), random_prefix=prefix)
    assert encrypted == v["expect_encrypt"]
    assert signature(TOKEN, v["timestamp"], v["nonce"], encrypted) == v["expect_msg_signature"]
    assert crypto.sign(v["timestamp"], v["nonce"], encrypted) == v["expect_msg_signature"]


def test_vector_encrypted_reply(crypto: MessageCrypto) -> None:
    v = VECTORS["encrypt"]
    reply = crypto.encrypted_reply(
        v["plaintext"].encode(),
        v["timestamp"],
        v["nonce"],
        random_prefix=v["random_prefix"].encode(),
    )
    fields = parse_xml(reply)
    assert list(fields) == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    assert fields == {
        "Encrypt": v["expect_encrypt"],
        "MsgSignature": v["expect_msg_signature"],
        "TimeStamp": v["timestamp"],
        "Nonce": v["nonce"],
    }


# -- signatures -------------------------------------------------------------------------------


def test_signature_sorts_before_joining() -> None:
    import hashlib

    expected = hashlib.sha1(b"".join(sorted([b"tok", b"1700000000", b"n0nce"]))).hexdigest()
    assert signature("tok", "1700000000", "n0nce") == expected
    assert signature("tok", "n0nce", "1700000000") == expected  # order of arguments is irrelevant


def test_signatures_match_is_exact() -> None:
    sig = signature("tok", "1", "2")
    assert signatures_match(sig, sig)
    assert not signatures_match(sig, sig.upper())
    assert not signatures_match(sig, sig[:-1])
    assert not signatures_match(sig, "")


def test_verify_signature_plain_and_msg() -> None:
    verify_signature("tok", signature("tok", "1", "2"), "1", "2")
    verify_signature("tok", signature("tok", "1", "2", "ENC"), "1", "2", "ENC")
    with pytest.raises(SignatureError, match="signature does not match"):
        verify_signature("tok", signature("tok", "1", "2"), "1", "3")
    with pytest.raises(SignatureError, match="msg_signature"):
        verify_signature("tok", signature("tok", "1", "2"), "1", "2", "ENC")


def test_signed_query_plain_and_safe_mode() -> None:
    assert signed_query("tok", "1700000000", "42") == {
        "signature": signature("tok", "1700000000", "42"),
        "timestamp": "1700000000",
        "nonce": "42",
    }
    safe = signed_query("tok", "1700000000", "42", encrypt="ENC", openid="oUser")
    assert safe == {
        "signature": signature("tok", "1700000000", "42"),
        "timestamp": "1700000000",
        "nonce": "42",
        "openid": "oUser",
        "encrypt_type": "aes",
        "msg_signature": signature("tok", "1700000000", "42", "ENC"),
    }


# -- round trips and interop ------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"x", b"<xml><A>1</A></xml>", "中文消息 ✓".encode(), bytes(range(256)) * 3],
)
def test_round_trip(crypto: MessageCrypto, plaintext: bytes) -> None:
    encrypted = crypto.encrypt(plaintext)
    assert len(base64.b64decode(encrypted)) % 32 == 0
    assert crypto.decrypt(encrypted) == plaintext


def test_random_prefix_differs_each_time(crypto: MessageCrypto) -> None:
    assert crypto.encrypt(b"same") != crypto.encrypt(b"same")


def test_encrypted_push_is_what_the_receiver_accepts(crypto: MessageCrypto) -> None:
    body, query = crypto.encrypted_push(
        SECRET_TEXT, "1700000000", "nonce1", to_user="gh_account", openid="oUser"
    )
    envelope = parse_xml(body)
    assert envelope["ToUserName"] == "gh_account"
    assert query["encrypt_type"] == "aes"
    verify_signature(TOKEN, query["signature"], query["timestamp"], query["nonce"])
    crypto.verify(query["signature"], query["timestamp"], query["nonce"])
    plain = crypto.verify_and_decrypt(
        query["msg_signature"], query["timestamp"], query["nonce"], encrypted_field(envelope)
    )
    assert plain == SECRET_TEXT


def test_wechatpy_encrypts_we_decrypt() -> None:
    from wechatpy.crypto import WeChatCrypto

    theirs = WeChatCrypto(TOKEN, KEY, APP_ID)
    xml = theirs.encrypt_message(SECRET_TEXT.decode(), "nonce7", "1700000000")
    fields = parse_xml(xml.encode())
    ours = MessageCrypto(TOKEN, KEY, APP_ID)
    plain = ours.verify_and_decrypt(
        fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"], fields["Encrypt"]
    )
    assert plain == SECRET_TEXT


def test_we_encrypt_wechatpy_decrypts() -> None:
    from wechatpy.crypto import WeChatCrypto

    ours = MessageCrypto(TOKEN, KEY, APP_ID)
    reply = ours.encrypted_reply(SECRET_TEXT, "1700000000", "nonce8")
    fields = parse_xml(reply)
    theirs = WeChatCrypto(TOKEN, KEY, APP_ID)
    plain = theirs.decrypt_message(reply.decode(), fields["MsgSignature"], "1700000000", "nonce8")
    assert plain.encode() == SECRET_TEXT


# -- refusals ---------------------------------------------------------------------------------


def test_tampered_ciphertext_fails_the_signature(crypto: MessageCrypto) -> None:
    encrypted = crypto.encrypt(SECRET_TEXT, random_prefix=PREFIX)
    sig = crypto.sign("1", "2", encrypted)
    raw = bytearray(base64.b64decode(encrypted))
    raw[20] ^= 0x01
    tampered = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SignatureError) as info:
        crypto.verify_and_decrypt(sig, "1", "2", tampered)
    _no_secrets(info.value)


def test_tampered_last_block_breaks_the_padding(crypto: MessageCrypto) -> None:
    raw = bytearray(base64.b64decode(crypto.encrypt(SECRET_TEXT, random_prefix=PREFIX)))
    raw[-1] ^= 0x55
    with pytest.raises(DecryptError) as info:
        crypto.decrypt(base64.b64encode(bytes(raw)).decode())
    assert info.value.reason == "padding"
    _no_secrets(info.value)


def test_tampered_length_field_is_refused(crypto: MessageCrypto) -> None:
    raw = bytearray(base64.b64decode(crypto.encrypt(SECRET_TEXT, random_prefix=PREFIX)))
    raw[0] ^= 0x80  # CBC: flips the top bit of plaintext byte 16, the length field's MSB
    with pytest.raises(DecryptError) as info:
        crypto.decrypt(base64.b64encode(bytes(raw)).decode())
    assert info.value.reason == "length"


def test_wrong_key_is_refused(crypto: MessageCrypto) -> None:
    other = MessageCrypto(TOKEN, OTHER_KEY, APP_ID)
    with pytest.raises(DecryptError) as info:
        crypto.decrypt(other.encrypt(SECRET_TEXT, random_prefix=PREFIX))
    _no_secrets(info.value)


def test_wrong_app_id_is_refused(crypto: MessageCrypto) -> None:
    other = MessageCrypto(TOKEN, KEY, "wxSomeoneElse0000")
    with pytest.raises(AppIdMismatch) as info:
        crypto.decrypt(other.encrypt(SECRET_TEXT))
    assert info.value.expected == APP_ID
    assert info.value.received == "wxSomeoneElse0000"
    assert info.value.http_status == 403
    _no_secrets(info.value)


@pytest.mark.parametrize("pad", [0, 33, 255])
def test_padding_value_out_of_range_is_refused(crypto: MessageCrypto, pad: int) -> None:
    body = PREFIX + struct.pack(">I", 3) + b"abc" + APP_ID.encode()
    body += b"\x00" * (63 - len(body)) + bytes([pad])
    with pytest.raises(DecryptError) as info:
        crypto.decrypt(_raw_encrypt(KEY, body))
    assert info.value.reason == "padding"


def test_padding_bytes_not_all_equal_is_refused(crypto: MessageCrypto) -> None:
    body = PREFIX + struct.pack(">I", 3) + b"abc" + APP_ID.encode()
    pad = 64 - len(body)
    padding = bytearray([pad]) * pad
    padding[1] = 0  # the last byte claims `pad` bytes of padding; one of them disagrees
    body += bytes(padding)
    with pytest.raises(DecryptError) as info:
        crypto.decrypt(_raw_encrypt(KEY, body))
    assert info.value.reason == "padding"


def test_length_field_beyond_data_is_refused(crypto: MessageCrypto) -> None:
    body = PREFIX + struct.pack(">I", 10_000) + b"abc" + APP_ID.encode()
    pad = 32 - len(body) % 32
    body += bytes([pad]) * pad
    with pytest.raises(DecryptError) as info:
        crypto.decrypt(_raw_encrypt(KEY, body))
    assert info.value.reason == "length"


@pytest.mark.parametrize("bad", ["not base64!!", "abc", "====", "YWJj\nZGVm"])
def test_bad_base64_is_refused(crypto: MessageCrypto, bad: str) -> None:
    with pytest.raises(DecryptError) as info:
        crypto.decrypt(bad)
    assert info.value.reason == "base64"


@pytest.mark.parametrize("bad", ["", base64.b64encode(b"x" * 17).decode()])
def test_ciphertext_not_whole_blocks_is_refused(crypto: MessageCrypto, bad: str) -> None:
    with pytest.raises(DecryptError, match="AES blocks"):
        crypto.decrypt(bad)


def test_callback_errors_share_a_base() -> None:
    for cls in (SignatureError, DecryptError, AppIdMismatch):
        assert issubclass(cls, CallbackError)


# -- key rotation ---------------------------------------------------------------------------


def test_previous_key_is_tried_after_the_current_one() -> None:
    before = MessageCrypto(TOKEN, KEY, APP_ID)
    in_flight = before.encrypt(SECRET_TEXT)
    after = MessageCrypto(TOKEN, OTHER_KEY, APP_ID, previous_encoding_aes_key=KEY)
    assert after.decrypt(in_flight) == SECRET_TEXT
    # new messages use the current key only
    fresh = after.encrypt(SECRET_TEXT)
    assert MessageCrypto(TOKEN, OTHER_KEY, APP_ID).decrypt(fresh) == SECRET_TEXT
    with pytest.raises(DecryptError):
        before.decrypt(fresh)
    with pytest.raises(DecryptError):
        MessageCrypto(TOKEN, OTHER_KEY, APP_ID).decrypt(in_flight)


def test_app_id_mismatch_wins_over_a_key_failure() -> None:
    foreign = MessageCrypto(TOKEN, KEY, "wxOther").encrypt(SECRET_TEXT)
    rotated = MessageCrypto(TOKEN, OTHER_KEY, APP_ID, previous_encoding_aes_key=KEY)
    with pytest.raises(AppIdMismatch):
        rotated.decrypt(foreign)


# -- configuration and secrets ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (KEY[:-1], "43 characters, got 42"),
        (KEY + "A", "43 characters, got 44"),
        (KEY[:-1] + "+", "only A-Z, a-z and 0-9"),
        (KEY[:-1] + "=", "only A-Z, a-z and 0-9"),
        ("", "43 characters, got 0"),
    ],
)
def test_bad_encoding_aes_key_is_named_not_echoed(key: str, problem: str) -> None:
    with pytest.raises(EncodingAESKeyError, match=problem) as info:
        MessageCrypto(TOKEN, key, APP_ID)
    assert "current" in str(info.value)
    if key:
        assert key not in str(info.value)


def test_bad_previous_key_is_named() -> None:
    with pytest.raises(EncodingAESKeyError, match="previous EncodingAESKey"):
        MessageCrypto(TOKEN, KEY, APP_ID, previous_encoding_aes_key="short")


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        MessageCrypto("", KEY, APP_ID)


def test_random_prefix_must_be_16_bytes(crypto: MessageCrypto) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        crypto.encrypt(b"x", random_prefix=b"short")


def test_repr_hides_token_and_key() -> None:
    text = repr(MessageCrypto(TOKEN, KEY, APP_ID, previous_encoding_aes_key=OTHER_KEY))
    assert APP_ID in text
    assert TOKEN not in text
    assert KEY not in text
    assert OTHER_KEY not in text
    assert "previous key set" in text


def test_empty_receive_id_works_for_wecom_bots() -> None:
    bot = MessageCrypto(TOKEN, KEY, "")
    assert bot.decrypt(bot.encrypt(b"hello")) == b"hello"
