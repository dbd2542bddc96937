"""A store without a record name column: ``record_name: null``, and the dashboards' SQL adapts."""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync_testing.grafana_server import TimeRange, run_sql
from crmsync_testing.helpers import store_config, utcnow
from crmsync_tools.dashboard_sql import SqlDialect, StoreSql

metadata = sa.MetaData()
failures = sa.Table(
    "failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("object_type", sa.String(32), nullable=False),
    sa.Column("record_id", sa.String(32), nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(64), nullable=False),
    sa.Column("error_message", sa.Text, nullable=False),
    sa.Column("failed_at", sa.DateTime, nullable=False),
)


def as_grafana_sends_it(sql: str) -> str:
    """The variables as a dashboard opened with "All" selected and no search interpolates them."""
    values = {"page": "1", "search": ""}
    sql = re.sub(
        r"\$\{(\w+):queryparam\}",
        lambda m: f"var-{m[1]}={values.get(m[1], '%24__all')}",
        sql,
    )
    return re.sub(r"\$\{(\w+):percentencode\}", "", sql)


@pytest.mark.parametrize("server", ["postgres_url", "mariadb_url"])
def test_the_errors_browser_without_record_names(
    server: str, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue(server))
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "object_type": "lead",
            "record_id": f"r{n}",
            "operation": "insert",
            "direction": "to_crm",
            "error_code": "DUPLICATE_VALUE",
            "error_message": f"duplicate {n}",
            "failed_at": now - timedelta(minutes=n),
        }
        for n in range(7)
    ]
    with engine.begin() as connection:
        connection.execute(failures.insert(), rows)
    store = store_config(url, mapping={"errors": {"table": "failures", "record_name": None}})
    assert store.mapping.errors is not None
    assert store.mapping.errors.record_name is None
    dialect: SqlDialect = "postgresql" if server == "postgres_url" else "mysql"
    sql = StoreSql(store, dialect).failed_records(page_size=50)
    assert "record_name AS record_name" not in sql
    window = TimeRange(
        now.replace(tzinfo=UTC) - timedelta(hours=1), now.replace(tzinfo=UTC) + timedelta(1)
    )
    frame = run_sql(engine, as_grafana_sends_it(sql), "A", window, dialect)["frames"][0]
    fields = [field["name"] for field in frame["schema"]["fields"]]
    columns = dict(zip(fields, frame["data"]["values"], strict=True))
    with engine.connect() as connection:
        expected = connection.execute(sa.text("SELECT COUNT(*) FROM failures")).scalar_one()
    assert sorted(columns["record_id"]) == sorted(f"r{n}" for n in range(expected))
    assert columns["record_name"] == [None] * expected
    engine.dispose()
