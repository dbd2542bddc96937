"""A store that fails says so (crmsync_up 0), serves no stale gauges, and recovers by itself."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmsync_testing.helpers import (
    Samples,
    add_errors,
    add_history,
    add_pending,
    by_name,
    collect_settled,
    history_counts,
    newest_id,
    nonzero,
    runner_for,
    scrape,
    series_total,
)
from crmsync_testing.tcp_proxy import TcpProxy
from exporter.schema import create_reference_schema

GAUGES = (
    "crmsync_pending_records",
    "crmsync_oldest_pending_age_seconds",
    "crmsync_oldest_pending_timestamp_seconds",
    "crmsync_records_synced_last_hour",
)


def up(result: Samples, store: str) -> float:
    return by_name(result, "crmsync_up")[frozenset({("store", store)})]


def gauges_of(result: Samples, store: str) -> list[str]:
    return [
        name
        for (name, labels), _ in result.items()
        if name in GAUGES and ("store", store) in labels
    ]


@pytest.fixture
def filled(store_url: str) -> str:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    add_pending(engine, 40)
    add_history(engine, 300)
    add_errors(engine, 20)
    engine.dispose()
    return store_url


def test_a_wrong_url_fails_that_store_only(
    filled: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = runner_for(filled, name="good")
    bad = runner_for(f"sqlite:///{tmp_path}/missing.db", name="bad")
    with caplog.at_level(logging.WARNING):
        good.run_once()
        bad.run_once()
    result = scrape(good, bad)
    assert up(result, "good") == 1.0
    assert up(result, "bad") == 0.0
    assert gauges_of(result, "bad") == []
    assert gauges_of(result, "good") != []
    # Never read: no counter at all (not 0), so nothing jumps once it can be read.
    counters = ("crmsync_records_synced", "crmsync_sync_errors", "crmsync_sync_latency")
    assert not [
        name for name, labels in result if name.startswith(counters) and ("store", "bad") in labels
    ]
    assert series_total(result, "crmsync_records_synced_total") != {}
    failure = next(r for r in caplog.records if r.getMessage() == "collection failed")
    assert failure.__dict__["store"] == "bad"
    assert "missing.db" in failure.__dict__["error"]


def test_a_dropped_table_drops_the_gauges_keeps_the_counters_and_recovers(filled: str) -> None:
    engine = sa.create_engine(filled)
    runner = runner_for(filled)
    runner.run_once()
    start = newest_id(engine, "sync_history")
    add_history(engine, 25, seed=7)
    before = collect_settled(runner)
    synced_before = series_total(before, "crmsync_records_synced_total")
    assert sum(synced_before.values()) == 25
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE sync_queue"))

    state = runner.run_once()
    during = scrape(runner)
    assert up(during, "main") == 0.0
    assert gauges_of(during, "main") == []
    assert series_total(during, "crmsync_records_synced_total") == synced_before
    assert state.last_error is not None
    assert "sync_queue" in state.last_error

    create_reference_schema(engine)
    add_history(engine, 50, seed=8)
    runner.run_once()
    after = scrape(runner)
    assert up(after, "main") == 1.0
    assert nonzero(series_total(after, "crmsync_records_synced_total")) == history_counts(
        engine, start
    )
    engine.dispose()


def test_a_killed_connection_is_replaced(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    create_reference_schema(engine)
    add_history(engine, 100)
    runner = runner_for(postgres_url)
    runner.run_once()
    start = newest_id(engine, "sync_history")
    with engine.begin() as connection:
        killed = connection.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'crmsync-exporter' AND pid <> pg_backend_pid()"
            )
        ).all()
    assert killed, "the exporter's connection was not found"
    add_history(engine, 30, seed=4)
    runner.run_once()
    result = scrape(runner)
    assert up(result, "main") == 1.0
    assert nonzero(series_total(result, "crmsync_records_synced_total")) == history_counts(
        engine, start
    )
    engine.dispose()


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    url = sa.make_url(postgres_url)
    tcp = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    yield tcp, url.set(host="127.0.0.1", port=tcp.port).render_as_string(hide_password=False)
    tcp.close()


def test_a_store_unreachable_for_a_while_loses_and_doubles_nothing(
    postgres_url: str, proxy: tuple[TcpProxy, str]
) -> None:
    tcp, proxied_url = proxy
    engine = sa.create_engine(postgres_url)
    create_reference_schema(engine)
    add_pending(engine, 10)
    add_history(engine, 200)
    runner = runner_for(proxied_url, query_timeout="2s")
    runner.run_once()
    start = newest_id(engine, "sync_history")
    add_history(engine, 12, seed=4)
    synced = series_total(collect_settled(runner), "crmsync_records_synced_total")
    assert sum(synced.values()) == 12

    tcp.refuse()
    add_history(engine, 77, seed=5)  # written while the exporter cannot see the store
    runner.run_once()
    during = scrape(runner)
    assert up(during, "main") == 0.0
    assert gauges_of(during, "main") == []
    assert series_total(during, "crmsync_records_synced_total") == synced

    tcp.restore()
    add_history(engine, 5, seed=6)
    runner.run_once()
    after = scrape(runner)
    assert up(after, "main") == 1.0
    # The rows written during the outage became visible while the exporter ran: counted.
    expected = history_counts(engine, start)
    assert sum(expected.values()) == 12 + 77 + 5
    assert nonzero(series_total(after, "crmsync_records_synced_total")) == expected
    engine.dispose()
