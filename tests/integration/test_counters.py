"""Counters count from the exporter's first read, never fall, and introduce new series at 0."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync_testing.helpers import (
    Samples,
    add_errors,
    add_history,
    by_name,
    collect,
    history_counts,
    newest_id,
    nonzero,
    runner_for,
    scrape,
    series_total,
    store_config,
)
from exporter.collection import StoreReader
from exporter.runner import StoreRunner
from exporter.schema import create_reference_schema, sync_history

COUNTERS = (
    "crmsync_records_synced_total",
    "crmsync_sync_errors_total",
    "crmsync_sync_latency_seconds_count",
    "crmsync_sync_latency_seconds_bucket",
)
RECENT = 0.01
"""Hours: rows written now are stamped within the last 36 seconds."""
JUST_NOW = 0.0001
"""Hours: within the last 0.36 seconds."""


def synced(result: Samples) -> dict[tuple[str, ...], float]:
    return series_total(result, "crmsync_records_synced_total")


def empty_history(engine: sa.Engine) -> None:
    """Delete every history row and restart the ids, as TRUNCATE ... RESTART IDENTITY does."""
    with engine.begin() as connection:
        dialect = connection.dialect.name
        if dialect == "postgresql":
            connection.execute(sa.text("TRUNCATE sync_history RESTART IDENTITY"))
        elif dialect == "sqlite":
            connection.execute(sa.text("DELETE FROM sync_history"))
            connection.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'sync_history'"))
        else:
            connection.execute(sa.text("TRUNCATE TABLE sync_history"))


def restore(engine: sa.Engine, backup: list[dict[str, Any]]) -> None:
    """Replace the history with ``backup``, ids and id sequence as they were."""
    empty_history(engine)
    with engine.begin() as connection:
        connection.execute(sync_history.insert(), backup)
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.text(
                    "SELECT setval(pg_get_serial_sequence('sync_history', 'id'), "
                    "(SELECT MAX(id) FROM sync_history))"
                )
            )


def test_counters_never_decrease_whatever_happens_to_the_tables(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    add_history(engine, 100)
    runner = runner_for(store_url)
    previous: dict[tuple[str, ...], float] = {}

    def check(expected: float) -> None:
        series = synced(collect(runner))
        assert sum(series.values()) == expected
        fell = {key for key, value in previous.items() if series.get(key, 0.0) < value}
        assert not fell, f"counters fell: {fell}"
        previous.update(series)

    check(0)  # the history already there
    add_history(engine, 30, seed=1, hours=RECENT)
    check(30)

    # Retention: the oldest rows are purged. Nothing was counted twice or is taken back.
    with engine.begin() as connection:
        cut = connection.execute(sa.text("SELECT MIN(id) + 59 FROM sync_history")).scalar_one()
        connection.execute(sa.delete(sync_history).where(sync_history.c.id <= cut))
    add_history(engine, 10, seed=2, hours=RECENT)
    check(40)

    # Restored from a backup: the rows written since the backup vanish, new ones follow
    # with ids already used. The restored rows are not counted again, the new ones are.
    with engine.connect() as connection:
        backup = [dict(row._mapping) for row in connection.execute(sa.select(sync_history))]
    add_history(engine, 5, seed=3, hours=RECENT)
    check(45)
    restore(engine, backup)
    add_history(engine, 3, seed=4, hours=RECENT)
    check(48)

    # Truncated, ids restarting at 1, and written to before the next cycle.
    empty_history(engine)
    add_history(engine, 7, seed=5, hours=RECENT)
    check(55)
    empty_history(engine)
    check(55)
    add_history(engine, 2, seed=6, hours=RECENT)
    check(57)

    # Dropped and created again: the cycle in between fails, the counters stay.
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE sync_history"))
    during = collect(runner)
    assert by_name(during, "crmsync_up") == {frozenset({("store", "main")}): 0.0}
    assert sum(synced(during).values()) == 57
    create_reference_schema(engine)
    add_history(engine, 4, seed=7, hours=RECENT)
    check(61)
    runner.reader.close()
    engine.dispose()


def test_a_table_refilled_past_the_last_row_read_after_a_quiet_spell_is_noticed(
    sqlite_url: str,
) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    add_history(engine, 3)
    runner = runner_for(sqlite_url, settle_time="1s")
    collect(runner)
    add_history(engine, 2, seed=1, hours=JUST_NOW)
    assert sum(synced(collect(runner)).values()) == 2
    time.sleep(1.5)  # quiet for longer than settle_time
    assert sum(synced(collect(runner)).values()) == 2
    # Replaced by a table that holds more rows than were read: the ids alone look like growth.
    empty_history(engine)
    add_history(engine, 6, seed=2, hours=JUST_NOW)
    assert sum(synced(collect(runner)).values()) == 8
    runner.reader.close()
    engine.dispose()


def test_no_counter_is_served_before_the_first_successful_read(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'later.db'}"
    runner = runner_for(url)
    down = collect(runner)
    assert by_name(down, "crmsync_up") == {frozenset({("store", "main")}): 0.0}
    assert not [name for name, _ in down if name in COUNTERS]

    engine = sa.create_engine(url)
    create_reference_schema(engine)
    add_history(engine, 300)
    add_errors(engine, 30)
    up = collect(runner)
    assert by_name(up, "crmsync_up") == {frozenset({("store", "main")}): 1.0}
    # They appear at 0: what the store held when it came up is history, not new syncs.
    assert set(synced(up).values()) == {0.0}
    assert len(synced(up)) == 16
    assert series_total(up, "crmsync_sync_errors_total") == {}
    start = newest_id(engine, "sync_history")
    add_history(engine, 20, seed=9, hours=RECENT)
    collect(runner)
    assert nonzero(synced(collect(runner))) == history_counts(engine, start)
    runner.reader.close()
    engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_new_series_reads_zero_until_the_hold_has_passed(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    add_history(engine, 50)
    clock = Clock()
    config = store_config(sqlite_url, new_counter_hold="30s")
    runner = StoreRunner(StoreReader(config, clock=clock), clock=clock)

    first = collect(runner)
    assert set(synced(first).values()) == {0.0}
    add_history(engine, 5, seed=3, hours=RECENT)
    add_errors(engine, 3, codes=["NEW_CODE"])

    clock.now += 10
    held = scrape_after_cycle(runner)
    # Every series of the store is new at its first read: all read 0 for 30 s.
    assert set(synced(held).values()) == {0.0}
    assert set(series_total(held, "crmsync_sync_latency_seconds_count").values()) == {0.0}
    assert set(series_total(held, "crmsync_sync_errors_total").values()) == {0.0}

    clock.now += 25  # 35 s after the first read, 25 s after the error series appeared
    revealed = scrape_after_cycle(runner)
    assert sum(synced(revealed).values()) == 5
    assert sum(series_total(revealed, "crmsync_sync_latency_seconds_count").values()) == 5
    assert set(series_total(revealed, "crmsync_sync_errors_total").values()) == {0.0}

    clock.now += 5
    assert sum(series_total(scrape_after_cycle(runner), "crmsync_sync_errors_total").values()) == 3
    runner.reader.close()
    engine.dispose()


def scrape_after_cycle(runner: StoreRunner) -> Samples:
    runner.run_once()
    return scrape(runner)


def test_with_no_hold_a_new_series_reads_zero_for_one_collection(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    runner = runner_for(sqlite_url)  # new_counter_hold: 0
    collect(runner)
    add_errors(engine, 4, codes=["FIRST_SEEN"])
    introduced = collect(runner)
    assert set(series_total(introduced, "crmsync_sync_errors_total").values()) == {0.0}
    counted = collect(runner)
    assert sum(series_total(counted, "crmsync_sync_errors_total").values()) == 4
    runner.reader.close()
    engine.dispose()


@pytest.mark.parametrize("hold", ["-1s", "8d"])
def test_a_hold_out_of_range_is_refused(hold: str) -> None:
    from exporter.config import ConfigError

    with pytest.raises(ConfigError, match=r"stores\[0\]\.new_counter_hold"):
        store_config("sqlite://", new_counter_hold=hold)
