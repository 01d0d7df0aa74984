"""WeChat's per-type rules for template field values, kept in one place.

WeChat answers **47003** (``argument invalid! data.thing11.value invalid``) when a value of a
*category template* breaks the rule of its type, and the message is not sent. 47003 is permanent,
so wxpush checks every rendered row with these rules before sending it: the local simulator uses
the same rules to answer 47003 the way WeChat does.

A category-template key is a type prefix followed by digits (``thing11``, ``character_string2``,
``time01``). The prefix decides the rule. Old "history" keys (``first``, ``keyword1``…,
``remark``) and every other key fit no rule: WeChat folds long text in those instead of failing,
so they are only checked for emptiness. "Characters" are Unicode code points (one Chinese
character counts as 1), and values are never stripped: a leading space is a character too.

Rules (sources: docs/wechat-protocol.md, "Template messages", and the 订阅消息参数值内容限制
table it cites; ``[A#]`` marks our own assumption, explained below the table):

=================  =====  =====================================================================
type               limit  what the value may contain
=================  =====  =====================================================================
thing              20     any printable character: Chinese, digits, letters, symbols [A1]
short_thing        5      like ``thing`` [A2]
number             32     digits with an optional decimal part (``3``, ``3.14``); no sign [A3]
letter             32     letters A–Z, a–z [A4]
symbol             5      symbols only [A5]
character_string   32     digits, letters, symbols; no Chinese [A5]
time               —      ``HH:MM`` or ``HH:MM:SS`` (24 h), optionally after a date and a
                          space; two of those joined by ``~`` [A6]
date               —      a date, optionally followed by a space and a 24 h time; two of those
                          joined by ``~`` [A6]
amount             10     one currency symbol + up to 10 digits (decimals allowed) + an optional
                          trailing 元: ``¥12.50``, ``$3``, ``￥100元`` [A7]
phone_number       17     digits and symbols: ``+86-0766-66888866`` [A5]
car_number         8      letters and digits; the first and the last may be Chinese:
                          ``粤A8Z888挂``
name               10/20  Chinese, letters, spaces, symbols; at most 10 when it contains any
                          Chinese (mixed names count as Chinese names), else at most 20 [A8]
phrase             5      Chinese characters only
const              20     any printable character; the platform-approved value list is not
                          known to us, so only the length is checked [A1]
enum               —      any printable character; the allowed values are not known to us [A1]
(any type)         —      an empty or whitespace-only value is invalid (rule ``empty``); this
                          applies to old-style and unknown keys too
=================  =====  =====================================================================

Assumptions (where the sources are silent we reject rather than accept, because a 47003 from
WeChat costs quota and may stop the campaign, while a row we reject is recorded with its reason):

- **[A1]** "Printable" excludes line breaks, tabs and other control or invisible characters
  (Unicode categories Cc, Cf, Zl, Zp, Cs): the source table forbids control characters in
  symbols, and they have no business in a one-line field. Emoji are accepted.
- **[A2]** ``short_thing`` is undocumented (WeChat community complaint); we treat it as a
  ``thing`` of at most 5 characters. Unconfirmed: widen it if WeChat accepts more.
- **[A3]** ``number`` counts the decimal point within the 32 characters. A sign is rejected:
  a WeChat community answer reports negative numbers failing with 47003.
- **[A4]** Letters are ASCII letters only (no ``é``, no full-width ``Ａ``); digits are ASCII
  ``0``–``9`` only, everywhere.
- **[A5]** A *symbol* is an ASCII punctuation character, its full-width form (``！`` … ``～``),
  or common Chinese/typographic punctuation and currency signs (``，。、《》【】“”…—·¥￥€£°``
  and the like; see ``_SYMBOLS``). The source defines symbols as "common symbols other than
  Chinese, English and digits, no control characters". **A space is not a symbol**, so
  ``character_string``, ``symbol`` and ``phone_number`` reject spaces (``name`` allows them).
- **[A6]** Time: two-digit hours, minutes and seconds (``09:05``, not ``9:05``), hours 00–23.
  Dates, from the source's list: ``2019年10月1日``, ``2019年10月``, ``10月1日`` (month and day
  with 1 or 2 digits), and ``2019-10-01``, ``2019-10``, ``10-01`` with ``-``, ``/`` or ``.``
  (2 digits for month and day, one separator kind per date). Dates must exist on the calendar
  (``2019-02-30`` fails). Date and time are separated by exactly one space; a range is exactly
  two values joined by ``~`` with no spaces. A 2019 community thread reports a ``date`` field
  rejecting ``2019年08月13日 15:00``, although the docs allow a time there: prefer a ``time``
  field for values with a clock time.
- **[A7]** The currency symbol is any one character of Unicode category Sc (``¥ ￥ $ € £`` …).
  The 10-digit limit counts integer and decimal digits together (one source says 12; we use the
  lower figure). A plain number (``3.00``, ``3.00元``) is rejected: a WeChat community answer
  fixed 47003 on ``3.00`` by adding the currency symbol. No sign, no thousands separators.
- **[A8]** Digits are not allowed in ``name``.

Public surface: :class:`FieldProblem`, :func:`field_type`, :func:`check_field`,
:func:`validate_template_data`, :class:`TemplateDataError`.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date

__all__ = [
    "FieldProblem",
    "TemplateDataError",
    "check_field",
    "field_type",
    "validate_template_data",
]


# --- problems -------------------------------------------------------------------------------

EMPTY = "empty"
"""The ``rule`` of a problem whose value is empty or whitespace only."""


@dataclass(frozen=True)
class FieldProblem:
    """One template value that WeChat would refuse with 47003."""

    key: str
    value: str
    rule: str
    reason: str

    def __str__(self) -> str:
        return f"data.{self.key}.value invalid: {self.reason}"

    @property
    def wechat_detail(self) -> str:
        """The field part of WeChat's own 47003 errmsg, for the simulator to echo.

        WeChat wraps it as ``argument invalid! <detail> rid: …``; ``emtpy`` is WeChat's spelling.
        """
        if self.rule == EMPTY:
            return f"data.{self.key}.value is emtpy"
        return f"data.{self.key}.value invalid"


class TemplateDataError(ValueError):
    """Rendered template data breaks WeChat's field rules; sending it would return 47003."""

    def __init__(self, problems: Iterable[FieldProblem]) -> None:
        self.problems: list[FieldProblem] = list(problems)
        if not self.problems:
            raise ValueError("TemplateDataError needs at least one FieldProblem")
        count = len(self.problems)
        noun = "field" if count == 1 else "fields"
        listed = "; ".join(str(problem) for problem in self.problems)
        super().__init__(f"{count} template {noun} invalid: {listed}")

    def __reduce__(self) -> tuple[type[TemplateDataError], tuple[list[FieldProblem]]]:
        # Rebuild from the problems, not the message, so the error survives pickling
        # (Prefect serialises task exceptions).
        return (type(self), (self.problems,))


