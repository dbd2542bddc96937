"""The fleet stage: hundreds of stores on one PostgreSQL server, read by one exporter process.

The server is a private one (initdb on a free port, ``max_connections`` at its default of
100), so that the exporter's connections can be counted from the server's own view and the
shared server is never exhausted. Each store is a schema of one database with the reference
tables, a small backlog and some history. Measured: time until every store is up, the most
connections the server saw from the exporter (sampled every 20 ms), the resident set, CPU
per collection interval, /metrics latency with concurrent scrapers, and SIGTERM to exit.
"""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from benchmarks.serving import free_port, process_sample, scrape_load
from benchmarks.stats import median, percentile
from crmsync_testing.pg_instance import PgInstance
from crmsync_tools.schema_cli import dialect_for, reference_ddl
from exporter.snapshot import PROMETHEUS_ACCEPT

APPLICATION = "crmsync-exporter"
MB = 1024 * 1024
# The server's defaults (max_connections 100), its statements not logged.
SERVER_SETTINGS = {
    "max_connections": "100",
    "log_statement": "'none'",
    "shared_buffers": "'128MB'",
    "fsync": "off",
}


@dataclass(frozen=True)
class FleetPlan:
    stores: int = 500
    interval: float = 15.0
    scrapers: int = 10
    scrape_seconds: float = 30.0
    steady_intervals: int = 2

    @classmethod
    def quick(cls) -> FleetPlan:
        return cls(stores=20, interval=2.0, scrapers=4, scrape_seconds=3.0, steady_intervals=1)


@dataclass
class FleetResult:
    stores: int
    interval: float
    workers: int
    per_server: int
    max_connections: int
    series: int
    body_bytes: int
    all_up_seconds: float
    peak_connections: int
    connection_samples: int
    peak_rss: int
    rss: int
    threads: int
    cpu_per_interval: float
    scrapes: int
    scrape_errors: int
    median_ms: float
    p99_ms: float
    exit_seconds: float
    exit_code: int
    connect_ms: float
    """Median time to open one connection with the exporter's session settings."""
    pending_checked: bool
    server_version: str


def create_stores(server: PgInstance, count: int, progress: Callable[[str], None]) -> str:
    """``count`` reference stores, one schema each, in a database ``fleet``."""
    statements = reference_ddl(dialect_for(make_url("postgresql+psycopg://")))
    with psycopg.connect(conninfo(server, "postgres"), autocommit=True) as admin:
        admin.execute("CREATE DATABASE fleet")
    with psycopg.connect(conninfo(server, "fleet"), autocommit=True) as connection:
        for number in range(count):
            schema = store_schema(number)
            with connection.transaction():
                connection.execute(f"CREATE SCHEMA {schema}")
                connection.execute(f"SET LOCAL search_path TO {schema}")
                for statement in statements:
                    connection.execute(statement)
                for statement in FILL:
                    connection.execute(statement, {"pending": 10 + number % 40})
            if (number + 1) % 100 == 0:
                progress(f"fleet: {number + 1} stores created")
        connection.execute("ANALYZE")
    return "fleet"


# A small backlog and two hours of history and errors, in every store.
FILL = (
    """
INSERT INTO sync_queue (object_type, record_id, operation, direction, enqueued_at)
SELECT (ARRAY['lead','contact','account','opportunity'])[1 + n %% 4], n::text,
       (ARRAY['insert','update'])[1 + n %% 2], (ARRAY['to_crm','from_crm'])[1 + n / 2 %% 2],
       now() at time zone 'utc' - make_interval(secs => n * 7)
FROM generate_series(1, %(pending)s) AS n
""",
    """
INSERT INTO sync_history (object_type, record_id, operation, direction, enqueued_at, synced_at)
SELECT (ARRAY['lead','contact','account','opportunity'])[1 + n %% 4], n::text,
       (ARRAY['insert','update'])[1 + n %% 2], (ARRAY['to_crm','from_crm'])[1 + n / 2 %% 2],
       now() at time zone 'utc' - make_interval(secs => n * 36 + 5),
       now() at time zone 'utc' - make_interval(secs => n * 36)
FROM generate_series(1, 200) AS n
""",
    """
INSERT INTO sync_error (object_type, record_id, operation, direction, record_name, error_code,
                        error_message, failed_at)
SELECT (ARRAY['lead','contact','account','opportunity'])[1 + n %% 4], n::text,
       (ARRAY['insert','update'])[1 + n %% 2], (ARRAY['to_crm','from_crm'])[1 + n / 2 %% 2],
       'Jane Doe', (ARRAY['DUPLICATE_VALUE','REQUEST_LIMIT_EXCEEDED'])[1 + n %% 2],
       'Duplicate value found', now() at time zone 'utc' - make_interval(secs => n * 360)
FROM generate_series(1, 20) AS n
""",
)


