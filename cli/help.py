"""`--help` shows each option's real default and unit, read from the model that holds it.

Flags that feed a pydantic model (CampaignParams, DigestParams, ReceiverConfig, the wechat-app
block) default to None so a `--params-file` or the block is not overridden by a flag nobody
gave; typer would show no default for them. `model_default` gives typer's `show_default` the
model's value instead, so help and behaviour cannot drift apart. Rich reads `[…]` in help as
markup and drops it: text that may hold brackets goes through `plain`.
"""

from __future__ import annotations

from pydantic import BaseModel
from rich.markup import escape


def model_default(model: type[BaseModel], field: str, unit: str = "", none: str = "none") -> str:
    """`48 h`, `16,384 bytes`, `default`: the field's default as `[default: …]` shows it."""
    value = model.model_fields[field].get_default(call_default_factory=True)
    if value is None:
        return none
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def model_help(model: type[BaseModel], field: str) -> str:
    """The field's description (the same words the Prefect form shows), safe for rich."""
    return plain(model.model_fields[field].description or "")


def plain(text: str) -> str:
    """`text` with rich markup escaped, so `[16384]` or `[a|b]` stay visible in help."""
    return escape(text)