# --- character classes ----------------------------------------------------------------------

_HAN_RANGES: tuple[tuple[int, int], ...] = (
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x20000, 0x323AF),  # Extensions B–H and the Compatibility Supplement
)

_CJK_PUNCTUATION = "、。〈〉《》「」『』【】〔〕〖〗〜‘’“”…—–·•¥￥€£°"
_SYMBOLS: frozenset[str] = frozenset(
    string.punctuation
    + "".join(chr(ord(c) + 0xFEE0) for c in string.punctuation)  # full-width ！ … ～
    + _CJK_PUNCTUATION
)
"""What "symbol" means in WeChat's table [A5]. The ASCII space is deliberately absent."""

_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _is_chinese(ch: str) -> bool:
    code = ord(ch)
    return any(low <= code <= high for low, high in _HAN_RANGES)


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _is_letter(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def _is_symbol(ch: str) -> bool:
    return ch in _SYMBOLS


def _is_printable(ch: str) -> bool:
    return unicodedata.category(ch) not in _INVISIBLE_CATEGORIES


@dataclass(frozen=True)
class _Chars:
    """A set of allowed characters, with the words that explain it to a person."""

    allows: Callable[[str], bool]
    wording: str  # completes "<type> …; got 'x' at position n"


def _any_of(*tests: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda ch: any(test(ch) for test in tests)


_PRINTABLE = _Chars(
    _is_printable, "does not allow line breaks, tabs or other control or invisible characters"
)
_NUMBER_CHARS = _Chars(
    _any_of(_is_digit, lambda ch: ch == "."),
    "allows only digits and a decimal point (no sign, no thousands separators)",
)
_LETTERS = _Chars(_is_letter, "allows only letters A-Z and a-z")
_SYMBOL_CHARS = _Chars(_is_symbol, "allows only symbols such as ! ? - / # ， 。 (no spaces)")
_STRING_CHARS = _Chars(
    _any_of(_is_digit, _is_letter, _is_symbol),
    "allows only digits, letters and symbols, no Chinese and no spaces",
)
_PHONE_CHARS = _Chars(
    _any_of(_is_digit, _is_symbol), "allows only digits and symbols such as + - ( ) (no spaces)"
)
_CAR_CHARS = _Chars(
    _any_of(_is_chinese, _is_letter, _is_digit),
    "allows only Chinese characters, letters and digits",
)
_NAME_CHARS = _Chars(
    _any_of(_is_chinese, _is_letter, _is_symbol, lambda ch: ch == " "),
    "allows only Chinese characters, letters, spaces and symbols such as ·",
)
_CHINESE = _Chars(_is_chinese, "allows only Chinese characters")


# --- value shapes (the types whose rule is a format, not just a character set) ---------------

_TIME = re.compile(r"(?P<H>[0-9]{2}):(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2}))?")
_DATE_FORMATS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        r"(?P<y>[0-9]{4})年(?P<m>[0-9]{1,2})月(?P<d>[0-9]{1,2})日",
        r"(?P<y>[0-9]{4})年(?P<m>[0-9]{1,2})月",
        r"(?P<m>[0-9]{1,2})月(?P<d>[0-9]{1,2})日",
        r"(?P<y>[0-9]{4})(?P<sep>[-/.])(?P<m>[0-9]{2})(?P=sep)(?P<d>[0-9]{2})",
        r"(?P<y>[0-9]{4})[-/.](?P<m>[0-9]{2})",
        r"(?P<m>[0-9]{2})[-/.](?P<d>[0-9]{2})",
    )
)
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_AMOUNT = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?元?")
_AMOUNT_MAX_DIGITS = 10


