"""Load: 100 concurrent scrapers for a minute while collections run and a sync engine writes.

Every scrape is answered, the database sees one set of queries per interval however many
scrapes there are, memory stays flat, and the counters end equal to the store's counts.
The duration can be shortened for a quick local run: CRMSYNC_LOAD_SECONDS=10.
"""

from __future__ import annotations

import http.client
import os
import statistics
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmsync_testing.exporter_process import Exporter, metric, up, write_config
from crmsync_testing.helpers import add_errors, add_history, add_pending, samples
from crmsync_testing.pg_instance import PgStore
from crmsync_testing.reliability import Writer, exact, newest, start_exporter
from exporter.schema import create_reference_schema
from exporter.snapshot import PROMETHEUS_ACCEPT

SCRAPERS = 100
SECONDS = float(os.environ.get("CRMSYNC_LOAD_SECONDS", "60"))
INTERVAL = 1.0
WARM_UP = min(10.0, SECONDS / 4)


class Scraper(threading.Thread):
    """One Prometheus-like client: a kept-alive connection, a scrape after another."""

    def __init__(self, port: int, until: float, kind: int) -> None:
        super().__init__(daemon=True)
        self.port, self.until, self.kind = port, until, kind
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        # As Prometheus asks (OpenMetrics, gzip), as curl asks (text), and text with gzip.
        headers = [
            {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
            {},
            {"Accept-Encoding": "gzip"},
        ][self.kind % 3]
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while time.monotonic() < self.until:
            started = time.monotonic()
            try:
                connection.request("GET", "/metrics", headers=headers)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200 or not body:
                    self.failures.append(f"status {response.status}")
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(repr(error))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            self.latencies.append(time.monotonic() - started)
        connection.close()


def test_a_hundred_scrapers_for_a_minute(
    pg_store: PgStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    engine = pg_store.engine()
    add_pending(engine, 200)
    add_history(engine, 5000)
    add_errors(engine, 300)
    start = newest(engine)
    exporter = start_exporter(tmp_path, pg_store, interval=f"{INTERVAL:g}s")
    request.addfinalizer(exporter.stop)  # also when an assertion fails
    writer: Writer | None = None
    try:
        exporter.wait_serving()
        _, first = exporter.wait_until(lambda r: up(r) == 1.0)
        writer = Writer(pg_store.admin_url)
        log_mark = len(pg_store.server.log_lines(pg_store.role))
        collections_before = metric(exporter.scrape(), "crmsync_collections_total") or 0.0

        started = time.monotonic()
        scrapers = [Scraper(exporter.port, started + SECONDS, kind=i) for i in range(SCRAPERS)]
        for scraper in scrapers:
            scraper.start()
        rss: list[tuple[float, int]] = []
        threads: list[int] = []
        while time.monotonic() < started + SECONDS:
            rss.append((time.monotonic() - started, exporter.rss_bytes()))
            threads.append(exporter.threads())
            time.sleep(1.0)
        for scraper in scrapers:
            scraper.join(30)
        elapsed = time.monotonic() - started
        final = exporter.scrape()
        collections = (metric(final, "crmsync_collections_total") or 0.0) - collections_before
        logged = pg_store.server.log_lines(pg_store.role)[log_mark:]
    finally:
        if writer is not None:
            writer.stop()

    latencies = sorted(latency for scraper in scrapers for latency in scraper.latencies)
    failures = [failure for scraper in scrapers for failure in scraper.failures]
    # Cycles as the database saw them: each starts by reading the database's clock.
    cycles = sum("clock_timestamp()" in line for line in logged)
    statements = sum(("statement: " in line or "execute " in line) for line in logged)
    settled = [size for at, size in rss if at >= WARM_UP]
    growth = max(settled) - settled[0]
    p99 = latencies[int(len(latencies) * 0.99)]
    print(
        f"\nMEASURED load: {len(latencies)} scrapes in {elapsed:.0f}s "
        f"({len(latencies) / elapsed:.0f}/s) by {SCRAPERS} scrapers, {len(failures)} failed; "
        f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; {cycles} cycles ({collections:.0f} counted by the "
        f"exporter), {statements} statements; RSS {settled[0] / 2**20:.1f} MiB after warm-up, "
        f"{max(settled) / 2**20:.1f} MiB max (+{growth / 2**20:.2f} MiB); "
        f"threads max {max(threads)}"
    )

    assert failures == []
    assert len(latencies) > SCRAPERS * SECONDS  # more than one scrape a second per scraper
    # One set of queries per interval, whatever the number of scrapes.
    expected = elapsed / INTERVAL
    assert 0.7 * expected <= cycles <= expected + 3, (cycles, expected)
    assert statements <= cycles * 15 + 30
    assert abs(collections - cycles) <= 3
    # Memory flat: no growth beyond noise once the scrapers' threads exist.
    assert growth < 8 * 2**20, [f"{at:.0f}s {size / 2**20:.1f}" for at, size in rss]
    assert max(threads) <= SCRAPERS + 10
    # And the counters are exact once the writer stops.
    exporter.wait_until(lambda r: exact(r, engine, start), seconds=10)
    assert up(samples(exporter.get()[1].decode())) == 1.0
    assert first
    exporter.stop()
    engine.dispose()


def test_memory_stays_flat_between_scrapes(tmp_path: Path) -> None:
    """Collections alone, many and fast, with nobody scraping: nothing piles up."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    add_pending(engine, 100)
    add_history(engine, 2000)
    add_errors(engine, 100)
    engine.dispose()
    config = write_config(
        tmp_path / "exporter.yml", [{"name": "main", "url": url, "interval": "50ms"}]
    )
    exporter = Exporter(config)
    try:
        exporter.wait_serving()
        exporter.wait_until(lambda r: up(r) == 1.0)
        time.sleep(2.0)
        before = exporter.rss_bytes()
        time.sleep(8.0)
        growth = exporter.rss_bytes() - before
        collections = metric(exporter.scrape(), "crmsync_collections_total") or 0.0
    finally:
        exporter.stop()
    print(f"\nMEASURED idle: +{growth / 2**20:.2f} MiB over 8 s, {collections:.0f} collections")
    assert collections > 50
    assert growth < 3 * 2**20
