"""Database errors are named by class and code, never by their text (which can quote values)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from db.errors import error_code, error_name, is_missing_table

VALUE = "root:x:0:0:root"


class _PgError(Exception):
    sqlstate = "22P02"


def test_a_postgresql_error_is_named_by_class_and_sqlstate_only() -> None:
    wrapped = DBAPIError(f"SELECT '{VALUE}'", {"v": VALUE}, _PgError(f"bad input: {VALUE}"))
    assert error_code(wrapped) == "22P02"
    assert error_name(wrapped) == "DBAPIError (_PgError, SQLSTATE 22P02)"
    assert not is_missing_table(wrapped)


def test_a_real_sqlite_error_names_its_error_name_and_knows_a_missing_table() -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(OperationalError) as caught, engine.connect() as conn:
        conn.execute(text(f"SELECT '{VALUE}' FROM callback_events"))
    name = error_name(caught.value)
    assert name == "OperationalError (SQLITE_ERROR)" and VALUE not in name
    assert is_missing_table(caught.value)


def test_an_error_without_a_code_is_its_class() -> None:
    assert error_name(ValueError(VALUE)) == "ValueError"
    assert error_name(sqlite3.OperationalError(VALUE)) == "OperationalError"
