"""The exporter as it runs in production: its own process, scraped by concurrent clients.

Scrapers are asyncio clients on keep-alive connections sending what Prometheus sends (its
Accept header, gzip). Each scraper scrapes once per ``period`` seconds from a random phase;
a period of 0 scrapes back to back. The exporter's CPU time and memory come from /proc; the
statements the database saw come from its own statistics (scans of the queue table).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crmsync_testing.filled_stores import Store, pg_connect

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ProcessSample:
    cpu: float
    """User and system CPU seconds so far."""
    rss: int
    peak_rss: int
    """VmHWM: the largest resident set so far, in bytes."""


def process_sample(pid: int) -> ProcessSample:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    status = Path(f"/proc/{pid}/status").read_text()
    sizes = {
        key: int(value.split()[0]) * 1024
        for key, value in (line.split(":", 1) for line in status.splitlines() if ":" in line)
        if key in ("VmRSS", "VmHWM")
    }
    return ProcessSample(cpu, sizes["VmRSS"], sizes["VmHWM"])


def http_get(url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
        return str(response.read().decode())


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else None


def series_count(text: str, prefix: str = "") -> int:
    return sum(
        1
        for line in text.splitlines()
        if line and not line.startswith("#") and line.startswith(prefix)
    )


@dataclass
class ExporterProcess:
    """``crmsync-exporter`` on a loopback port, reading one store."""

    store: Store
    settings: dict[str, Any]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    directory: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self, timeout: float = 600.0) -> float:
        """Start it; return the seconds until its first collection was served."""
        self.directory = tempfile.TemporaryDirectory(prefix="crmsync-bench-")
        config = Path(self.directory.name) / "crmsync-exporter.yml"
        config.write_text(
            yaml.safe_dump({"stores": [{"name": "main", "url": self.store.url, **self.settings}]})
        )
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the exporter exited with {self.process.returncode}")
            try:
                if metric_value(http_get(self.url), "crmsync_up", '{store="main"}') == 1.0:
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("the exporter served no successful collection in time")

    def sample(self) -> ProcessSample:
        assert self.process is not None
        return process_sample(self.process.pid)

    def scrape(self) -> str:
        return http_get(self.url)

    def collections(self) -> int:
        return int(metric_value(self.scrape(), "crmsync_collections_total", '{store="main"}') or 0)

    def last_collection(self) -> float:
        """Unix time at which the last collection ended."""
        text = self.scrape()
        name = "crmsync_last_successful_collection_timestamp_seconds"
        return float(metric_value(text, name, '{store="main"}') or 0.0)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.directory is not None:
            self.directory.cleanup()


@contextmanager
def running(store: Store, settings: dict[str, Any]) -> Iterator[tuple[ExporterProcess, float]]:
    exporter = ExporterProcess(store, settings)
    try:
        ready = exporter.start()
        yield exporter, ready
    finally:
        exporter.stop()


# --- scrapers -----------------------------------------------------------------------------


@dataclass
class LoadResult:
    latencies: list[float]
    errors: int
    seconds: float


async def _scraper(
    port: int,
    period: float,
    until: float,
    latencies: list[float],
    failures: list[int],
    budget: list[int] | None,
) -> None:
    request = (
        f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Prometheus/2.53.0\r\n"
        f"Accept: {PROMETHEUS_ACCEPT}\r\nAccept-Encoding: gzip\r\n"
        "X-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    next_at = loop.time() + (random.uniform(0, period) if period else 0.0)
    try:
        while True:
            if period:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at += period
            if loop.time() >= until:
                return
            if budget is not None:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != b"200":
                failures[0] += 1
    finally:
        writer.close()


async def _load(
    port: int, scrapers: int, seconds: float, period: float, total: int | None
) -> LoadResult:
    latencies: list[float] = []
    failures = [0]
    budget = [total] if total is not None else None
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    until = loop.time() + seconds
    await asyncio.gather(
        *(_scraper(port, period, until, latencies, failures, budget) for _ in range(scrapers))
    )
    return LoadResult(latencies, failures[0], time.perf_counter() - started)


def scrape_load(
    port: int, scrapers: int, seconds: float, period: float, total: int | None = None
) -> LoadResult:
    """``scrapers`` concurrent clients for ``seconds`` (or until ``total`` scrapes)."""
    return asyncio.run(_load(port, scrapers, seconds, period, total))


# --- what the database saw ----------------------------------------------------------------


class QueueScans:
    """Scans of the queue table since the server started: one per backlog query."""

    def __init__(self, store: Store) -> None:
        self.connection: Any = None
        if store.dialect == "postgresql":
            self.connection = pg_connect(store.url)

    def read(self) -> int | None:
        if self.connection is None:
            return None
        row = self.connection.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
            " WHERE relid = 'sync_queue'::regclass"
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


@dataclass
class ScrapeLevel:
    scrapers: int
    runs: list[LoadResult]
    collections: int
    queue_scans: int | None
    cpu: float
    """Exporter CPU seconds over the level, collections included."""


def mid_interval(exporter: ExporterProcess, interval: float) -> None:
    """Sleep until halfway between two collections, when the database's statistics are in."""
    last = exporter.last_collection()
    now = time.time()
    target = last + interval / 2
    while target < now:
        target += interval
    time.sleep(target - now)


