"""Keep secrets out of text: URLs carry access_token and secret in their query strings.

WeChat puts the token in the query string, and httpx logs every request URL at INFO, so
the one filter below sits on the `httpx` logger and every error message we build passes
through `redact` first.
"""

from __future__ import annotations

import logging
import re

MASK = "********"

_PATTERNS = (
    re.compile(r"(?i)((?:access_token|secret|corpsecret|appsecret)=)[^&\s\"'#]+"),
    re.compile(r"(?i)(\"(?:access_token|secret|app_secret|appsecret)\"\s*:\s*\")[^\"]*"),
)


def redact(text: str) -> str:
    """`text` with every access_token/secret value replaced by a mask."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message so no token or secret reaches any handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Attach the filter once to each named logger (idempotent)."""
    for name in logger_names or ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
