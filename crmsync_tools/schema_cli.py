"""The ``crmsync-schema`` command: create the reference store, or print its DDL for a dialect."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, Dialect, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable

from exporter.arguments import command_parser, setup_logging_from
from exporter.schema import create_reference_schema, sync_error, sync_history, sync_queue

REFERENCE_TABLES = (sync_queue, sync_history, sync_error)

URL_ENVIRONMENT = "CRMSYNC_STORE_URL"
"""Read when ``--store.url`` is not given, so a password need not appear on a command line."""


class StoreError(Exception):
    """A store URL that cannot be used or a database that cannot be reached; one line to show."""


def parse_store_url(text: str) -> URL:
    try:
        return make_url(text)
    except ArgumentError:
        # Not echoed: a malformed URL may still carry a password.
        raise StoreError(
            "--store.url is not a SQLAlchemy database URL "
            "(e.g. postgresql+psycopg://user@host:5432/db or sqlite:///sync.db)"
        ) from None


def display(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def open_engine(url: URL, **kwargs: Any) -> Engine:
    """An engine for ``url``; a missing dialect or driver becomes a StoreError."""
    try:
        return create_engine(url, **kwargs)
    except NoSuchModuleError:
        raise StoreError(
            f"{display(url)}: unknown database dialect {url.drivername!r} "
            "(use postgresql+psycopg, mysql+pymysql, mariadb+pymysql or sqlite)"
        ) from None
    except ModuleNotFoundError as error:
        raise StoreError(
            f"{display(url)}: the database driver {error.name!r} is not installed"
        ) from None
    except ArgumentError as error:
        raise StoreError(f"{display(url)}: {error}") from None


def describe_error(error: BaseException, url: URL) -> str:
    """The first line of a database error, without the URL's password even if echoed."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    text = lines[0].strip() if lines else type(cause).__name__
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def dialect_for(url: URL) -> Dialect:
    """The URL's SQL dialect, without importing its driver or connecting."""
    try:
        dialect: Dialect = url.get_dialect()()
    except NoSuchModuleError:
        raise StoreError(f"unknown database dialect {url.drivername!r}") from None
    return dialect


def reference_ddl(dialect: Dialect) -> list[str]:
    """CREATE TABLE and CREATE INDEX statements of the reference store, in creation order."""
    statements: list[str] = []
    for table in REFERENCE_TABLES:
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda index: str(index.name)):
            statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    return statements


def create_schema(url: URL) -> tuple[list[str], list[str]]:
    """Create the missing reference tables; return (created, already present) table names."""
    engine = open_engine(url)
    try:
        wanted = [table.name for table in REFERENCE_TABLES]
        present = set(inspect(engine).get_table_names())
        create_reference_schema(engine)
    except SQLAlchemyError as error:
        raise StoreError(f"{display(url)}: {describe_error(error, url)}") from None
    finally:
        engine.dispose()
    return [name for name in wanted if name not in present], [n for n in wanted if n in present]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command_parser(
        "crmsync-schema",
        "Create the reference sync store (tables sync_queue, sync_history, sync_error and "
        "the indexes the exporter's queries use) in a database. Tables that exist are "
        "left as they are, so running it twice is harmless.",
    )
    parser.add_argument(
        "--store.url",
        dest="store_url",
        default=os.environ.get(URL_ENVIRONMENT),
        help=f"SQLAlchemy URL of the database (default: ${URL_ENVIRONMENT})",
    )
    parser.add_argument(
        "--print-sql",
        dest="print_sql",
        action="store_true",
        help="print the DDL for the URL's dialect instead of running it (does not connect; "
        "a bare dialect such as postgresql:// is enough)",
    )
    args = parser.parse_args(argv)
    if not args.store_url:
        parser.error(f"--store.url is required (or set {URL_ENVIRONMENT})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging_from(args)
    try:
        url = parse_store_url(args.store_url)
        if args.print_sql:
            for statement in reference_ddl(dialect_for(url)):
                print(f"{statement};\n")
            return 0
        created, present = create_schema(url)
    except StoreError as error:
        print(f"crmsync-schema: {error}", file=sys.stderr)
        return 1
    if created:
        print(f"{display(url)}: created {', '.join(created)} with their indexes")
    if present:
        print(f"{display(url)}: {', '.join(present)} already present, left as they are")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