def store_schema(number: int) -> str:
    return f"store_{number:04d}"


def conninfo(server: PgInstance, database: str) -> str:
    return f"host=127.0.0.1 port={server.port} user=postgres dbname={database}"


class ConnectionSampler:
    """The exporter's sessions as the server counts them, every 20 ms."""

    def __init__(self, server: PgInstance) -> None:
        self.samples: list[int] = []
        self._connection = psycopg.connect(conninfo(server, "postgres"), autocommit=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        while not self._stop.is_set():
            row = self._connection.execute(query, (APPLICATION,)).fetchone()
            self.samples.append(int(row[0]) if row else 0)
            self._stop.wait(0.02)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        self._connection.close()
        return self.samples


def connect_cost(server: PgInstance, runs: int = 30) -> float:
    """Median seconds to open a connection and set it up as the exporter does."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with psycopg.connect(conninfo(server, "fleet"), application_name=APPLICATION) as c:
            for setting in (
                "SET statement_timeout = 10000",
                "SET lock_timeout = 10000",
                "SET TIME ZONE 'UTC'",
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            ):
                c.execute(setting)
            c.commit()
        times.append(time.perf_counter() - started)
    return median(times)


def scrape(url: str) -> str:
    """One scrape as Prometheus asks for it: its format, compressed (20 MB of text otherwise).

    A scrape in another format would have the exporter encode each store's lines in that
    one too, for as long as it is scraped (see exporter.snapshot): another 20 MB.
    """
    headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return str(body.decode())


def up_count(text: str) -> tuple[int, int]:
    """(stores up, stores listed) in an exposition."""
    up = total = 0
    for line in text.splitlines():
        if line.startswith("crmsync_up{"):
            total += 1
            up += line.endswith(" 1.0")
    return up, total


def pending_matches(text: str, server: PgInstance, count: int) -> bool:
    """Whether every store's pending total is what SQL counts in its schema."""
    served: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("crmsync_pending_records{"):
            store = line.split('store="', 1)[1].split('"', 1)[0]
            served[store] = served.get(store, 0.0) + float(line.rsplit(" ", 1)[1])
    with psycopg.connect(conninfo(server, "fleet")) as connection:
        for number in range(count):
            schema = store_schema(number)
            row = connection.execute(f"SELECT count(*) FROM {schema}.sync_queue").fetchone()
            if row is None or served.get(schema) != float(row[0]):
                return False
    return True


def measure_fleet(plan: FleetPlan, progress: Callable[[str], None]) -> FleetResult:
    server = PgInstance(SERVER_SETTINGS)
    directory = tempfile.TemporaryDirectory(prefix="crmsync-fleet-")
    process: subprocess.Popen[bytes] | None = None
    try:
        progress(f"fleet: creating {plan.stores} stores on a private PostgreSQL")
        database = create_stores(server, plan.stores, progress)
        config = Path(directory.name) / "fleet.yml"
        stores = [
            {
                "name": store_schema(number),
                "url": f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/{database}",
                "schema": store_schema(number),
                "interval": f"{plan.interval:g}s",
            }
            for number in range(plan.stores)
        ]
        config.write_text(json.dumps({"stores": stores}))
        defaults = json.loads(
            subprocess.check_output(
                [
                    sys.executable,
                    "-c",
                    "import json; from exporter.config import Config; "
                    "c = Config.model_validate({'stores': [{'name': 'x', 'url': 'sqlite://'}]}); "
                    "print(json.dumps([c.collection.workers, c.connections.per_server]))",
                ]
            )
        )
        connect_ms = connect_cost(server) * 1000
        with psycopg.connect(conninfo(server, "postgres")) as connection:
            row = connection.execute("SHOW server_version").fetchone()
            version = str(row[0]) if row else "?"
        sampler = ConnectionSampler(server)
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        started = time.perf_counter()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
        )
        all_up = float("nan")
        deadline = started + 4 * plan.interval + 60
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the exporter exited with {process.returncode}")
            try:
                up, total = up_count(scrape(url))
            except OSError:
                up = total = 0
            if total == plan.stores and up == plan.stores:
                all_up = time.perf_counter() - started
                break
            time.sleep(1.0)  # a scrape of hundreds of stores costs the exporter a little
        progress(f"fleet: every store up after {all_up:.1f} s")
        # Steady state: CPU over whole intervals, then the scrapers.
        before = process_sample(process.pid)
        time.sleep(plan.steady_intervals * plan.interval)
        after = process_sample(process.pid)
        cpu = (after.cpu - before.cpu) / plan.steady_intervals
        progress(f"fleet: {cpu:.2f} CPU seconds per interval; {plan.scrapers} scrapers")
        load = scrape_load(port, plan.scrapers, plan.scrape_seconds, period=1.0)
        body = scrape(url)
        series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        checked = pending_matches(body, server, plan.stores)
        sample = process_sample(process.pid)
        threads = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                if line.startswith("Threads:")
            )
        )
        signalled = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        exit_seconds = time.perf_counter() - signalled
        samples = sampler.stop()
        latencies = sorted(load.latencies)
        return FleetResult(
            stores=plan.stores,
            interval=plan.interval,
            workers=int(defaults[0]),
            per_server=int(defaults[1]),
            max_connections=int(SERVER_SETTINGS["max_connections"]),
            series=series,
            body_bytes=len(body.encode()),
            all_up_seconds=all_up,
            peak_connections=max(samples, default=0),
            connection_samples=len(samples),
            peak_rss=sample.peak_rss,
            rss=sample.rss,
            threads=threads,
            cpu_per_interval=cpu,
            scrapes=len(latencies),
            scrape_errors=load.errors,
            median_ms=median(latencies) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            exit_seconds=exit_seconds,
            exit_code=code,
            connect_ms=connect_ms,
            pending_checked=checked,
            server_version=version,
        )
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        directory.cleanup()
        server.destroy()


