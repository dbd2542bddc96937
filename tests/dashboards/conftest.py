"""Fixtures of the dashboard tests: databases on PostgreSQL and MariaDB, kept for a module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import mariadb_database, postgres_schema
from tests.dashboards.grafana_server import SqlDialect


def store_engine(url: str, dialect: SqlDialect, time_zone: str | None = None) -> sa.Engine:
    """An engine whose sessions run as Grafana's datasource runs them.

    MySQL/MariaDB: in UTC, as the MySQL datasource's "Session timezone" setting makes it (the
    store keeps UTC); PostgreSQL: in the server's zone, Grafana sets none. ``time_zone``
    overrides either."""
    engine = sa.create_engine(url)
    zone = time_zone or ("+00:00" if dialect == "mysql" else None)
    if zone is not None:

        @sa.event.listens_for(engine, "connect")
        def _session_zone(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(
                    f"SET time_zone = '{zone}'" if dialect == "mysql" else f"SET TIME ZONE '{zone}'"
                )

    return engine


@contextmanager
def empty_database(dialect: SqlDialect) -> Iterator[str]:
    """A database of its own on the dialect's server, dropped afterwards."""
    with postgres_schema() if dialect == "postgresql" else mariadb_database() as url:
        yield url


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def sql_server(request: pytest.FixtureRequest) -> Iterator[tuple[sa.Engine, SqlDialect]]:
    """An empty database on PostgreSQL, then on MariaDB, for the module's tests to fill."""
    dialect: SqlDialect = "postgresql" if request.param == "postgresql" else "mysql"
    with empty_database(dialect) as url:
        engine = store_engine(url, dialect)
        yield engine, dialect
        engine.dispose()