def measure_scrapes(
    exporter: ExporterProcess,
    store: Store,
    interval: float,
    levels: list[int],
    runs: int,
    seconds: float,
    period: float,
    progress: Callable[[str], None],
) -> list[ScrapeLevel]:
    """Latency per number of scrapers; collections and queue scans counted over the same time."""
    scans = QueueScans(store)
    results = []
    try:
        for scrapers in levels:
            mid_interval(exporter, interval)
            before = (exporter.collections(), scans.read(), exporter.sample().cpu)
            loads = []
            for _ in range(runs):
                loads.append(scrape_load(exporter.port, scrapers, seconds, period))
            mid_interval(exporter, interval)
            after = (exporter.collections(), scans.read(), exporter.sample().cpu)
            scrapes = sum(len(load.latencies) for load in loads)
            queue_scans = (
                after[1] - before[1] if after[1] is not None and before[1] is not None else None
            )
            results.append(
                ScrapeLevel(
                    scrapers=scrapers,
                    runs=loads,
                    collections=after[0] - before[0],
                    queue_scans=queue_scans,
                    cpu=after[2] - before[2],
                )
            )
            progress(f"{scrapers} scrapers: {scrapes} scrapes, {after[0] - before[0]} collections")
    finally:
        scans.close()
    return results


@dataclass
class Soak:
    scrapes: list[int]
    rss: list[int]
    peak_rss: int


def soak(exporter: ExporterProcess, total: int, step: int, scrapers: int) -> Soak:
    """``total`` back-to-back scrapes; the resident set sampled every ``step`` scrapes."""
    done = 0
    points = [0]
    rss = [exporter.sample().rss]
    while done < total:
        batch = min(step, total - done)
        scrape_load(exporter.port, scrapers, 3600.0, 0.0, total=batch)
        done += batch
        points.append(done)
        rss.append(exporter.sample().rss)
    return Soak(points, rss, exporter.sample().peak_rss)


def idle_cpu_per_collection(exporter: ExporterProcess, interval: float, cycles: int) -> float:
    """Exporter CPU seconds per collection cycle, nobody scraping (our two reads left out)."""
    mid_interval(exporter, interval)
    collections = exporter.collections()
    cpu = exporter.sample().cpu
    time.sleep(interval * cycles)
    cpu = exporter.sample().cpu - cpu
    collections = exporter.collections() - collections
    return cpu / max(1, collections)


def dump(value: Any) -> str:
    return json.dumps(value, default=lambda item: getattr(item, "__dict__", str(item)))
