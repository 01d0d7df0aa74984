"""The formats of an account's AppID and callback secrets: one set of rules, checked where
configuration enters (`wxpush setup`, the `wechat-app` block, the receiver's config) and by
the callback crypto, so a typo is refused with its reason instead of failing later.

- AppID (Official Account, mini program): `wx` + 16 lowercase hex characters, as WeChat
  issues them (e.g. `wx8c4e1f0a7d3b9265`); a WeCom CorpID is `ww` + 16 hex (older ones `wx`).
- EncodingAESKey: 43 characters of A-Z, a-z and 0-9 (the base64 of a 32-byte AES key
  without its `=`), as the console generates it (docs/wechat-protocol.md, safe mode).
- Callback Token: not empty (the console asks for 3-32 letters and digits).

Messages name the problem, never a secret's value.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import SecretStr, ValidationInfo

ENCODING_AES_KEY_LENGTH = 43
_APP_ID = re.compile(r"wx[0-9a-f]{16}")
_CORP_ID = re.compile(r"w[wx][0-9a-f]{16}")
_ENCODING_AES_KEY = re.compile(r"[A-Za-z0-9]{43}")


class IdentifierError(ValueError):
    """A configured AppID, EncodingAESKey or callback Token has the wrong form."""


def check_app_id(
    value: str, kind: Literal["official_account", "wecom"] = "official_account"
) -> str:
    """`value` if it has the form of an AppID (WeCom: a CorpID), else IdentifierError."""
    if kind == "wecom":
        if not _CORP_ID.fullmatch(value):
            raise IdentifierError(
                f"CorpID {value!r} is not ww (or wx) followed by 16 hex characters "
                "(WeCom admin console → My company)"
            )
    elif not _APP_ID.fullmatch(value):
        raise IdentifierError(
            f"AppID {value!r} is not wx followed by 16 lowercase hex characters (WeChat admin "
            "console → Settings and Development → Basic configuration)"
        )
    return value


def encoding_aes_key_problem(value: object) -> str | None:
    """What is wrong with an EncodingAESKey (never quoting it), or None when it is usable."""
    if not isinstance(value, str):
        return "must be a str"
    if len(value) != ENCODING_AES_KEY_LENGTH:
        return f"must be {ENCODING_AES_KEY_LENGTH} characters, got {len(value)}"
    if not _ENCODING_AES_KEY.fullmatch(value):
        return "must contain only A-Z, a-z and 0-9"
    return None


def check_encoding_aes_key(value: str, which: str = "EncodingAESKey") -> str:
    """`value` if it is a well-formed EncodingAESKey, else IdentifierError naming `which`."""
    problem = encoding_aes_key_problem(value)
    if problem is not None:
        raise IdentifierError(f"{which} {problem} (copy it from the server configuration page)")
    return value


def check_callback_token(value: str) -> str:
    """`value` if it can sign callbacks (not empty, no surrounding spaces), else IdentifierError."""
    if not value.strip():
        raise IdentifierError(
            "the callback Token is empty: copy it from the server configuration page"
        )
    if value != value.strip():
        raise IdentifierError("the callback Token has leading or trailing spaces")
    return value


# Pydantic field validators, shared by the `wechat-app` block and the receiver's config:
# `field_validator("token")(callback_token_form)`.


def callback_token_form(value: SecretStr | None) -> SecretStr | None:
    """Check a callback Token field's form (None: not configured)."""
    if value is not None:
        check_callback_token(value.get_secret_value())
    return value


def encoding_aes_key_form(value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
    """Check an EncodingAESKey field's form; a field named `previous…` is the previous key."""
    if value is not None:
        previous = (info.field_name or "").startswith("previous")
        which = "previous EncodingAESKey" if previous else "EncodingAESKey"
        check_encoding_aes_key(value.get_secret_value(), which)
    return value