def _quote(value: str, limit: int = 40) -> str:
    """repr() of a value, shortened so a reason stays one readable line."""
    return repr(value if len(value) <= limit else value[: limit - 1] + "…")


def _is_time(text: str) -> bool:
    match = _TIME.fullmatch(text)
    if match is None:
        return False
    return int(match["H"]) <= 23 and int(match["M"]) <= 59 and int(match["S"] or 0) <= 59


def _is_date(text: str) -> bool:
    for pattern in _DATE_FORMATS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        parts = match.groupdict()
        month = int(parts["m"])
        if not 1 <= month <= 12:
            return False
        if parts.get("d") is None:
            return True
        year = int(parts["y"]) if parts.get("y") else 2000  # a leap year admits 02-29
        try:
            date(year, month, int(parts["d"]))
        except ValueError:
            return False
        return True
    return False


def _is_date_time(text: str) -> bool:
    day, space, clock = text.partition(" ")
    return bool(space) and _is_date(day) and _is_time(clock)


def _is_range_of(point: Callable[[str], bool], value: str) -> bool:
    """A single point, or exactly two points joined by ``~``."""
    parts = value.split("~")
    return len(parts) <= 2 and all(point(part) for part in parts)


_TIME_EXAMPLES = (
    "a 24-hour time (15:01 or 15:01:30), optionally after a date and a space "
    "(2019-10-01 15:01, 2019年10月1日 15:01), or two of those joined by ~ (15:01~16:00)"
)
_DATE_EXAMPLES = (
    "a date (2019-10-01, 2019/10/01, 2019.10.01, 2019年10月1日, 2019-10, 10-01), optionally "
    "followed by a space and a 24-hour time, or two of those joined by ~"
)


def _time_shape(value: str) -> str | None:
    if _is_range_of(lambda part: _is_time(part) or _is_date_time(part), value):
        return None
    return f"time must be {_TIME_EXAMPLES}; got {_quote(value)}"


def _date_shape(value: str) -> str | None:
    if _is_range_of(lambda part: _is_date(part) or _is_date_time(part), value):
        return None
    return f"date must be {_DATE_EXAMPLES}; got {_quote(value)}"


def _number_shape(value: str) -> str | None:
    if _DECIMAL.fullmatch(value):
        return None
    return (
        f"number must be digits with an optional decimal part, e.g. 42 or 3.14; got {_quote(value)}"
    )


