"""What a campaign sends: the message spec, its `{column}` placeholders, one row's rendering.

Pure code (no Prefect, no I/O): the flow's preflight and the send engine both call it.

Placeholders are `{column}`, filled from the audience row; `{{` and `}}` are literal braces.
Nothing else is accepted: no `{0.__class__}`, no `{a[b]}`, no `{x:>10}`, no `{x!r}`. A tiny
parser does the work instead of `str.format_map`, so a campaign form can never reach an
attribute of a Python object. Values become text by these rules:

- `None` → empty string (and an empty template value is then `invalid`, per WeChat's rules);
- `datetime` → `YYYY-MM-DD HH:MM` in China time (UTC+8, Asia/Shanghai: no DST since 1991);
  a naive datetime is taken as UTC, the ledger's convention;
- `date` → `YYYY-MM-DD`, `time` → `HH:MM`;
- everything else → `str(value)` (ints, floats and Decimals as Python prints them, bools as
  `True`/`False`; format them in the audience SQL if you want something else).

Placeholders may be used in the template `data` values, `url`, `miniprogram.pagepath`,
`page` (subscribe) and `text` (customer_service); values are inserted as they are (no URL
quoting).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any, Literal, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from wechat.fields import EMPTY, FieldProblem, check_field
from wechat.models import CustomMessage, MiniProgram, SubscribeMessage, TemplateMessage

__all__ = [
    "CHINA_TZ",
    "MISSING_COLUMN",
    "MessageKind",
    "MessageSpec",
    "PlaceholderError",
    "RenderedMessage",
    "client_msg_id_for",
    "format_value",
    "invalid_reason",
    "render",
    "unrenderable_reason",
]

MessageKind = Literal["template", "customer_service", "subscribe"]
RenderedMessage: TypeAlias = TemplateMessage | CustomMessage | SubscribeMessage

#: China Standard Time. A fixed offset (China has had no DST since 1991) needs no tzdata.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
#: The `rule` of a problem whose placeholder names a column the row does not have.
MISSING_COLUMN = "missing_column"
OPENID_COLUMN = "openid"
#: Distinct (field, value) verdicts remembered per spec before the memory is cleared.
VERDICT_CACHE_SIZE = 8192
_UNSEEN: Any = object()


class PlaceholderError(ValueError):
    """A text uses a placeholder form wxpush does not support (or an unbalanced brace)."""


# --- placeholders ---------------------------------------------------------------------------

_NAME = re.compile(r"\w+")  # letters (any script), digits, underscore: a column name
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

# A compiled text: (literal, column name or None) pairs, rendered left to right.
_Parts = tuple[tuple[str, str | None], ...]


def _compile(text: str) -> _Parts:
    """Split `text` into literals and column names; raise on anything but `{column}`."""
    parts: list[tuple[str, str | None]] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        name = match.group(1)
        if name is None:  # a lone brace
            raise PlaceholderError(
                f"unbalanced {token!r} at position {match.start() + 1} in {text!r}: "
                "write {{ or }} for a literal brace"
            )
        if not _NAME.fullmatch(name):
            raise PlaceholderError(
                f"placeholder {{{name}}} in {text!r} is not a column name: only {{column}} "
                "is supported (no attributes, indexes, conversions or format specs)"
            )
        parts.append(("".join(literal), name))
        literal = []
    literal.append(text[pos:])
    tail = "".join(literal)
    if tail or not parts:
        parts.append((tail, None))
    return tuple(parts)


def _names(parts: _Parts) -> set[str]:
    return {name for _, name in parts if name is not None}


def format_value(value: Any) -> str:
    """One row value as template text (the rules are in the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        local = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(CHINA_TZ)
        return (
            f"{local.year:04d}-{local.month:02d}-{local.day:02d} "
            f"{local.hour:02d}:{local.minute:02d}"
        )
    if isinstance(value, date):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    if isinstance(value, time):
        return f"{value.hour:02d}:{value.minute:02d}"
    return str(value)


class _Missing(Exception):
    """A placeholder's column is absent from the row (internal, turned into a problem)."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def _fill(parts: _Parts, row: Mapping[str, Any]) -> str:
    if len(parts) == 1:  # the common shapes: "constant" and "{column}"
        literal, name = parts[0]
        if name is None:
            return literal
        if not literal:
            try:
                return format_value(row[name])
            except KeyError:
                raise _Missing(name) from None
    out: list[str] = []
    for literal, name in parts:
        out.append(literal)
        if name is not None:
            try:
                value = row[name]
            except KeyError:
                raise _Missing(name) from None
            out.append(format_value(value))
    return "".join(out)


class _Plan:
    """A spec compiled for rendering: plain attributes, read once per row."""

    __slots__ = ("data", "extras", "text", "verdicts")

    def __init__(
        self, data: dict[str, _Parts], extras: tuple[tuple[str, _Parts], ...], text: _Parts | None
    ) -> None:
        self.data = data
        self.extras = extras
        self.text = text
        # (field key, value) → WeChat's verdict, remembered: repeated values are checked once.
        self.verdicts: dict[tuple[str, str], FieldProblem | None] = {}


# --- the spec -------------------------------------------------------------------------------


class MessageSpec(BaseModel):
    """The message of a campaign, before any recipient's values are filled in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: MessageKind = Field(
        "template",
        title="Message kind",
        description="template (模板消息), customer_service (客服消息, 48-hour window) or "
        "subscribe (订阅通知, needs the user's authorization).",
    )
    template_id: str | None = Field(
        None, title="Template ID", description="Required for template and subscribe messages."
    )
    data: dict[str, str] = Field(
        default_factory=dict,
        title="Fields",
        description="Template field key → text with {column} placeholders, e.g. "
        "thing1 → '{nickname}，您的订单已发货'. {{ and }} are literal braces.",
    )
    url: str | None = Field(None, title="URL", description="Page a template message opens.")
    miniprogram: MiniProgram | None = Field(
        None, title="Mini program", description="Wins over url when both are set."
    )
    page: str | None = Field(None, title="Page", description="Subscribe messages: page to open.")
    text: str | None = Field(
        None, title="Text", description="Customer-service text message, with placeholders."
    )

    _plan: _Plan = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _flat_miniprogram(cls, value: Any) -> Any:
        """Accept the form's flat `miniprogram_appid` / `miniprogram_pagepath` too."""
        if not isinstance(value, Mapping) or not (
            "miniprogram_appid" in value or "miniprogram_pagepath" in value
        ):
            return value
        value = dict(value)
        appid = value.pop("miniprogram_appid", None)
        pagepath = value.pop("miniprogram_pagepath", None)
        if appid:
            if value.get("miniprogram"):
                raise ValueError("give miniprogram or miniprogram_appid, not both")
            value["miniprogram"] = {"appid": appid, "pagepath": pagepath or ""}
        elif pagepath:
            raise ValueError("miniprogram_pagepath needs miniprogram_appid")
        return value

    @model_validator(mode="after")
    def _compile_texts(self) -> MessageSpec:
        if self.kind in ("template", "subscribe"):
            if not self.template_id:
                raise ValueError(f"a {self.kind} message needs a template_id")
            if not self.data:
                raise ValueError(f"a {self.kind} message needs at least one data field")
        elif not self.text:
            raise ValueError("a customer_service message needs a text")
        for key in self.data:
            if not key:
                raise ValueError("a data field key cannot be empty")
        pagepath = self.miniprogram.pagepath if self.miniprogram else ""
        self._plan = _Plan(
            data={key: _compile(text) for key, text in self.data.items()},
            extras=tuple(
                (name, _compile(text))
                for name, text in (
                    ("url", self.url),
                    ("miniprogram.pagepath", pagepath),
                    ("page", self.page),
                )
                if text
            ),
            text=_compile(self.text) if self.text else None,
        )
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with `update`, validated and compiled again (pydantic's skips both)."""
        if update:
            return self.model_validate({**self.model_dump(), **update})
        return super().model_copy(deep=deep)

    def _all_parts(self) -> list[_Parts]:
        plan = self._plan
        if self.kind == "customer_service":
            return [plan.text] if plan.text is not None else []
        return [*plan.data.values(), *(parts for _, parts in plan.extras)]

    def placeholders(self) -> set[str]:
        """Every column name the message uses."""
        names: set[str] = set()
        for parts in self._all_parts():
            names |= _names(parts)
        return names

    def field_placeholders(self) -> dict[str, set[str]]:
        """Each template field key → the columns its text uses (a test send picks sample
        values that fit the field's type)."""
        return {key: _names(parts) for key, parts in self._plan.data.items()}

    def check_columns(self, columns: Iterable[str]) -> list[str]:
        """Columns the message needs that the audience lacks (`openid` included), sorted."""
        have = set(columns)
        return sorted((self.placeholders() | {OPENID_COLUMN}) - have)


# --- rendering ------------------------------------------------------------------------------


def client_msg_id_for(campaign_id: int | str, openid: str) -> str:
    """The same id for the same (campaign, openid), every attempt and every re-run.

    WeChat drops a repeat of openid + client_msg_id within 10 minutes, so a retry after an
    unknown outcome (a timeout) cannot deliver twice. 34 ASCII bytes (the limit is 64).
    """
    digest = hashlib.blake2b(
        f"{campaign_id}\x1f{openid}".encode(), digest_size=16, person=b"wxpush-cmid"
    )
    return "wx" + digest.hexdigest()


def invalid_reason(problems: Iterable[FieldProblem]) -> str:
    """Why a row is invalid: the field rules it breaks, without the row's own values ("…; got
    27"), so rows breaking the same rules read the same (the ledger's `reason`, counted by
    the report and the dry run) and no recipient's text is kept there."""
    return "; ".join(str(problem).split("; got ", 1)[0] for problem in problems)


def unrenderable_reason(exc: Exception) -> str:
    """Why a row whose value could not become text (its `str()` raised) is invalid."""
    return f"could not render the message ({type(exc).__name__})"


def _missing(key: str, column: str) -> FieldProblem:
    return FieldProblem(
        key, "", MISSING_COLUMN, f"the audience row has no column {column!r} (used by {key})"
    )


def render(
    spec: MessageSpec, row: Mapping[str, Any], *, client_msg_id: str | None
) -> RenderedMessage | list[FieldProblem]:
    """The message for one audience row, or every reason it cannot be sent (never both).

    Template and subscribe data are checked with WeChat's field rules (`wechat.fields`);
    a problem's `key` names the field (`data.thing1.value invalid: …` when printed).
    """
    openid = row.get(OPENID_COLUMN)
    problems: list[FieldProblem] = []
    if not isinstance(openid, str) or not openid:
        problems.append(
            FieldProblem(OPENID_COLUMN, "", EMPTY, "the audience row has no openid value")
        )
    if spec.kind == "customer_service":
        return _render_custom(spec._plan, row, str(openid or ""), problems)

    data: dict[str, str] = {}
    plan = spec._plan  # one private-attribute read: pydantic's __getattr__ costs ~1 µs each
    verdicts = plan.verdicts
    for key, parts in plan.data.items():
        try:
            value = data[key] = _fill(parts, row)
        except _Missing as missing:
            problems.append(_missing(key, missing.column))
            continue
        # WeChat's field rules, once per distinct (key, value): constant fields and
        # repeated values (dates, amounts, product names) skip the character scan.
        problem = verdicts.get((key, value), _UNSEEN)
        if problem is _UNSEEN:
            problem = check_field(key, value)
            if len(verdicts) >= VERDICT_CACHE_SIZE:
                verdicts.clear()
            verdicts[key, value] = problem
        if problem is not None:
            problems.append(problem)
    extras: dict[str, str] = {}
    for name, parts in plan.extras:
        try:
            extras[name] = _fill(parts, row)
        except _Missing as missing:
            problems.append(_missing(name, missing.column))
    if problems:
        return problems
    miniprogram = (
        MiniProgram(appid=spec.miniprogram.appid, pagepath=extras.get("miniprogram.pagepath", ""))
        if spec.miniprogram is not None
        else None
    )
    # Validated constructors: no slower than model_construct here (2–4 µs, bench/sender.py
    # --micro), and the models keep their own checks.
    if spec.kind == "template":
        return TemplateMessage(
            touser=openid,
            template_id=spec.template_id,
            data=data,
            url=extras.get("url") or None,
            miniprogram=miniprogram,
            client_msg_id=client_msg_id,
        )
    return SubscribeMessage(
        touser=openid,
        template_id=spec.template_id,
        data=data,
        page=extras.get("page") or None,
        miniprogram=miniprogram,
    )


def _render_custom(
    plan: _Plan, row: Mapping[str, Any], openid: str, problems: list[FieldProblem]
) -> RenderedMessage | list[FieldProblem]:
    assert plan.text is not None  # the spec's validator requires a text
    try:
        text = _fill(plan.text, row)
    except _Missing as missing:
        problems.append(_missing("text", missing.column))
    else:
        if not text.strip():
            problems.append(FieldProblem("text", text, EMPTY, "the rendered text is empty"))
    if problems:
        return problems
    return CustomMessage(touser=openid, msgtype="text", content={"content": text})
