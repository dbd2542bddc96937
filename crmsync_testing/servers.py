"""The test database servers and programs: where they are, and what to do without them."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

POSTGRES_ADMIN = os.environ.get(
    "CRMSYNC_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN = os.environ.get("CRMSYNC_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip a test that needs something missing here; in CI that is a failure, not a skip."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required, not skipped)")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)")
        raise AssertionError  # unreachable: unavailable() raised
    return path


def server_engine(url: str, what: str) -> sa.Engine:
    """An engine on a test server that answers; the test is unavailable when it does not."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        engine.dispose()
        unavailable(f"{what} is not reachable at {url}: {error.orig}")
    return engine


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose search_path is a schema of its own, dropped afterwards."""
    admin = server_engine(POSTGRES_ADMIN, "PostgreSQL")
    schema = f"crmsync_t_{uuid.uuid4().hex[:10]}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.make_url(POSTGRES_ADMIN).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@contextmanager
def mariadb_database() -> Iterator[str]:
    """A URL naming a database of its own, dropped afterwards."""
    admin = server_engine(MARIADB_ADMIN, "MariaDB")
    database = f"crmsync_t_{uuid.uuid4().hex[:10]}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {database}"))
    url = sa.make_url(MARIADB_ADMIN).set(database=database)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP DATABASE {database}"))
        admin.dispose()