def targets(fleet: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the fleet stage."""
    interval = fleet["interval"]
    return [
        (
            "every store up within two intervals",
            f"{fleet['all_up_seconds']:.1f} s (interval {interval:g} s)",
            fleet["all_up_seconds"] <= 2 * interval,
        ),
        (
            f"connections never above the cap ({fleet['per_server']} per server)",
            f"peak {fleet['peak_connections']} in {fleet['connection_samples']:,} samples of "
            "pg_stat_activity",
            0 < fleet["peak_connections"] <= fleet["per_server"],
        ),
        ("RSS < 150 MB", f"peak {fleet['peak_rss'] / MB:.1f} MB", fleet["peak_rss"] < 150 * MB),
        (
            f"/metrics p99 < 100 ms at {fleet.get('scrapers', 10)} scrapers",
            f"{fleet['p99_ms']:.1f} ms (median {fleet['median_ms']:.1f} ms)",
            fleet["p99_ms"] < 100,
        ),
        (
            "exit < 5 s after SIGTERM",
            f"{fleet['exit_seconds']:.2f} s (exit code {fleet['exit_code']})",
            fleet["exit_seconds"] < 5 and fleet["exit_code"] == 0,
        ),
    ]


def result_dict(result: FleetResult, plan: FleetPlan) -> dict[str, Any]:
    return {**asdict(result), "scrapers": plan.scrapers}
