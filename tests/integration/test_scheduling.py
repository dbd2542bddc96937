"""Collection runs on its own schedule: scrapes, however many, never query the store."""

from __future__ import annotations

import threading
import urllib.request
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from crmsync_testing.helpers import add_history, add_pending, runner_for
from exporter.http import ExporterHTTPServer
from exporter.schema import create_reference_schema
from exporter.snapshot import LatestSnapshot
from exporter.web_config import WebConfig

SCRAPERS = 20
SCRAPES = 25


def test_concurrent_scrapes_cause_no_queries(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    add_pending(engine, 20)
    add_history(engine, 100)
    # One cycle at start, then none for the rest of the test: every statement after it would be
    # a scrape's.
    runner = runner_for(sqlite_url, interval="1h")
    statements: list[str] = []

    @sa.event.listens_for(runner.reader.engine, "before_cursor_execute")
    def count(*_args: Any) -> None:
        statements.append(threading.current_thread().name)

    metrics = LatestSnapshot(lambda: [runner.state], extras=CollectorRegistry())
    server = ExporterHTTPServer(("127.0.0.1", 0), metrics, "/metrics", WebConfig())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    bodies: list[bytes] = []

    def scraper() -> None:
        # No assertion here: a failed scrape shows as a missing body in the count below.
        for _ in range(SCRAPES):
            with urllib.request.urlopen(url, timeout=5) as response:
                bodies.append(response.read())

    first_cycle = threading.Event()

    def published() -> None:
        metrics.publish()
        first_cycle.set()

    runner.after_cycle = published
    runner.start()
    assert first_cycle.wait(30), "no first collection"
    queried = len(statements)
    threads = [threading.Thread(target=scraper) for _ in range(SCRAPERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    runner.stop()
    server.shutdown()

    assert len(bodies) == SCRAPERS * SCRAPES
    assert all(b'crmsync_up{store="main"} 1.0' in body for body in bodies)
    assert runner.state.collections == 1
    assert len(statements) == queried  # hundreds of scrapes, not one statement
    assert set(statements) == {"collect-main"}
