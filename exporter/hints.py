"""The wording of configuration and URL messages: what is wrong, the value, and what to write."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

SUPPORTED_URLS = (
    "postgresql+psycopg://user@host:5432/db, mysql+pymysql://user@host:3306/db "
    "or sqlite:///path/to/store.db"
)
# The driver the exporter is built and tested with, per database; MariaDB speaks MySQL's protocol.
_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql", "sqlite": "pysqlite"}
# What people write from other tools' habits, and what they mean.
_ALIASES = {"postgres": "postgresql", "pgsql": "postgresql", "psql": "postgresql"}
_SHOWN_LENGTH = 60


def url_problem(text: str) -> str | None:
    """Why ``text`` is not a store URL the exporter can use; None when it is one.

    A URL is shown only with its password hidden, and not at all when it cannot be parsed
    (its password could be anywhere in it).
    """
    scheme, separator, _ = text.partition("://")
    if not separator:
        return f"not a database URL (no scheme://); use {SUPPORTED_URLS}"
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        return f"not a database URL (a malformed host, port or query?); use {SUPPORTED_URLS}"
    shown = url.render_as_string(hide_password=True)
    backend, _, driver = url.drivername.partition("+")
    if backend in _ALIASES:
        fixed = url.set(drivername=f"{_ALIASES[backend]}+{_DRIVERS[_ALIASES[backend]]}")
        return (
            f"{shown}: the scheme {scheme + '://'!r} is not SQLAlchemy's; write "
            f"{fixed.render_as_string(hide_password=True)}"
        )
    if backend not in _DRIVERS:
        return f"{shown}: database {backend!r} is not supported; use {SUPPORTED_URLS}"
    wanted = _DRIVERS[backend]
    if not driver and backend != "sqlite":
        fixed = url.set(drivername=f"{backend}+{wanted}")
        return (
            f"{shown}: names no driver, and SQLAlchemy's default for {backend} is not "
            f"installed; write {fixed.render_as_string(hide_password=True)}"
        )
    if driver and driver != wanted:
        fixed = url.set(drivername=f"{backend}+{wanted}")
        return (
            f"{shown}: the driver {driver!r} is not supported; write "
            f"{fixed.render_as_string(hide_password=True)}"
        )
    return None


def shown(value: Any) -> str:
    """A value from the file as a message quotes it: short, on one line."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= _SHOWN_LENGTH else text[: _SHOWN_LENGTH - 3] + "..."


def type_problem(kind: str, message: str, value: Any, key: str) -> str:
    """A validation error of the file, in our words: what is wanted, and the value given."""
    given = "the URL given" if key == "url" else shown(value)
    if kind in ("tuple_type", "list_type", "set_type", "frozen_set_type"):
        example = f"[{value}]" if isinstance(value, str | int | float) else "[a, b]"
        return f"a list is wanted, not {given}; write {example} or one '- ' item per line"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"a mapping (key: value) is wanted, not {given}"
    if kind == "string_type":
        return f"a text value is wanted, not {given}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"a whole number is wanted, not {given}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"a number is wanted, not {given}"
    if kind in ("bool_type", "bool_parsing"):
        return f"true or false is wanted, not {given}"
    if kind == "too_short":
        return "at least one value is wanted"
    if message.startswith("Input should be "):
        return f"must be {message.removeprefix('Input should be ')}, not {given}"
    return message


def unreadable(path: Path | str, error: OSError) -> str:
    """Why the file at ``path`` cannot be read, with what usually causes it."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOENT:
        where = "" if Path(path).is_absolute() else f"; relative to {os.getcwd()}"
        return f"cannot read {path}: {reason}{where}"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read {path}: {reason} for the user the exporter runs as"
    if error.errno == errno.EISDIR:
        return f"cannot read {path}: it is a directory, not a file"
    return f"cannot read {path}: {reason}"
