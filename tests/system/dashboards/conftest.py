"""Fixtures of the dashboard tests: databases on PostgreSQL and MariaDB, kept for a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from crmsync_testing.grafana_server import SqlDialect, empty_database, store_engine


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def sql_server(request: pytest.FixtureRequest) -> Iterator[tuple[sa.Engine, SqlDialect]]:
    """An empty database on PostgreSQL, then on MariaDB, for the module's tests to fill."""
    dialect: SqlDialect = "postgresql" if request.param == "postgresql" else "mysql"
    with empty_database(dialect) as url:
        engine = store_engine(url, dialect)
        yield engine, dialect
        engine.dispose()
