"""Runs the benchmark: builds the stores, measures, prints the tables and writes docs/BENCHMARKS.md.

python -m benchmarks             # the full run (PostgreSQL and SQLite, up to 10M rows)
python -m benchmarks --quick     # seconds: small stores, a few cycles, no peer
python benchmarks/run.py --help  # the same, as a script
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import sqlalchemy as sa

from benchmarks import cycles, failing, peer, pglog, report, serving
from benchmarks.stats import median, percentile
from crmsync_testing.filled_stores import (
    PostgresStore,
    Size,
    SqliteStore,
    Store,
    conninfo,
    exporter_settings,
)
from exporter.config import StoreConfig, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES = os.environ.get(
    "CRMSYNC_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DATABASE = "crmsync_bench"


@dataclass(frozen=True)
class Plan:
    """What to measure and how many times."""

    stages: tuple[Size, ...]
    first_runs: int
    steady_cycles: int
    peer_cycles: int
    scrapers: tuple[int, ...]
    scrape_runs: int
    scrape_seconds: float
    scrape_period: float
    soak_scrapes: int
    soak_step: int
    serve_interval: float
    idle_cycles: int
    serve_stage: Size
    sqlite_stages: tuple[Size, ...]
    failing_runs: int = 5

    @classmethod
    def full(cls) -> Plan:
        stages = (
            Size.of(10_000, 100_000),
            Size.of(10_000, 1_000_000),
            Size.of(10_000, 10_000_000),
            Size.of(100_000, 100_000),
            Size.of(1_000_000, 100_000),
        )
        return cls(
            stages=stages,
            first_runs=3,
            steady_cycles=30,
            peer_cycles=5,
            scrapers=(1, 10, 100),
            scrape_runs=3,
            scrape_seconds=10.0,
            scrape_period=1.0,
            soak_scrapes=10_000,
            soak_step=1_000,
            serve_interval=15.0,
            idle_cycles=2,
            serve_stage=stages[2],
            sqlite_stages=stages,
        )

    @classmethod
    def quick(cls) -> Plan:
        stages = (Size.of(1_000, 10_000), Size.of(1_000, 50_000))
        return cls(
            stages=stages,
            first_runs=1,
            steady_cycles=5,
            peer_cycles=2,
            scrapers=(1, 10),
            scrape_runs=1,
            scrape_seconds=1.5,
            scrape_period=0.25,
            soak_scrapes=300,
            soak_step=100,
            serve_interval=1.5,
            idle_cycles=1,
            serve_stage=stages[0],
            sqlite_stages=stages,
            failing_runs=2,
        )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def store_config(url: str, interval: float = 15.0) -> StoreConfig:
    import yaml

    document = {"stores": [{"name": "main", "url": url, **exporter_settings(interval)}]}
    return parse_config(yaml.safe_dump(document)).stores[0]


# --- where the stores live ----------------------------------------------------------------

StoreFactory = Callable[[Size], Any]
"""A context manager factory: ``with factory(size) as store`` yields an empty store."""


class PostgresStores:
    """One schema per store size in the benchmark database, dropped afterwards unless kept."""

    def __init__(self, admin_url: str, database: str, keep: bool, reuse: bool) -> None:
        self.admin_url = admin_url
        self.database = database
        self.keep = keep
        self.reuse = reuse
        with psycopg.connect(**conninfo(admin_url), autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not exists:
                connection.execute(f"CREATE DATABASE {database}")
            row = connection.execute("SHOW server_version").fetchone()
            self.version = str(row[0]) if row else "?"
        self.url = sa.make_url(admin_url).set(database=database)
        path = pglog.default_log_path(self.version)
        self.server_log = pglog.ServerLog(path, database) if path else None
        self._admin(
            f"ALTER DATABASE {database} SET log_min_duration_statement = "
            f"{0 if self.server_log else -1}"
        )

    def _admin(self, statement: str) -> Any:
        with psycopg.connect(**conninfo(self.url.render_as_string(False)), autocommit=True) as c:
            c.execute("SET log_min_duration_statement = -1")
            cursor = c.execute(statement)
            return cursor.fetchall() if statement.startswith("SELECT") else None

    def store_url(self, schema: str) -> str:
        return self.url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )

    @contextmanager
    def __call__(self, size: Size) -> Iterator[tuple[PostgresStore, bool]]:
        schema = f"bench_{size.key}".lower()
        spec = f"{size.pending}/{size.history}/{size.errors}"
        found = self._admin(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace"
            f" WHERE nspname = '{schema}'"
        )
        reused = bool(self.reuse and found and found[0][0] == spec)
        if not reused:
            self._admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            self._admin(f"CREATE SCHEMA {schema}")
        store = PostgresStore(self.store_url(schema))
        try:
            yield store, reused
            self._admin(f"COMMENT ON SCHEMA {schema} IS '{spec}'")
        finally:
            store.close()
            if not self.keep:
                self._admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    def close(self) -> None:
        self._admin(f"ALTER DATABASE {self.database} RESET log_min_duration_statement")


class SqliteStores:
    """One file per store size in a directory."""

    def __init__(self, directory: Path, keep: bool, reuse: bool) -> None:
        self.directory = directory
        self.keep = keep
        self.reuse = reuse
        self.server_log = None

    @contextmanager
    def __call__(self, size: Size) -> Iterator[tuple[SqliteStore, bool]]:
        path = self.directory / f"bench_{size.key}.db"
        marker = path.with_suffix(".spec")
        spec = f"{size.pending}/{size.history}/{size.errors}"
        reused = self.reuse and path.exists() and marker.exists() and marker.read_text() == spec
        if not reused:
            for stale in (path, marker, Path(f"{path}-wal"), Path(f"{path}-shm")):
                stale.unlink(missing_ok=True)
        store = SqliteStore(str(path))
        try:
            yield store, reused
            marker.write_text(spec)
        finally:
            store.close()
            if not self.keep:
                for stale in (path, marker, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    stale.unlink(missing_ok=True)

    def close(self) -> None:
        pass


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Results:
    machine: dict[str, str]
    command: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    serve: dict[str, Any] | None = None
    elapsed: float = 0.0


def summarize_stage(
    dialect: str,
    size: Size,
    collection: cycles.Collection,
    load_seconds: float,
    peer_result: peer.PeerResult | None,
) -> dict[str, Any]:
    steady = collection.steady
    first = collection.first

    def med(values: Sequence[float | None], scale: float = 1.0) -> float:
        present = [value * scale for value in values if value is not None]
        return median(present)

    kinds_db: dict[str, list[float]] = {}
    kinds_client: dict[str, list[float]] = {}
    for cycle in steady:
        for kind, ms in cycle.db_kinds.items():
            kinds_db.setdefault(kind, []).append(ms)
        for kind, seconds in cycle.client_kinds().items():
            kinds_client.setdefault(kind, []).append(seconds * 1000)
    first_kinds: dict[str, list[float]] = {}
    for cycle in first:
        for kind, ms in cycle.db_kinds.items():
            first_kinds.setdefault(kind, []).append(ms)
    summary: dict[str, Any] = {
        "dialect": dialect,
        "key": size.key,
        "label": size.label,
        "pending": size.pending,
        "history": size.history,
        "errors": size.errors,
        "load_s": load_seconds,
        "first_s": med([c.wall for c in first]),
        "first_cpu_s": med([c.cpu for c in first]),
        "first_db_ms": med([c.db_ms for c in first]),
        "first_kinds_db_ms": {kind: median(values) for kind, values in first_kinds.items()},
        "steady_ms": med([c.wall for c in steady], 1000),
        "steady_p90_ms": percentile([c.wall * 1000 for c in steady], 90),
        "steady_cpu_ms": med([c.cpu for c in steady], 1000),
        "steady_db_ms": med([c.db_ms for c in steady]),
        "floor_ms": med([c.floor_wall for c in steady], 1000),
        "floor_db_ms": med([c.floor_db_ms for c in steady]),
        "gauges_ms": med([c.gauges for c in steady], 1000),
        "floor_gauges_ms": med([c.floor_gauges for c in steady], 1000),
        "steps_ms": {
            step: med([c.steps.get(step) for c in steady], 1000)
            for step in (steady[0].steps if steady else {})
        },
        "kinds_db_ms": {kind: median(values) for kind, values in kinds_db.items()},
        "kinds_client_ms": {kind: median(values) for kind, values in kinds_client.items()},
        "cycles": len(steady),
    }
    if peer_result is not None:
        summary["peer_ms"] = med(peer_result.cycles, 1000)
        summary["peer_db_ms"] = med(peer_result.db_ms)
        summary["peer_rss"] = peer_result.rss
        summary["peer_series"] = peer_result.series
        summary["peer_cycles"] = len(peer_result.cycles)
    return summary


def measure_serving(store: Store, plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    settings = exporter_settings(plan.serve_interval)
    # The writer's connection goes: its statistics would land late, among the exporter's.
    store.close()
    with serving.running(store, settings) as (exporter, ready):
        text = exporter.scrape()
        start = exporter.sample()
        idle_cpu = serving.idle_cpu_per_collection(exporter, plan.serve_interval, plan.idle_cycles)
        progress(f"exporter ready in {ready:.2f}s, {serving.series_count(text)} series")
        levels = serving.measure_scrapes(
            exporter,
            store,
            plan.serve_interval,
            list(plan.scrapers),
            plan.scrape_runs,
            plan.scrape_seconds,
            plan.scrape_period,
            progress,
        )
        soak_started = time.perf_counter()
        soaked = serving.soak(exporter, plan.soak_scrapes, plan.soak_step, scrapers=10)
        soak_seconds = time.perf_counter() - soak_started
        progress(f"soak: {plan.soak_scrapes} scrapes in {soak_seconds:.1f}s")
    level_rows = []
    for level in levels:
        scrapes = sum(len(run.latencies) for run in level.runs)
        level_rows.append(
            {
                "scrapers": level.scrapers,
                "scrapes": scrapes,
                "errors": sum(run.errors for run in level.runs),
                "median_ms": median([median(run.latencies) * 1000 for run in level.runs]),
                "p99_ms": median([percentile(run.latencies, 99) * 1000 for run in level.runs]),
                "max_ms": max(max(run.latencies, default=0.0) for run in level.runs) * 1000,
                "collections": level.collections,
                "queue_scans": level.queue_scans,
                "cpu_ms_per_scrape": max(0.0, level.cpu - level.collections * idle_cpu)
                / max(1, scrapes)
                * 1000,
            }
        )
    return {
        "dialect": store.dialect,
        "stage": plan.serve_stage.label,
        "interval_s": plan.serve_interval,
        "period_s": plan.scrape_period,
        "seconds": plan.scrape_seconds,
        "runs": plan.scrape_runs,
        "series": serving.series_count(text),
        "series_crmsync": serving.series_count(text, "crmsync_"),
        "bytes": len(text.encode()),
        "ready_s": ready,
        "rss_start": start.rss,
        "idle_cpu_ms": idle_cpu * 1000,
        "levels": level_rows,
        "soak_points": soaked.scrapes,
        "soak_rss": soaked.rss,
        "soak_peak_rss": soaked.peak_rss,
        "soak_scrapes_per_s": plan.soak_scrapes / soak_seconds,
    }


def benchmark(
    plan: Plan,
    postgres: Any | None,
    sqlite: Any | None,
    with_peer: bool,
    peer_venv: Path,
    progress: Callable[[str], None] = log,
) -> Results:
    """Every measurement of ``plan`` on the given store factories (None: that database skipped)."""
    started = time.perf_counter()
    command = " ".join(["python -m benchmarks", *sys.argv[1:]])
    results = Results(machine=machine(postgres), command=command)
    peer_command = peer.ensure_installed(peer_venv, progress) if with_peer and postgres else None
    for factory, stages in ((postgres, plan.stages), (sqlite, plan.sqlite_stages)):
        if factory is not None and stages:
            measure_database(plan, factory, stages, peer_command, results, progress)
    results.elapsed = time.perf_counter() - started
    return results


def measure_database(
    plan: Plan,
    factory: Any,
    stages: Sequence[Size],
    peer_command: Path | None,
    results: Results,
    progress: Callable[[str], None],
) -> None:
    """Every store of one database: loaded side by side, so that their steady cycles can take
    turns (ratios between sizes then come from the same minutes of the same machine)."""

    def indented(message: str) -> None:
        progress(f"  {message}")

    with ExitStack() as stack:
        opened: list[tuple[Size, Store, float]] = []
        for size in stages:
            store, reused = stack.enter_context(factory(size))
            progress(f"{store.dialect} {size.label}: {'reusing' if reused else 'loading'}")
            loaded = time.perf_counter()
            if not reused:
                store.fill(size, indented)
            opened.append((size, store, time.perf_counter() - loaded))
        first_store = opened[0][1]
        url = first_store.url if first_store.dialect == "postgresql" else None
        marks = cycles.Marks(url, factory.server_log)
        sessions: list[cycles.Session] = []
        try:
            for size, store, _ in opened:
                progress(f"{store.dialect} {size.label}: first collections")
                session = cycles.Session(size.key, store, store_config(store.url), marks)
                sessions.append(session)
                _guarded(session, partial(session.first, plan.first_runs, indented), progress)
            progress(
                f"{first_store.dialect}: {plan.steady_cycles} steady cycles per store, in turn"
            )
            for index in range(plan.steady_cycles):
                for session in sessions:
                    if session.error is None:
                        step = partial(session.steady, index, cycles.Trickle())
                        _guarded(session, step, progress)
            segments = marks.segments()
        finally:
            marks.close()
        collections = [session.finish(segments) for session in sessions]
        for (size, store, load_seconds), collection in zip(opened, collections, strict=True):
            peer_result = None
            if peer_command is not None and store.dialect == "postgresql":
                progress(f"{store.dialect} {size.label}: query-exporter")
                peer_result = peer.measure_peer(
                    peer_command,
                    store,
                    plan.peer_cycles,
                    partial(store.trickle, **asdict(cycles.Trickle())),
                    factory.server_log,
                    indented,
                )
            summary = summarize_stage(store.dialect, size, collection, load_seconds, peer_result)
            progress(f"{store.dialect} {size.label}: failing changes from error rows")
            try:
                summary["failing"] = failing.measure(
                    store.url, store_config(store.url), plan.failing_runs
                )
            except Exception as error:  # a failed measurement is reported, the run goes on
                summary["failing"] = {"error": f"{error.__class__.__name__}: {error}"}
            summary["error"] = next(s.error for s in sessions if s.name == size.key)
            results.stages.append(summary)
            progress(f"{store.dialect} {size.label}: " + report.stage_line(summary))
        for size, store, _ in opened:
            if size == plan.serve_stage and results.serve is None:
                progress(f"{store.dialect} {size.label}: the exporter process, scraped")
                results.serve = measure_serving(store, plan, indented)


def _guarded(
    session: cycles.Session, step: Callable[[], None], progress: Callable[[str], None]
) -> None:
    """Run a measuring step; a failure is recorded against the store, the run goes on."""
    try:
        step()
    except Exception as error:  # a failed collection is a result too
        session.error = f"{error.__class__.__name__}: {str(error).splitlines()[0]}"
        progress(f"  {session.name}: failed: {session.error}")


def machine(postgres: Any | None) -> dict[str, str]:
    memory = "?"
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": str(getattr(postgres, "version", "not measured")),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sa.__version__,
        "psycopg": psycopg.__version__,
        "commit": commit or "?",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=str(__doc__).split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small stores, seconds not minutes")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="admin URL (%(default)s)")
    parser.add_argument("--database", default=DATABASE, help="benchmark database (%(default)s)")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    parser.add_argument(
        "--peer",
        choices=["on", "off", "auto"],
        default="auto",
        help="measure query-exporter too (auto: on unless --quick)",
    )
    parser.add_argument("--peer-venv", type=Path, default=peer.DEFAULT_VENV)
    parser.add_argument("--sqlite-dir", type=Path, default=None, help="where SQLite stores go")
    parser.add_argument("--stages", default="", help="only these stores, e.g. p10k_h100k,p1M_h100k")
    parser.add_argument(
        "--no-serve", action="store_true", help="skip the exporter process (scrapes, memory)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    parser.add_argument("--reuse", action="store_true", help="reuse stores kept by --keep")
    parser.add_argument("--output", type=Path, default=None, help="write the report here")
    parser.add_argument("--json", type=Path, default=None, help="write raw results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.stages:
        wanted = set(args.stages.split(","))
        plan = replace(
            plan,
            stages=tuple(size for size in plan.stages if size.key in wanted),
            sqlite_stages=tuple(size for size in plan.sqlite_stages if size.key in wanted),
        )
    if args.no_serve:
        plan = replace(plan, serve_stage=Size.of(0, 0))
    postgres: PostgresStores | None = None
    if not args.no_postgres:
        try:
            postgres = PostgresStores(args.postgres, args.database, args.keep, args.reuse)
        except psycopg.OperationalError as error:
            log(f"PostgreSQL not reachable, skipped: {error}")
    with tempfile.TemporaryDirectory(prefix="crmsync-bench-") as scratch:
        directory = args.sqlite_dir or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        sqlite = None if args.no_sqlite else SqliteStores(directory, args.keep, args.reuse)
        with_peer = args.peer == "on" or (args.peer == "auto" and not args.quick)
        try:
            results = benchmark(plan, postgres, sqlite, with_peer, args.peer_venv)
        finally:
            if postgres is not None:
                postgres.close()
    text = report.render(results.__dict__)
    print(text)
    if args.output is not None:
        report.write(args.output, text)
    if args.json is not None:
        import json

        args.json.write_text(json.dumps(results.__dict__, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
