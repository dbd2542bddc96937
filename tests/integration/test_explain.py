"""On PostgreSQL, no query of the exporter reads the history table sequentially.

The store is filled like one that has lived for weeks (200,000 history rows over 23 days,
vacuumed and analysed), so the planner sees realistic statistics. The statements are the ones
a real first and steady-state cycle send, captured as they are sent with their parameters,
plus the statements a quiet cycle may skip (gap probes, the last-hour count), built by
``exporter.queries.build_queries``: a new query cannot escape the check.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Select

from crmsync_testing.filled_stores import PostgresStore, Size, exporter_settings
from crmsync_testing.helpers import store_config
from crmsync_testing.servers import postgres_schema
from crmsync_testing.statements import StatementRecorder
from exporter.collection import StoreReader
from exporter.feeds import PAGE_ROWS
from exporter.queries import ChangeFeedQueries, StoreQueries

pytestmark = pytest.mark.postgres

HISTORY = "sync_history"
# Not queries, or not used by the reference three-table layout.
NOT_STEADY = {"filtered", "stamped", "rows_since"}
# Not queries: they read the rows the queries return.
DECODERS = {"decode", "read_moment", "backlog_row", "hour_row", "failing_row"}


@pytest.fixture(scope="module")
def store() -> Iterator[PostgresStore]:
    """One schema for the module (filling it is the slow part), dropped afterwards."""
    with postgres_schema() as url:
        store = PostgresStore(url, history_per_second=0.1)
        try:
            store.fill(Size(pending=20_000, history=200_000, errors=10_000), lambda _: None)
            yield store
        finally:
            store.close()


def seq_scans(plan: dict[str, Any]) -> Iterator[str]:
    """Relations read by a sequential scan anywhere in a JSON plan."""
    if plan.get("Node Type") == "Seq Scan":
        yield str(plan.get("Relation Name"))
    for child in plan.get("Plans", []):
        yield from seq_scans(child)


def explain(connection: Connection, sql: str, parameters: Any) -> dict[str, Any]:
    row = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", parameters).one()
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def compiled(connection: Connection, statement: Select[Any]) -> tuple[str, dict[str, Any]]:
    sql = statement.compile(dialect=connection.dialect)
    return str(sql), dict(sql.params)


def test_every_query_builder_is_classified() -> None:
    """A new query method must be added to the checks below."""
    known = {"now", "backlog", "future_rows", "synced_between", "max_id", "row_moment", "failing"}
    known |= {"count_later_than"}
    known |= {"rows_after", "rows_in_ranges"} | NOT_STEADY | DECODERS
    for cls in (StoreQueries, ChangeFeedQueries):
        methods = {
            name
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")
        }
        assert methods <= known, f"unclassified query builders: {methods - known}"


def test_no_statement_scans_the_history_table(store: PostgresStore) -> None:
    reader = StoreReader(store_config(store.url, **exporter_settings()))
    recorder = StatementRecorder(reader.engine)
    try:
        # The first collection: the newest ids, never the whole history.
        assert reader.read().error is None
        store.trickle(history=60, errors=3, pending=60)
        assert reader.read().error is None
        statements = [(s.sql, s.parameters) for s in recorder.take()]
        queries = reader.queries
        history, errors = queries.history, queries.errors
        assert history is not None
        assert errors is not None
        with reader.engine.connect() as connection:
            newest = int(connection.execute(history.max_id()).scalar_one())
            newest_error = int(connection.execute(errors.max_id()).scalar_one())
            hour_end = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
            hour_start = hour_end - timedelta(hours=1)
            for statement in (
                history.row_moment(newest),
                history.rows_after(newest - 60, PAGE_ROWS),
                history.rows_in_ranges([(newest - 100, newest - 90), (newest - 5, newest)]),
                errors.rows_after(newest_error - 3, PAGE_ROWS),
                errors.rows_in_ranges([(newest_error - 10, newest_error - 8)]),
                queries.synced_between(hour_start, hour_end),
            ):
                statements.append(compiled(connection, statement))
            assert len(statements) >= 16
            for sql, parameters in statements:
                plan = explain(connection, sql, parameters)
                assert HISTORY not in set(seq_scans(plan)), f"{sql}\n{plan}"
    finally:
        reader.close()
