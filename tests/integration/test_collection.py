"""Every metric equals an independent SQL count of the same rows, on each database.

Gauges count what is in the store; counters count the rows added since the exporter's
first read of it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from datetime import UTC, timedelta

import pytest
import sqlalchemy as sa

from crmsync_testing.helpers import (
    add_errors,
    add_history,
    add_pending,
    by_name,
    collect,
    collect_settled,
    error_counts,
    history_counts,
    lowered,
    newest_id,
    nonzero,
    runner_for,
    series_total,
    served_last_hour,
    sql_counts,
    synced_between,
    utcnow,
)
from exporter.metric_specs import LATENCY_BUCKETS
from exporter.schema import create_reference_schema, sync_history, sync_queue

QUEUE_COUNTS = (
    "SELECT object_type, operation, direction, COUNT(*) FROM sync_queue "
    "GROUP BY object_type, operation, direction"
)


@pytest.fixture
def engine(store_url: str) -> sa.Engine:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    return engine


def test_gauges_equal_the_stores_counts_and_counters_start_at_zero(
    store_url: str, engine: sa.Engine
) -> None:
    add_pending(engine, 300)
    add_history(engine, 2_000)
    add_errors(engine, 150)
    runner = runner_for(store_url)

    result = collect(runner)

    assert by_name(result, "crmsync_up") == {frozenset({("store", "main")}): 1.0}
    assert nonzero(series_total(result, "crmsync_pending_records")) == sql_counts(
        engine, QUEUE_COUNTS
    )
    # The history already there is not counted: the counters start at the exporter's start.
    synced = series_total(result, "crmsync_records_synced_total")
    assert len(synced) == 16
    assert set(synced.values()) == {0.0}
    assert nonzero(series_total(result, "crmsync_sync_latency_seconds_count")) == {}
    assert series_total(result, "crmsync_sync_errors_total") == {}


def test_counters_equal_the_rows_added_since_the_first_read(
    store_url: str, engine: sa.Engine
) -> None:
    add_history(engine, 2_000)
    add_errors(engine, 150)
    runner = runner_for(store_url)
    collect(runner)
    history_start, errors_start = newest_id(engine, "sync_history"), newest_id(engine, "sync_error")
    add_history(engine, 700, seed=7)
    add_errors(engine, 60, seed=8)

    result = collect_settled(runner)

    expected = history_counts(engine, history_start)
    assert sum(expected.values()) == 700
    assert nonzero(series_total(result, "crmsync_records_synced_total")) == expected
    assert nonzero(series_total(result, "crmsync_sync_latency_seconds_count")) == expected
    errors = lowered(nonzero(series_total(result, "crmsync_sync_errors_total")))
    assert errors == error_counts(engine, errors_start)


def test_oldest_pending_age_and_timestamp_follow_the_database_clock(
    store_url: str, engine: sa.Engine
) -> None:
    add_pending(engine, 200, age=3000)
    runner = runner_for(store_url)
    result = collect(runner)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                sync_queue.c.object_type,
                sync_queue.c.operation,
                sync_queue.c.direction,
                sa.func.min(sync_queue.c.enqueued_at),
            ).group_by(sync_queue.c.object_type, sync_queue.c.operation, sync_queue.c.direction)
        ).all()
    now = utcnow()
    oldest = series_total(result, "crmsync_oldest_pending_timestamp_seconds")
    ages = series_total(result, "crmsync_oldest_pending_age_seconds")
    assert len(rows) == len(oldest) > 0
    for object_type, operation, direction, first in rows:
        key = (object_type, operation, direction)
        expected = first.replace(tzinfo=UTC).timestamp()
        assert oldest[key] == pytest.approx(expected, abs=1.0)
        assert ages[key] == pytest.approx((now - first).total_seconds(), abs=5.0)


def test_latency_histogram_matches_the_rows(store_url: str, engine: sa.Engine) -> None:
    add_history(engine, 500)
    runner = runner_for(store_url)
    collect(runner)
    start = newest_id(engine, "sync_history")
    add_history(engine, 500, seed=9)
    result = collect_settled(runner)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(sync_history.c.enqueued_at, sync_history.c.synced_at).where(
                sync_history.c.id > start
            )
        )
        latencies = [(synced - enqueued).total_seconds() for enqueued, synced in rows]
    assert len(latencies) == 500
    buckets = by_name(result, "crmsync_sync_latency_seconds_bucket")
    for bound in [*LATENCY_BUCKETS, math.inf]:
        le = "+Inf" if bound == math.inf else f"{bound:g}"
        served = sum(value for labels, value in buckets.items() if ("le", le) in labels)
        assert served == sum(1 for latency in latencies if latency <= bound), le
    served_sum = sum(by_name(result, "crmsync_sync_latency_seconds_sum").values())
    assert served_sum == pytest.approx(sum(latencies), rel=1e-6)


def test_counters_follow_new_rows_and_restart_from_zero(store_url: str, engine: sa.Engine) -> None:
    add_history(engine, 12_000)  # more than the tail read on start
    add_errors(engine, 40)
    runner = runner_for(store_url)
    collect(runner)
    history_start, errors_start = newest_id(engine, "sync_history"), newest_id(engine, "sync_error")
    for seed in (11, 12, 13):
        add_history(engine, 321, seed=seed)
        add_errors(engine, 7, seed=seed)
        result = collect_settled(runner)
        assert nonzero(series_total(result, "crmsync_records_synced_total")) == history_counts(
            engine, history_start
        )
        assert lowered(nonzero(series_total(result, "crmsync_sync_errors_total"))) == (
            error_counts(engine, errors_start)
        )
    # A restart is a counter reset: the new process counts from its own start.
    restarted = runner_for(store_url)
    assert nonzero(series_total(collect(restarted), "crmsync_records_synced_total")) == {}
    history_start = newest_id(engine, "sync_history")
    add_history(engine, 44, seed=14)
    assert nonzero(
        series_total(collect_settled(restarted), "crmsync_records_synced_total")
    ) == history_counts(engine, history_start)


def test_rows_committed_out_of_id_order_are_counted_once(store_url: str, engine: sa.Engine) -> None:
    add_history(engine, 10)
    runner = runner_for(store_url)
    collect(runner)
    start = newest_id(engine, "sync_history")
    now = utcnow()
    row = {
        "object_type": "lead",
        "record_id": "r",
        "operation": "insert",
        "direction": "to_crm",
        "enqueued_at": now - timedelta(seconds=2),
        "synced_at": now,
    }
    # Ids 100 and 102 become visible before 101: as when a writer holding 101 commits last.
    with engine.begin() as connection:
        connection.execute(sync_history.insert(), [{**row, "id": 100}, {**row, "id": 102}])
    first = collect_settled(runner)
    assert series_total(first, "crmsync_records_synced_total")[("lead", "insert", "to_crm")] == 2
    with engine.begin() as connection:
        connection.execute(sync_history.insert(), [{**row, "id": 101}])
    for _ in range(3):  # later cycles must not count it again
        result = collect(runner)
        assert nonzero(series_total(result, "crmsync_records_synced_total")) == history_counts(
            engine, start
        )
        assert sum(history_counts(engine, start).values()) == 3


SLOW_ROW = {
    "object_type": "contact",
    "record_id": "r",
    "operation": "update",
    "direction": "from_crm",
}


def commit_out_of_order(engine: sa.Engine, fast_rows: int = 2) -> sa.RootTransaction:
    """A slow transaction takes the smaller id; a fast one commits larger ids first.

    Returns the slow transaction, still open: the caller commits it.
    """
    now = utcnow()
    row = {**SLOW_ROW, "enqueued_at": now - timedelta(seconds=1), "synced_at": now}
    slow = engine.connect()
    slow_transaction = slow.begin()
    slow.execute(sync_history.insert(), [row])
    done = threading.Event()

    def fast_writer() -> None:
        with engine.begin() as connection:
            connection.execute(sync_history.insert(), [row] * fast_rows)
        done.set()

    threading.Thread(target=fast_writer).start()
    assert done.wait(10)
    return slow_transaction


@pytest.fixture(params=["postgres_url", "mariadb_url"])
def concurrent_store(request: pytest.FixtureRequest) -> Iterator[tuple[str, sa.Engine]]:
    """A store on a server where transactions run side by side, with a little history."""
    url = str(request.getfixturevalue(request.param))
    engine = sa.create_engine(url, pool_size=3)
    create_reference_schema(engine)
    add_history(engine, 5)
    yield url, engine
    engine.dispose()


def test_concurrent_writers_committing_out_of_order(
    concurrent_store: tuple[str, sa.Engine],
) -> None:
    url, engine = concurrent_store
    runner = runner_for(url)
    collect(runner)
    start = newest_id(engine, "sync_history")
    slow_transaction = commit_out_of_order(engine)
    before_commit = collect(runner)
    assert by_name(before_commit, "crmsync_open_id_gaps") == {frozenset({("store", "main")}): 1}
    slow_transaction.commit()
    slow_transaction.connection.close()
    for _ in range(2):
        result = collect(runner)
        expected = history_counts(engine, start)
        assert sum(expected.values()) == 3
        assert nonzero(series_total(result, "crmsync_records_synced_total")) == expected


def test_a_transaction_open_at_start_is_counted_when_it_commits(
    concurrent_store: tuple[str, sa.Engine],
) -> None:
    url, engine = concurrent_store
    slow_transaction = commit_out_of_order(engine, fast_rows=3)
    runner = runner_for(url)

    # Started while the slow transaction is open: its id, below the newest, is watched.
    started = collect(runner)
    assert nonzero(series_total(started, "crmsync_records_synced_total")) == {}
    assert by_name(started, "crmsync_open_id_gaps") == {frozenset({("store", "main")}): 1}
    slow_transaction.commit()
    slow_transaction.connection.close()

    for _ in range(2):
        result = collect(runner)
        assert (
            series_total(result, "crmsync_records_synced_total")[("contact", "update", "from_crm")]
            == 1.0
        )
        assert sum(series_total(result, "crmsync_records_synced_total").values()) == 1.0


def test_configured_objects_read_zero_and_a_drained_backlog_reads_zero(
    store_url: str, engine: sa.Engine
) -> None:
    add_pending(engine, 50)
    runner = runner_for(store_url, objects=["lead", "contact", "account", "opportunity", "case"])
    collect(runner)
    with engine.begin() as connection:
        connection.execute(sync_queue.delete())
    result = collect(runner)
    pending = series_total(result, "crmsync_pending_records")
    ages = series_total(result, "crmsync_oldest_pending_age_seconds")
    expected = {
        (obj, op, direction)
        for obj in ("lead", "contact", "account", "opportunity", "case")
        for op in ("insert", "update")
        for direction in ("to_crm", "from_crm")
    }
    assert set(pending) == expected
    assert set(pending.values()) == {0.0}
    assert set(ages.values()) == {0.0}
    assert series_total(result, "crmsync_oldest_pending_timestamp_seconds") == {}
    synced = series_total(result, "crmsync_records_synced_total")
    assert synced[("case", "insert", "to_crm")] == 0.0


def test_error_codes_beyond_the_cap_fold_into_other(store_url: str, engine: sa.Engine) -> None:
    codes = [f"CODE_{index:02d}" for index in range(12)]
    add_errors(engine, 40, codes=codes)
    runner = runner_for(store_url, max_error_codes=5)
    collect(runner)
    add_errors(engine, 400, seed=5, codes=codes)
    result = collect_settled(runner)
    served = series_total(result, "crmsync_sync_errors_total")
    served_codes = {key[3] for key in served}
    assert len(served_codes - {"other"}) == 5
    assert "other" in served_codes
    # Folding bounds the series, never the counts.
    assert sum(served.values()) == 400
    folded = by_name(result, "crmsync_folded_label_values")
    assert folded[frozenset({("store", "main"), ("label", "error_code")})] == 7


def test_last_full_hour(store_url: str, engine: sa.Engine) -> None:
    add_history(engine, 1_500, hours=3)
    runner = runner_for(store_url)
    result = collect(runner)
    now = utcnow()
    hour_end = now.replace(minute=0, second=0, microsecond=0)
    if (now - hour_end).total_seconds() < 5:
        pytest.skip("too close to the hour boundary to compare")
    expected = synced_between(engine, hour_end - timedelta(hours=1), hour_end)
    assert served_last_hour(result) == expected
