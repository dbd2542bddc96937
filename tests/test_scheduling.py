"""Collection runs on its own schedule: scrapes, however many, never query the store."""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from exporter.http import ExporterHTTPServer
from exporter.schema import create_reference_schema
from exporter.snapshot import LatestSnapshot
from exporter.web_config import WebConfig
from tests.helpers import add_history, add_pending, runner_for


def test_concurrent_scrapes_cause_no_queries(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    add_pending(engine, 20)
    add_history(engine, 100)
    runner = runner_for(sqlite_url, interval="300ms")
    statements: list[str] = []

    @sa.event.listens_for(runner.reader.engine, "before_cursor_execute")
    def count(*_args: Any) -> None:
        statements.append(threading.current_thread().name)

    metrics = LatestSnapshot(lambda: [runner.state], extras=CollectorRegistry())
    runner.after_cycle = metrics.publish
    server = ExporterHTTPServer(("127.0.0.1", 0), metrics, "/metrics", WebConfig())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    bodies: list[bytes] = []

    def scraper() -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=5) as response:
                bodies.append(response.read())

    runner.start()
    threads = [threading.Thread(target=scraper) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    runner.stop()
    server.shutdown()

    cycles = runner.state.collections
    assert len(bodies) > 10 * cycles, (len(bodies), cycles)
    assert all(b'crmsync_up{store="main"}' in body for body in bodies)
    assert 4 <= cycles <= 9  # about 2 s / 300 ms, whatever the number of scrapes
    assert set(statements) == {"collect-main"}
    # Steady cycles each run the same handful of statements: clock, backlog, rows stamped in
    # the future, last hour, and per feed the newest id, the last row read and the new rows
    # (the first cycle reads the newest ids instead of the last row).
    assert len(statements) <= 10 * cycles
