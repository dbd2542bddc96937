"""What ``crmsync_failing_records`` costs when read from error rows (``failing_from_errors``).

A waiting change is failing when the errors table holds a row for the same record and object
stamped at or after its enqueue time: one correlated probe per waiting change. The query is
timed on the loaded store without the recommended index on the errors' (record_id,
failed_at), then with it (built for the measurement and dropped again, so that the other
measurements see the reference schema as it is).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from benchmarks.stats import median
from exporter.collection import StoreReader
from exporter.config import StoreConfig

INDEX = "ix_sync_error_record_failed_at"
INDEX_DDL = f"CREATE INDEX {INDEX} ON sync_error (record_id, failed_at)"


def measure(url: str, config: StoreConfig, runs: int) -> dict[str, Any]:
    """Medians (ms) of the failing-changes query without and with the index, and its build."""
    mapping = config.mapping.model_copy(update={"failing_from_errors": True})
    reader = StoreReader(config.model_copy(update={"mapping": mapping}))
    statement = reader.queries.failing()
    assert statement is not None
    writer = sa.create_engine(url)
    try:
        try:
            without: list[float] | None = _timed(reader, statement, runs)[0]
        except sa.exc.OperationalError:
            without = None  # past the store's query_timeout: a scan per waiting change
        started = time.perf_counter()
        with writer.begin() as connection:
            connection.exec_driver_sql(INDEX_DDL)
            if writer.dialect.name == "postgresql":
                connection.exec_driver_sql("ANALYZE sync_error")
        index_s = time.perf_counter() - started
        try:
            with_index, failing = _timed(reader, statement, runs)
        finally:
            with writer.begin() as connection:
                connection.exec_driver_sql(f"DROP INDEX {INDEX}")
    finally:
        reader.close()
        writer.dispose()
    return {
        "without_index_ms": None if without is None else median(without),
        "timeout_s": config.query_timeout,
        "index_s": index_s,
        "with_index_ms": median(with_index),
        "failing": failing,
        "runs": runs,
    }


def _timed(reader: StoreReader, statement: Any, runs: int) -> tuple[list[float], int]:
    timings: list[float] = []
    failing = 0
    with reader.engine.connect() as connection:
        for _ in range(runs):
            started = time.perf_counter()
            rows = connection.execute(statement).all()
            timings.append((time.perf_counter() - started) * 1000)
            failing = sum(int(row.failing) for row in rows)
    return timings, failing
