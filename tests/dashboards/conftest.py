"""Fixtures of the dashboard tests: a database per server kept for a whole module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import mariadb_database, postgres_schema
from tests.dashboards.grafana_server import SqlDialect


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def sql_server(request: pytest.FixtureRequest) -> Iterator[tuple[sa.Engine, SqlDialect]]:
    """An empty database on PostgreSQL, then on MariaDB, for the module's tests to fill."""
    opened = postgres_schema() if request.param == "postgresql" else mariadb_database()
    with opened as url:
        engine = sa.create_engine(url)
        dialect: SqlDialect = "postgresql" if request.param == "postgresql" else "mysql"
        if dialect == "mysql":
            # What the MySQL datasource's "Session timezone" setting does: the store keeps UTC.
            @sa.event.listens_for(engine, "connect")
            def _utc(dbapi_connection: Any, _record: Any) -> None:
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SET time_zone = '+00:00'")

        yield engine, dialect
        engine.dispose()
