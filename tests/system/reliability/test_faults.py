"""Faults: the store down at start, restarted, locked, slow, silent, forbidden or malformed.

Each test runs against a PostgreSQL server of its own (crmsync_testing/pg_instance.py) that
it may stop, restart or block. Measured recovery times are printed (``pytest -s``) and
summarised in docs/RELIABILITY.md.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync_testing.exporter_process import Exporter, metric, up
from crmsync_testing.helpers import (
    add_errors,
    add_history,
    add_pending,
    by_name,
    runner_for,
    scrape,
)
from crmsync_testing.pg_instance import PgStore
from crmsync_testing.reliability import Writer, exact, newest, start_exporter
from crmsync_testing.tcp_proxy import TcpProxy
from exporter.schema import create_reference_schema

STORE_GAUGES = ("crmsync_pending_records", "crmsync_oldest_pending_age_seconds")


def report(what: str, seconds: float) -> None:
    print(f"\nMEASURED {what}: {seconds:.2f}s")


def fill(store: PgStore) -> sa.Engine:
    engine = store.engine()
    add_pending(engine, 30)
    add_history(engine, 400)
    add_errors(engine, 40)
    return engine


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    started: list[Exporter] = []
    yield started
    for exporter in started:
        exporter.stop()


def test_a_store_down_at_start_is_served_as_down_then_read_without_a_restart(
    pg_store: PgStore, tmp_path: Path, exporters: list[Exporter]
) -> None:
    engine = fill(pg_store)
    start = newest(engine)
    engine.dispose()
    pg_store.server.stop()

    exporter = start_exporter(tmp_path, pg_store)
    exporters.append(exporter)
    exporter.wait_serving()
    first = exporter.scrape()
    report(
        "store down at start: process start to first /metrics", time.monotonic() - exporter.started
    )
    assert up(first) == 0.0
    assert not any(name in STORE_GAUGES for name, _ in first)
    # No counter before the first read (not even 0): nothing for Prometheus to see jump.
    assert metric(first, "crmsync_records_synced_total") is None

    ready = pg_store.server.start()
    recovered, result = exporter.wait_until(lambda r: up(r) == 1.0, seconds=20)
    report("store down at start: server ready to crmsync_up 1", recovered - ready)
    assert recovered - ready < 5.0
    engine = pg_store.engine()
    assert exact(result, engine, start)
    # The history the store held when it came up is not counted: the counters start at 0.
    assert metric(result, "crmsync_records_synced_total") == 0.0
    assert exporter.process.poll() is None
    engine.dispose()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_store_restarted_mid_run_recovers_unaided_with_exact_counters(
    pg_store: PgStore, tmp_path: Path, exporters: list[Exporter], mode: str
) -> None:
    engine = fill(pg_store)
    start = newest(engine)
    exporter = start_exporter(tmp_path, pg_store)
    exporters.append(exporter)
    exporter.wait_serving()
    exporter.wait_until(lambda r: up(r) == 1.0)
    writer = Writer(pg_store.admin_url)
    try:
        time.sleep(1.5)
        ready = pg_store.server.restart(mode)
        ready_wall = time.time() - (time.monotonic() - ready)
        recovered, _ = exporter.wait_until(
            lambda r: (
                (metric(r, "crmsync_last_successful_collection_timestamp_seconds") or 0)
                > ready_wall
            ),
            seconds=20,
        )
        report(f"restart ({mode}): server ready to a successful collection", recovered - ready)
        assert recovered - ready < 5.0
        time.sleep(1.5)  # writes go on after the restart
    finally:
        writer.stop()
    # Once the writes stop, the counters settle on the store's counts: nothing lost or doubled.
    _, result = exporter.wait_until(lambda r: exact(r, engine, start), seconds=10)
    assert up(result) == 1.0
    assert metric(result, "crmsync_collection_failures_total") is not None
    engine.dispose()


def test_a_locked_table_times_out_on_the_server_while_scrapes_stay_fast(
    pg_store: PgStore, tmp_path: Path, exporters: list[Exporter]
) -> None:
    engine = fill(pg_store)
    start = newest(engine)
    exporter = start_exporter(tmp_path, pg_store, query_timeout="1s", interval="300ms")
    exporters.append(exporter)
    exporter.wait_serving()
    exporter.wait_until(lambda r: up(r) == 1.0)
    threads_before = exporter.threads()
    admin = pg_store.server.admin(pg_store.database)

    slowest_scrape = 0.0
    exporter_sessions: list[int] = []
    threads: list[int] = []
    with engine.connect() as locker:
        locker.execute(sa.text("BEGIN"))
        # Another transaction holds the table: every exporter query on it has to wait.
        locker.execute(sa.text("LOCK TABLE sync_history IN ACCESS EXCLUSIVE MODE"))
        until = time.monotonic() + 6.0
        while time.monotonic() < until:
            started = time.monotonic()
            result = exporter.scrape(timeout=2)
            slowest_scrape = max(slowest_scrape, time.monotonic() - started)
            assert "crmsync_up" in {name for name, _ in result}
            with admin.connect() as connection:
                exporter_sessions.append(
                    int(
                        connection.execute(
                            sa.text("SELECT count(*) FROM pg_stat_activity WHERE usename = :role"),
                            {"role": pg_store.role},
                        ).scalar_one()
                    )
                )
            threads.append(exporter.threads())
            time.sleep(0.2)
        during = exporter.scrape()
        locker.execute(sa.text("ROLLBACK"))
    released = time.monotonic()
    admin.dispose()

    report("locked table: slowest scrape while blocked", slowest_scrape)
    assert slowest_scrape < 1.0
    assert up(during) == 0.0
    assert max(exporter_sessions) <= 1, exporter_sessions
    assert max(threads) <= threads_before + 1, (threads_before, threads)
    failures = [line for line in exporter.logs() if line.get("msg") == "collection failed"]
    assert failures
    assert "lock timeout" in failures[0]["error"] or "statement timeout" in failures[0]["error"]

    add_history(engine, 10, seed=10)
    recovered, result = exporter.wait_until(lambda r: up(r) == 1.0 and exact(r, engine, start))
    report("locked table: lock released to exact counters", recovered - released)
    assert recovered - released < 3.0
    engine.dispose()


def test_a_slow_statement_is_ended_by_the_server_timeout(pg_store: PgStore) -> None:
    engine = fill(pg_store)
    pg_store.server.execute(
        pg_store.database,
        [
            "CREATE VIEW slow_queue AS SELECT q.* FROM sync_queue q, (SELECT pg_sleep(30)) AS s",
            f"GRANT SELECT ON slow_queue TO {pg_store.role}",
        ],
    )
    runner = runner_for(
        pg_store.reader_url, query_timeout="1s", mapping={"queue": {"table": "slow_queue"}}
    )
    started = time.monotonic()
    state = runner.run_once()
    elapsed = time.monotonic() - started
    report("pg_sleep(30) statement with query_timeout 1s: cycle ended after", elapsed)
    assert elapsed < 2.5
    assert state.last_error is not None
    assert "slow_queue" in state.last_error
    assert "statement timeout" in state.last_error
    runner.reader.close()
    engine.dispose()


@pytest.fixture
def proxied(pg_store: PgStore) -> Iterator[tuple[TcpProxy, str]]:
    tcp = TcpProxy(("127.0.0.1", pg_store.server.port))
    url = sa.make_url(pg_store.reader_url).set(port=tcp.port)
    yield tcp, url.render_as_string(hide_password=False)
    tcp.close()


QUERY_TIMEOUT = 1.0
# The watchdog's silence (2 x query_timeout + 2 s), then one reconnection attempt, whose
# connect_timeout psycopg raises to at least 2 s.
STALL_BOUND = 2 * QUERY_TIMEOUT + 2.0 + 2.0 + 2.0


def timed_cycle(runner: Any) -> tuple[float, Any]:
    box: list[Any] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: box.append(runner.run_once()), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the collection cycle hung on a stalled network"
    return time.monotonic() - started, box[0]


@pytest.mark.parametrize("when", ["between cycles", "mid-statement", "before connecting"])
def test_a_stalled_network_ends_the_cycle_within_the_timeouts(
    pg_store: PgStore, proxied: tuple[TcpProxy, str], when: str
) -> None:
    tcp, url = proxied
    engine = fill(pg_store)
    start = newest(engine)
    settings: dict[str, Any] = {"query_timeout": f"{QUERY_TIMEOUT:g}s"}
    if when == "mid-statement":
        # A statement that takes a while, so the network can go silent in the middle of it.
        pg_store.server.execute(
            pg_store.database,
            [
                "CREATE VIEW slow_queue AS "
                "SELECT q.* FROM sync_queue q, (SELECT pg_sleep(0.6)) AS s",
                f"GRANT SELECT ON slow_queue TO {pg_store.role}",
            ],
        )
        settings["mapping"] = {"queue": {"table": "slow_queue"}}
    runner = runner_for(url, **settings)
    if when != "before connecting":
        assert runner.run_once().last_error is None
    add_history(engine, 33, seed=12)
    if when == "before connecting":
        start = newest(engine)  # the first read is the recovery: it counts from there

    if when == "mid-statement":
        threading.Timer(0.3, tcp.stall).start()
    else:
        tcp.stall()
    elapsed, state = timed_cycle(runner)
    report(f"stalled network ({when}): cycle ended after", elapsed)
    assert elapsed < STALL_BOUND
    assert state.last_error is not None
    assert up_now(runner) == 0.0

    tcp.restore()
    started = time.monotonic()
    state = runner.run_once()
    report(f"stalled network ({when}): recovery cycle", time.monotonic() - started)
    assert state.last_error is None, state.last_error
    assert exact(scrape(runner), engine, start)
    runner.reader.close()
    engine.dispose()


def up_now(runner: Any) -> float:
    return by_name(scrape(runner), "crmsync_up")[frozenset({("store", runner.name)})]


def test_a_permission_error_names_the_store_and_table_and_spares_the_others(
    pg_store: PgStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = fill(pg_store)
    pg_store.server.execute(
        pg_store.database, [f"REVOKE SELECT ON sync_error FROM {pg_store.role}"]
    )
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    other_engine = sa.create_engine(other_url)
    create_reference_schema(other_engine)
    add_history(other_engine, 20)
    locked = runner_for(pg_store.reader_url, name="locked")
    other = runner_for(other_url, name="other")
    with caplog.at_level(logging.WARNING):
        locked.run_once()
        other.run_once()
    result = scrape(locked, other)
    assert up(result, "locked") == 0.0
    assert up(result, "other") == 1.0
    failure = next(r for r in caplog.records if r.getMessage() == "collection failed")
    assert failure.__dict__["store"] == "locked"
    assert "sync_error" in failure.__dict__["error"]
    assert "permission denied" in failure.__dict__["error"]
    for runner in (locked, other):
        runner.reader.close()
    engine.dispose()
    other_engine.dispose()


def test_a_missing_column_names_it(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    add_history(engine, 10)
    runner = runner_for(store_url, mapping={"history": {"synced_at": "synced_when"}})
    with caplog.at_level(logging.WARNING):
        state = runner.run_once()
    assert up_now(runner) == 0.0
    assert state.last_error is not None
    assert "sync_history" in state.last_error
    assert "synced_when" in state.last_error
    assert any(r.__dict__.get("store") == "main" for r in caplog.records)
    runner.reader.close()
    engine.dispose()


def test_cycles_leave_no_thread_and_no_reader_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    add_history(engine, 10)
    engine.dispose()
    runner = runner_for(url, name="short-lived")
    for _ in range(20):
        assert runner.run_once().last_error is None
    deadline = time.monotonic() + 2.0
    while any(t.name == "watchdog-short-lived" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the watchdog thread outlived its cycle"
        time.sleep(0.01)
    reader = weakref.ref(runner.reader)
    del runner
    gc.collect()
    assert reader() is None, "something still holds the reader (and its connections)"
