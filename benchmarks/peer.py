"""The peer: query-exporter publishing the same gauges and counters from the same store.

It is installed from PyPI into a virtual environment of its own (never a dependency of this
project) and configured as its documentation shows: one query per group of metrics, counters
set from ``COUNT(*)`` queries. Queries without an ``interval`` run on each scrape, which lets the
benchmark run its cycles one at a time; with an interval it runs the same queries on a timer.
It does not publish the latency histogram (that would cost it more).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks import pglog
from benchmarks.serving import free_port, http_get, process_sample
from crmsync_testing.filled_stores import Store, pg_connect

VERSION = "5.0.2"
DEFAULT_VENV = Path(tempfile.gettempdir()) / "qe-venv"

_LABELS = ["object", "operation", "direction"]
METRICS: dict[str, dict[str, Any]] = {
    "crmsync_pending_records": {"type": "gauge", "labels": _LABELS},
    "crmsync_oldest_pending_timestamp_seconds": {"type": "gauge", "labels": _LABELS},
    "crmsync_oldest_pending_age_seconds": {"type": "gauge", "labels": _LABELS},
    "crmsync_records_synced": {"type": "counter", "labels": _LABELS},
    "crmsync_sync_errors": {"type": "counter", "labels": [*_LABELS, "error_code"]},
    "crmsync_records_synced_last_hour": {"type": "gauge", "labels": ["object", "direction"]},
}
QUERIES: dict[str, tuple[list[str], str]] = {
    "backlog": (
        [
            "crmsync_pending_records",
            "crmsync_oldest_pending_timestamp_seconds",
            "crmsync_oldest_pending_age_seconds",
        ],
        "SELECT lower(object_type) AS object, lower(operation) AS operation,"
        " lower(direction) AS direction, count(*) AS crmsync_pending_records,"
        " extract(epoch FROM min(enqueued_at)) AS crmsync_oldest_pending_timestamp_seconds,"
        " extract(epoch FROM (now() AT TIME ZONE 'UTC') - min(enqueued_at))"
        " AS crmsync_oldest_pending_age_seconds"
        " FROM sync_queue GROUP BY 1, 2, 3",
    ),
    "synced": (
        ["crmsync_records_synced"],
        "SELECT lower(object_type) AS object, lower(operation) AS operation,"
        " lower(direction) AS direction, count(*) AS crmsync_records_synced"
        " FROM sync_history GROUP BY 1, 2, 3",
    ),
    "errors": (
        ["crmsync_sync_errors"],
        "SELECT lower(object_type) AS object, lower(operation) AS operation,"
        " lower(direction) AS direction, error_code, count(*) AS crmsync_sync_errors"
        " FROM sync_error GROUP BY 1, 2, 3, 4",
    ),
    "last_hour": (
        ["crmsync_records_synced_last_hour"],
        "SELECT lower(object_type) AS object, lower(direction) AS direction,"
        " count(*) AS crmsync_records_synced_last_hour FROM sync_history"
        " WHERE synced_at >= date_trunc('hour', now() AT TIME ZONE 'UTC') - interval '1 hour'"
        " AND synced_at < date_trunc('hour', now() AT TIME ZONE 'UTC') GROUP BY 1, 2",
    ),
}


def ensure_installed(venv: Path, progress: Callable[[str], None]) -> Path:
    """query-exporter's command, installed from PyPI into ``venv`` when missing."""
    command = venv / "bin" / "query-exporter"
    if command.exists():
        return command
    progress(f"installing query-exporter {VERSION} into {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            f"query-exporter=={VERSION}",
            "psycopg[binary]",
        ],
        check=True,
    )
    return command


def configuration(url: str) -> dict[str, Any]:
    return {
        "databases": {"store": {"dsn": url, "labels": {"store": "main"}}},
        "metrics": {
            name: {**definition, "description": name} for name, definition in METRICS.items()
        },
        "queries": {
            name: {"databases": ["store"], "metrics": metrics, "sql": sql}
            for name, (metrics, sql) in QUERIES.items()
        },
    }


@dataclass
class PeerResult:
    cycles: list[float] = field(default_factory=list)
    """Wall seconds of each scrape, which runs every query once."""
    db_ms: list[float] = field(default_factory=list)
    """Server time of each cycle (from the server log), milliseconds."""
    rss: int = 0
    series: int = 0


def measure_peer(
    command: Path,
    store: Store,
    cycles: int,
    trickle: Callable[[], None],
    server_log: pglog.ServerLog | None,
    progress: Callable[[str], None],
) -> PeerResult:
    """Scrape query-exporter ``cycles`` times (after one warm-up), a trickle between scrapes."""
    result = PeerResult()
    port = free_port()
    marker = pg_connect(store.url, log_statements=True) if server_log else None
    with tempfile.TemporaryDirectory(prefix="crmsync-bench-qe-") as directory:
        config = Path(directory) / "config.yaml"
        config.write_text(yaml.safe_dump(configuration(store.url)))
        process = subprocess.Popen(
            [str(command), "--config", str(config), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    text = http_get(url, timeout=600)
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("query-exporter did not start") from None
                    time.sleep(0.2)
            result.series = sum(1 for line in text.splitlines() if line.startswith("crmsync_"))
            if server_log is not None:
                server_log.start()
            for index in range(cycles):
                trickle()
                if marker is not None:
                    pglog.mark(marker, f"peer.{index}")
                started = time.perf_counter()
                http_get(url, timeout=600)
                result.cycles.append(time.perf_counter() - started)
                if marker is not None:
                    pglog.mark(marker, "idle")
                progress(f"query-exporter cycle {index + 1}/{cycles}: {result.cycles[-1]:.3f}s")
            result.rss = process_sample(process.pid).rss
            if server_log is not None and marker is not None:
                pglog.mark(marker, "end")
                segments = server_log.segments()
                result.db_ms = [
                    segments[f"peer.{index}"].milliseconds()
                    for index in range(cycles)
                    if f"peer.{index}" in segments
                ]
        finally:
            process.terminate()
            process.wait(10)
            if marker is not None:
                marker.close()
    return result