def _amount_shape(value: str) -> str | None:
    if unicodedata.category(value[0]) != "Sc":
        return (
            "amount must start with one currency symbol such as ¥ or $ (e.g. ¥12.50); "
            f"got {_quote(value)}"
        )
    match = _AMOUNT.fullmatch(value[1:])
    if match is None:
        return (
            "amount must be one currency symbol, then digits with an optional decimal part and "
            f"an optional trailing 元 (e.g. ¥12.50 or ¥12.50元); got {_quote(value)}"
        )
    digits = len(match["int"]) + len(match["frac"] or "")
    if digits > _AMOUNT_MAX_DIGITS:
        return f"amount allows at most {_AMOUNT_MAX_DIGITS} digits; got {digits}"
    return None


def _car_number_shape(value: str) -> str | None:
    if any(_is_chinese(ch) for ch in value[1:-1]) or all(_is_chinese(ch) for ch in value):
        return (
            "car_number may have a Chinese character only first and last, with letters and "
            f"digits between (e.g. 粤A8Z888挂); got {_quote(value)}"
        )
    return None


# --- the rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """One field type: which characters, how many, and (for formats) which shape."""

    chars: _Chars | None = None
    max_chars: int | None = None
    max_chars_with_chinese: int | None = None  # a tighter limit once any Chinese appears
    shape: Callable[[str], str | None] | None = None


_RULES: dict[str, _Rule] = {
    "thing": _Rule(_PRINTABLE, 20),
    "short_thing": _Rule(_PRINTABLE, 5),
    "number": _Rule(_NUMBER_CHARS, 32, shape=_number_shape),
    "letter": _Rule(_LETTERS, 32),
    "symbol": _Rule(_SYMBOL_CHARS, 5),
    "character_string": _Rule(_STRING_CHARS, 32),
    "time": _Rule(shape=_time_shape),
    "date": _Rule(shape=_date_shape),
    "amount": _Rule(shape=_amount_shape),
    "phone_number": _Rule(_PHONE_CHARS, 17),
    "car_number": _Rule(_CAR_CHARS, 8, shape=_car_number_shape),
    "name": _Rule(_NAME_CHARS, 20, max_chars_with_chinese=10),
    "phrase": _Rule(_CHINESE, 5),
    "const": _Rule(_PRINTABLE, 20),
    "enum": _Rule(_PRINTABLE),
}

_KEY = re.compile(r"(?P<prefix>[a-z_]+)[0-9]+")


# --- public functions -----------------------------------------------------------------------


def field_type(key: str) -> str | None:
    """The type of a category-template key (``thing11`` → ``thing``), or None.

    None means WeChat applies no type rule: old-style keys (``first``, ``keyword3``, ``remark``)
    and anything that is not a known prefix followed by digits (``thingx``, ``Thing1``).
    """
    match = _KEY.fullmatch(key)
    if match is None or match["prefix"] not in _RULES:
        return None
    return match["prefix"]


def check_field(key: str, value: str) -> FieldProblem | None:
    """The first rule ``value`` breaks for ``key``, or None if WeChat should accept it."""
    if not value.strip():
        reason = "value is empty" if not value else "value is whitespace only"
        return FieldProblem(key, value, EMPTY, reason)
    kind = field_type(key)
    if kind is None:
        return None  # old-style keys are folded by WeChat, never refused for their content
    reason = _break(kind, _RULES[kind], value)
    return None if reason is None else FieldProblem(key, value, kind, reason)


def validate_template_data(data: Mapping[str, str]) -> list[FieldProblem]:
    """Every problem in ``data``, one per bad key, in the mapping's key order."""
    return [
        problem for key, value in data.items() if (problem := check_field(key, value)) is not None
    ]


def _break(kind: str, rule: _Rule, value: str) -> str | None:
    """Why ``value`` breaks ``rule``: characters first, then length, then shape."""
    if rule.chars is not None:
        for position, ch in enumerate(value, start=1):
            if not rule.chars.allows(ch):
                return f"{kind} {rule.chars.wording}; got {ch!r} at position {position}"
    limit, qualifier = rule.max_chars, ""
    if rule.max_chars_with_chinese is not None and any(_is_chinese(ch) for ch in value):
        limit, qualifier = rule.max_chars_with_chinese, " when it contains Chinese"
    if limit is not None and len(value) > limit:
        return f"{kind} allows at most {limit} characters{qualifier}; got {len(value)}"
    return rule.shape(value) if rule.shape is not None else None
