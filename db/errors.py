"""Database errors named without their text: a driver's message can quote the SQL, its
parameters or a value a query read (`invalid input syntax for type integer: "root:x:0:0…"`),
so what reaches a log, /health, `campaigns.status_reason` or an artifact is the error's class
and its code, never its message."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

MISSING_TABLE_HINT = "a table is missing; run `wxpush db upgrade`"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on: a database error often arrives wrapped (in an
    AudienceQueryError, or in Prefect's RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception that SQLAlchemy wrapped, else `exc` itself."""
    if isinstance(exc, StatementError) and isinstance(exc.orig, BaseException):
        return exc.orig
    return exc


def error_code(exc: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE or SQLite's error name (`SQLITE_BUSY`), when the driver gives one."""
    orig = driver_error(exc)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    return str(code) if code else None


def error_name(exc: BaseException) -> str:
    """`OperationalError (UndefinedTable, SQLSTATE 42P01)`: what failed, value-free."""
    orig = driver_error(exc)
    details = [type(orig).__name__] if type(orig).__name__ != type(exc).__name__ else []
    code = error_code(exc)
    if code:
        details.append(f"SQLSTATE {code}" if code[0].isdigit() else code)
    return f"{type(exc).__name__} ({', '.join(details)})" if details else type(exc).__name__


def is_missing_table(exc: BaseException) -> bool:
    """Whether the database says a table does not exist (an unmigrated database)."""
    return error_code(exc) == "42P01" or str(driver_error(exc)).startswith("no such table")


def about_the_data(exc: BaseException) -> bool:
    """True when `exc` says this data cannot be stored (retrying cannot help); False when it
    says the database cannot store anything right now (retry, and report unhealthy). The
    receiver's and the push API's group commits split a batch on the first kind."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        exc = exc.orig or exc  # a driver's own TypeError / OverflowError, wrapped
    return isinstance(exc, ValueError | TypeError | ArithmeticError)


def describe(exc: BaseException) -> str:
    """A short, value-free description for /health and logs (SQLAlchemy's message carries
    the SQL and parameters), with what to do when the schema is missing."""
    text = error_name(exc)
    return f"{text}: {MISSING_TABLE_HINT}" if is_missing_table(exc) else text
