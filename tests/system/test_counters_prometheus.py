"""Counters as a real Prometheus reads them, on PostgreSQL, MariaDB and SQLite, both layouts.

One exporter process reads six stores (each layout on each database) every second; two
Prometheus servers scrape it, one every second and one every three seconds (longer than the
collection interval); a writer per store changes it four times a second. The scenarios run
one after another on all stores at once, each between two marks:

- *down at start*: the stores are out of reach when the exporter starts (TCP proxies refuse,
  the SQLite file is not there yet) while the writers go on, then they come up;
- *steady*: steady traffic;
- *new labels*: a new error code and a new object appear;
- *out of order*: a transaction holding smaller ids commits after later ones (not on SQLite,
  which serializes writers);
- *purge restart*: the old history and error rows are purged, the exporter restarted
  (SIGTERM) while the writers go on;
- *truncation*: the change tables are truncated, their ids starting again from 1;
- *kill restart*: the exporter is killed (SIGKILL) and started again while a transaction is
  open, which commits after the new process's first read.

How the comparison is kept honest. ``increase()`` extrapolates to the edges of its range when
the first and last samples are not on them. Every span is therefore evaluated at a scrape's
own timestamp, with a range reaching exactly back to another scrape's timestamp (Prometheus
2.42 includes both ends): for series present at both ends nothing is extrapolated, and a
series that appears inside the span starts at 0 (the exporter serves a new series at 0
first), which Prometheus takes as its zero point. The raw samples are read too and their
differences summed with Prometheus's reset rule: the two must agree.

What Prometheus must find is the store's count of the changes that became visible in the
span, read back by SQL before anything deletes them, each with the interval in which it
became visible (stamped when written, committed when the writer's transaction returned; a
slow transaction's rows when it committed). A scrape's value holds the changes visible when
the collection it served read the store, somewhere between that collection's start and end
(``crmsync_last_successful_collection_timestamp_seconds`` minus
``crmsync_collection_duration_seconds``, and the former). The tolerance at each edge is thus
the duration of one collection, not a scrape interval: the SQL count is the range
[changes surely in the span, changes possibly in it], mostly one number. A span over a
restart adds what each exporter process counted from its first read; the writers pause from
a process's start to its first read, so no change is ambiguous there, and the changes
written while no exporter runs are counted by none.

No spike: between two consecutive scrapes the counters rise by no more than the changes
that could have become visible since (a new series may reveal up to its hold's worth);
the first sample of every series in every exporter process is 0; within a process no
counter ever falls; and no counter is served before the store's first read.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync_testing.alerting import prometheus, query
from crmsync_testing.exporter_process import Exporter, write_config
from crmsync_testing.helpers import by_name, utcnow
from crmsync_testing.pg_instance import free_port
from crmsync_testing.scenario_stores import (
    NEW_CODE,
    NEW_OBJECT,
    STATUS_TABLE,
    THREE_TABLES,
    Change,
    ScenarioStore,
)
from crmsync_testing.servers import MARIADB_ADMIN, POSTGRES_ADMIN, require_binary, unavailable

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(480)]

INTERVAL = 1.0
HOLD = 5.0
"""new_counter_hold: longer than the slow Prometheus's scrape interval, with a margin."""
SCRAPE_INTERVALS = {"fast": 1.0, "slow": 3.0}
AFTER_MARK = SCRAPE_INTERVALS["slow"] + INTERVAL + 0.5
"""Seconds for which nothing changes after a mark: both Prometheus scrape a span's edge."""
DATABASES = ("postgresql", "mariadb", "sqlite")
LAYOUTS = ("three-tables", "status-table")
STORES = [f"{database}-{layout}" for database in DATABASES for layout in LAYOUTS]
FAMILIES = {
    "synced": "crmsync_records_synced_total",
    "errors": "crmsync_sync_errors_total",
    "latency": "crmsync_sync_latency_seconds_count",
}
SPANS = (
    ("down at start", "first read", "steady"),
    ("steady", "steady", "new labels"),
    ("new labels", "new labels", "out of order"),
    ("out of order", "out of order", "purge restart"),
    ("purge restart", "purge restart", "truncation"),
    ("truncation", "truncation", "kill restart"),
    ("kill restart", "kill restart", "end"),
    ("whole run", "first read", "end"),
)
# Subsets of the series compared on their own: (scenario, family, label, value).
SUBSETS = (
    ("new labels", "synced", "object", NEW_OBJECT),
    ("new labels", "errors", "error_code", NEW_CODE),
)


# --- the stores -----------------------------------------------------------------------------


@contextmanager
def databases(work: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """URLs of empty databases, one per store; and why a database server is missing."""
    urls: dict[str, str] = {}
    missing: dict[str, str] = {}
    cleanups: list[Callable[[], None]] = []
    suffix = uuid.uuid4().hex[:8]
    for database, admin_url in (("postgresql", POSTGRES_ADMIN), ("mariadb", MARIADB_ADMIN)):
        admin = sa.create_engine(admin_url)
        try:
            with admin.begin() as connection:
                for layout in LAYOUTS:
                    name = f"crmsync_e2e_{layout[0]}_{suffix}"
                    if database == "postgresql":
                        connection.execute(sa.text(f"CREATE SCHEMA {name}"))
                        url = sa.make_url(admin_url).update_query_dict(
                            {"options": f"-csearch_path={name}"}
                        )
                        drop = f"DROP SCHEMA {name} CASCADE"
                    else:
                        connection.execute(sa.text(f"CREATE DATABASE {name}"))
                        url = sa.make_url(admin_url).set(database=name)
                        drop = f"DROP DATABASE {name}"
                    urls[f"{database}-{layout}"] = url.render_as_string(hide_password=False)
                    cleanups.append(_dropper(admin, drop))
        except sa.exc.OperationalError as error:
            missing[database] = f"{database} is not reachable at {admin_url}: {error.orig}"
        cleanups.append(admin.dispose)
    for layout in LAYOUTS:
        urls[f"sqlite-{layout}"] = f"sqlite:///{work / f'{layout}.db'}"
    try:
        yield urls, missing
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def _dropper(admin: sa.Engine, statement: str) -> Callable[[], None]:
    def drop() -> None:
        with admin.begin() as connection:
            connection.execute(sa.text(statement))

    return drop


# --- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """One exporter process: the window in which it made its first read of every store."""

    first_read_after: float
    first_read_before: float


@dataclass
class Run:
    """What happened, when (Unix seconds), and what the stores and Prometheus recorded."""

    stores: list[ScenarioStore]
    missing: dict[str, str]
    marks: dict[str, float] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    changes: dict[str, list[Change]] = field(default_factory=dict)
    prometheus: dict[str, str] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    findings: dict[str, list[str]] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()


def wait_first_read(exporter: Exporter, stores: list[ScenarioStore]) -> float:
    """When every store's counters are served: each has been read once by this process."""
    names = {store.name for store in stores}

    def all_read(result: Any) -> bool:
        served = {
            dict(labels)["store"] for labels in by_name(result, "crmsync_records_synced_total")
        }
        return names <= served

    exporter.wait_serving()
    exporter.wait_until(all_read, seconds=60, every=0.05)
    return time.time()


def pause(stores: list[ScenarioStore]) -> None:
    for store in stores:
        store.writer.pause()


def resume(stores: list[ScenarioStore]) -> None:
    for store in stores:
        store.writer.resume()


def start_process(run: Run, config: Path, port: int) -> Exporter:
    """An exporter process; the writers are paused until it has read every store once."""
    pause(run.stores)
    after = time.time()
    exporter = Exporter(config, port=port)
    ready = wait_first_read(exporter, run.stores)
    run.processes.append(Process(after, ready))
    resume(run.stores)
    return exporter


def play(run: Run, config: Path, port: int) -> None:
    """The scenarios, one after another, on every store at once."""
    stores = run.stores
    since = utcnow()
    for store in stores:
        if store.available:  # SQLite: the file is moved into place later, its writer waits
            store.writer.resume()
    exporter = Exporter(config, port=port)
    try:
        exporter.wait_serving()
        exporter.wait_until(
            lambda r: len(by_name(r, "crmsync_up")) == len(stores), seconds=30, every=0.1
        )
        time.sleep(2.0)  # down: the writers write, the exporter cannot read
        pause(stores)
        run.mark("first read")
        for store in stores:
            store.make_available()
        ready = wait_first_read(exporter, stores)
        run.processes.append(Process(run.marks["first read"], ready))
        resume(stores)
        time.sleep(HOLD + 3)

        run.mark("steady")
        time.sleep(6)

        run.mark("new labels")
        time.sleep(AFTER_MARK)  # the span before ends without them
        for store in stores:
            store.writer.new_labels.set()
        time.sleep(HOLD + 5)

        run.mark("out of order")
        slow = [store.open_slow_transaction() for store in stores if store.concurrent_writers]
        time.sleep(2)
        for transaction in slow:
            transaction.commit()
        time.sleep(3)

        run.mark("purge restart")
        for store in stores:
            store.purge(since)
        time.sleep(AFTER_MARK)
        exporter.stop()
        time.sleep(1.5)  # no exporter: what is written now is counted by none
        exporter = start_process(run, config, port)
        time.sleep(HOLD + 3)

        run.mark("truncation")
        time.sleep(1)
        pause(stores)
        # Every change read before the truncation deletes it: one deleted unread is never seen.
        time.sleep(INTERVAL + 1)
        for store in stores:
            run.changes.setdefault(store.name, []).extend(store.ledger(since))
            store.truncate()
        resume(stores)
        time.sleep(5)

        run.mark("kill restart")
        slow = [store.open_slow_transaction() for store in stores if store.concurrent_writers]
        time.sleep(AFTER_MARK)
        exporter.process.kill()
        exporter.stop()
        time.sleep(1.5)
        exporter = start_process(run, config, port)
        time.sleep(1)
        for transaction in slow:
            transaction.commit()  # open across the restart, visible after the first read
        time.sleep(HOLD + 3)
        pause(stores)
        time.sleep(INTERVAL + SCRAPE_INTERVALS["slow"] + 1)
        run.mark("end")
        time.sleep(SCRAPE_INTERVALS["slow"] + 0.5)  # a scrape after the mark, in both
    finally:
        exporter.stop()
        for store in stores:
            store.writer.stop()
    for store in stores:
        run.changes.setdefault(store.name, []).extend(store.ledger(since))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    binary = require_binary("prometheus")
    work = tmp_path_factory.mktemp("counters")
    with databases(work) as (urls, missing), ExitStack() as stack:
        stores = [
            ScenarioStore(
                key.split("-", 1)[0],
                STATUS_TABLE if key.endswith("status-table") else THREE_TABLES,
                url,
            )
            for key, url in urls.items()
            if key.split("-", 1)[0] not in missing
        ]
        for store in stores:
            stack.callback(store.close)
            store.prepare()
        port = free_port()
        result = Run(stores, missing)
        for name, seconds in SCRAPE_INTERVALS.items():
            (work / name).mkdir()
            result.prometheus[name] = stack.enter_context(
                prometheus(
                    binary,
                    work / name,
                    rule_files=[],
                    targets=[f"127.0.0.1:{port}"],
                    alertmanager_url=None,
                    interval=f"{seconds:g}s",
                )
            )
        entries = [
            {
                "name": store.name,
                "url": store.exporter_url,
                "interval": f"{INTERVAL:g}s",
                "query_timeout": "5s",
                "settle_time": "10s",
                "new_counter_hold": f"{HOLD:g}s",
                **store.exporter_settings(),
            }
            for store in stores
        ]
        config = write_config(work / "exporter.yml", entries)
        play(result, config, port)
        for store in stores:
            analyse(result, store)
        print_comparisons(result)
        yield result


# --- what Prometheus recorded -------------------------------------------------------------------

Series = dict[frozenset[tuple[str, str]], list[tuple[float, float]]]


def matrix(url: str, selector: str, start: float, end: float) -> Series:
    """Every raw sample of ``selector`` from ``start`` to ``end``, per label set."""
    milliseconds = int((end - start) * 1000) + 1
    result = query(url, f"{selector}[{milliseconds}ms]", at=end)
    return {
        frozenset((k, v) for k, v in item["metric"].items() if k != "__name__"): [
            (float(at), float(value)) for at, value in item["values"]
        ]
        for item in result
    }


def single(series: Series) -> dict[float, float]:
    values: dict[float, float] = {}
    for samples in series.values():
        values.update(samples)
    return values


@dataclass
class Scrapes:
    """One Prometheus's samples of one store."""

    finished: dict[float, float]
    """Scrape time -> end of the collection it served (Unix seconds)."""
    started: dict[float, float]
    failures: dict[float, float]
    process: dict[float, float]
    """Scrape time -> start time of the exporter process that answered."""
    counters: dict[str, Series]

    @property
    def times(self) -> list[float]:
        return sorted(self.finished)

    def at_or_after(self, moment: float) -> float:
        return next(at for at in self.times if at >= moment)

    def read_before(self, at: float) -> float:
        """Changes visible before this instant are surely in the scrape's values."""
        return self.started[at]

    def read_by(self, at: float) -> float:
        """Changes visible after this instant are surely not in the scrape's values."""
        served = self.finished[at]
        # A collection that failed since the one served may have moved counters on.
        first = min(t for t in self.times if self.finished[t] == served)
        return at if self.failures.get(at, 0.0) > self.failures.get(first, 0.0) else served

    def processes(self) -> list[float]:
        return sorted(set(self.process.values()))


def scrapes_of(url: str, store: str, start: float, end: float) -> Scrapes:
    selector = f'{{store="{store}"}}'
    finished = single(
        matrix(url, f"crmsync_last_successful_collection_timestamp_seconds{selector}", start, end)
    )
    durations = single(matrix(url, f"crmsync_collection_duration_seconds{selector}", start, end))
    failures = single(matrix(url, f"crmsync_collection_failures_total{selector}", start, end))
    process = single(matrix(url, 'process_start_time_seconds{job="crmsync"}', start, end))
    counters = {
        family: matrix(url, f"{metric}{selector}", start, end)
        for family, metric in FAMILIES.items()
    }
    return Scrapes(
        finished={at: value for at, value in finished.items() if at in durations},
        started={at: finished[at] - durations[at] for at in durations if at in finished},
        failures=failures,
        process=process,
        counters=counters,
    )


# --- the comparison -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    scenario: str
    store: str
    prometheus: str
    family: str
    subset: str
    increase: float
    raw: float
    surely: int
    possibly: int

    @property
    def exact(self) -> bool:
        return self.surely <= self.increase <= self.possibly

    def line(self) -> str:
        sql = f"{self.surely}" if self.surely == self.possibly else f"{self.surely}-{self.possibly}"
        return (
            f"{self.scenario:<14} {self.store:<26} {self.prometheus:<5} "
            f"{self.family + self.subset:<28} increase {self.increase:>7g}  raw {self.raw:>7g}"
            f"  SQL {sql:>9}"
        )


def raw_increase(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """Prometheus's increase() without extrapolation: differences, a drop read as a reset."""
    values = [value for at, value in samples if start <= at <= end]
    if len(values) < 2:
        return 0.0
    total = values[-1] - values[0]
    for previous, value in itertools.pairwise(values):
        if value < previous:
            total += previous
    return total


Window = tuple[float, float, float, float]
"""Changes visible in (surely_from, surely_until) are in a span; in (possibly_from,
possibly_until) may be."""


def windows(run: Run, scrapes: Scrapes, start: float, end: float) -> list[Window]:
    """What the counters can hold between two scrapes, one window per exporter process."""
    result = []
    spanned = [at for at in scrapes.times if start <= at <= end]
    for process_start in scrapes.processes():
        times = [at for at in spanned if scrapes.process[at] == process_start]
        if not times:
            continue
        first, last = times[0], times[-1]
        every = [at for at in scrapes.times if scrapes.process[at] == process_start]
        if first == every[0]:
            # From the process's first read: it served 0 then, whatever it had counted.
            process = min(run.processes, key=lambda p: abs(p.first_read_before - first))
            begin = (process.first_read_before, process.first_read_after)
        else:
            begin = (scrapes.read_by(first), scrapes.read_before(first))
        result.append((begin[0], scrapes.read_before(last), begin[1], scrapes.read_by(last)))
    return result


def count(changes: list[Change], spans: list[Window]) -> tuple[int, int]:
    surely = sum(
        1
        for change in changes
        if any(lo <= change.visible_from and change.visible_until < hi for lo, hi, _, _ in spans)
    )
    possibly = sum(
        1
        for change in changes
        if any(lo <= change.visible_until and change.visible_from < hi for _, _, lo, hi in spans)
    )
    return surely, possibly


def of_family(changes: list[Change], family: str, label: str = "", value: str = "") -> list[Change]:
    kind = "errors" if family == "errors" else "synced"
    chosen = [change for change in changes if change.kind == kind]
    if label:
        chosen = [change for change in chosen if getattr(change, label) == value]
    return chosen


def analyse(run: Run, store: ScenarioStore) -> None:
    changes = run.changes[store.name]
    findings = run.findings.setdefault(store.name, [])
    start, end = run.marks["first read"] - 30, run.marks["end"] + SCRAPE_INTERVALS["slow"] + 0.5
    for name, url in run.prometheus.items():
        scrapes = scrapes_of(url, store.name, start, end)
        findings.extend(f"{name}: {problem}" for problem in spikes(run, scrapes, changes))
        for scenario, begin, finish in SPANS:
            if scenario == "out of order" and not store.concurrent_writers:
                continue
            first = scrapes.at_or_after(run.marks[begin])
            last = scrapes.at_or_after(run.marks[finish])
            spans = windows(run, scrapes, first, last)
            milliseconds = round((last - first) * 1000)
            cases = [(family, "", "") for family in FAMILIES]
            cases += [(f, label, value) for s, f, label, value in SUBSETS if s == scenario]
            for family, label, value in cases:
                matcher = f'store="{store.name}"' + (f',{label}="{value}"' if label else "")
                promql = f"sum(increase({FAMILIES[family]}{{{matcher}}}[{milliseconds}ms]))"
                answer = query(url, promql, at=last)
                increase = float(answer[0]["value"][1]) if answer else 0.0
                raw = sum(
                    raw_increase(samples, first, last)
                    for labels, samples in scrapes.counters[family].items()
                    if not label or (label, value) in labels
                )
                surely, possibly = count(of_family(changes, family, label, value), spans)
                subset = f"{{{label}={value}}}" if label else ""
                run.comparisons.append(
                    Comparison(
                        scenario, store.name, name, family, subset, increase, raw, surely, possibly
                    )
                )


def spikes(run: Run, scrapes: Scrapes, changes: list[Change]) -> Iterator[str]:
    """Every way the counters could mislead Prometheus: a jump, a fall, a series not from 0."""
    available = run.marks["first read"]
    for family, series in scrapes.counters.items():
        relevant = of_family(changes, family)
        for labels, samples in series.items():
            if samples and samples[0][0] < available:
                yield f"{family} {dict(labels)} served before the store could be read"
            for process_start in scrapes.processes():
                mine = [(at, v) for at, v in samples if scrapes.process.get(at) == process_start]
                if mine and mine[0][1] != 0:
                    yield f"{family} {dict(labels)} first read {mine[0][1]}, not 0"
                for (_, before), (at, after) in itertools.pairwise(mine):
                    if after < before:
                        yield f"{family} {dict(labels)} fell from {before} to {after} at {at}"
        values = [dict(samples) for samples in series.values()]
        for process_start in scrapes.processes():
            times = [at for at in scrapes.times if scrapes.process[at] == process_start]
            for before, after in itertools.pairwise(times):
                rise = sum(value.get(after, 0.0) - value.get(before, 0.0) for value in values)
                since = scrapes.read_before(before) - HOLD - 2 * INTERVAL
                _, possible = count(relevant, [(0.0, 0.0, since, scrapes.read_by(after))])
                if rise > possible:
                    yield f"{family} rose by {rise} at {after}, at most {possible} became visible"


def print_comparisons(run: Run) -> None:
    print(f"\n{'scenario':<14} {'store':<26} {'prom':<5} {'counter':<28} Prometheus, then SQL")
    for comparison in run.comparisons:
        print(comparison.line())
    for store, findings in run.findings.items():
        for finding in findings:
            print(f"{store}: {finding}")


# --- the tests --------------------------------------------------------------------------------


def store_of(run: Run, name: str) -> ScenarioStore:
    database = name.split("-", 1)[0]
    if database in run.missing:
        unavailable(run.missing[database])
    return next(store for store in run.stores if store.name == name)


def check(run: Run, scenario: str, name: str) -> None:
    store = store_of(run, name)
    compared = [c for c in run.comparisons if c.scenario == scenario and c.store == store.name]
    assert compared, f"{scenario} was not measured on {name}"
    wrong = [c.line() for c in compared if not c.exact or abs(c.increase - c.raw) > 1e-6]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("store", STORES)
def test_a_store_down_at_start_has_no_counters_then_counts_from_its_first_read(
    run: Run, store: str
) -> None:
    check(run, "down at start", store)
    served_early = [f for f in run.findings[store] if "before the store could be read" in f]
    assert not served_early


@pytest.mark.parametrize("store", STORES)
def test_steady_traffic(run: Run, store: str) -> None:
    check(run, "steady", store)


@pytest.mark.parametrize("store", STORES)
def test_a_new_error_code_and_a_new_object_are_counted_from_their_first_change(
    run: Run, store: str
) -> None:
    check(run, "new labels", store)
    subsets = [
        c for c in run.comparisons if c.scenario == "new labels" and c.subset and c.store == store
    ]
    assert len(subsets) == 2 * len(SCRAPE_INTERVALS)
    assert all(c.surely > 0 for c in subsets)


@pytest.mark.parametrize("store", STORES)
def test_rows_committed_out_of_id_order_are_counted_once(run: Run, store: str) -> None:
    if not store_of(run, store).concurrent_writers:
        pytest.skip("SQLite serializes writers: nothing commits out of order")
    check(run, "out of order", store)


@pytest.mark.parametrize("store", STORES)
def test_purged_history_and_a_restart_make_no_spike(run: Run, store: str) -> None:
    check(run, "purge restart", store)


@pytest.mark.parametrize("store", STORES)
def test_truncated_tables_neither_lower_nor_lose_counts(run: Run, store: str) -> None:
    check(run, "truncation", store)


@pytest.mark.parametrize("store", STORES)
def test_a_killed_exporter_restarts_from_zero_and_counts_a_transaction_left_open(
    run: Run, store: str
) -> None:
    check(run, "kill restart", store)


@pytest.mark.parametrize("store", STORES)
def test_the_whole_run_and_no_spike_anywhere(run: Run, store: str) -> None:
    check(run, "whole run", store)
    assert run.findings[store_of(run, store).name] == []


# --- why new series start at 0 ---------------------------------------------------------------


def test_prometheus_counts_a_new_series_first_step_only_from_a_zero_sample(tmp_path: Path) -> None:
    """Which way of introducing a series works with the Prometheus people run (Debian's 2.42).

    A scripted target serves two counters that appear mid-run: one straight at 5 with an
    OpenMetrics ``_created`` timestamp, one at 0 for two scrapes before it reaches 5; both
    then go to 7. ``increase()`` over the whole run counts 7 for the second, about 2 for the
    first: its first step is lost, and ``_created`` does not help (2.42 stores it as a series
    of its own; zero ingestion from it came with 2.50's created-timestamp-zero-ingestion).
    """
    binary = require_binary("prometheus")
    script = _ScriptedTarget()
    with (
        script.serving() as target,
        prometheus(
            binary, tmp_path, rule_files=[], targets=[target], alertmanager_url=None, interval="1s"
        ) as url,
    ):
        for phase in range(4):
            script.phase = phase
            script.wait_scrapes(3)
        result = matrix(url, "demo_total", time.time() - 120, time.time())
        last = max(at for samples in result.values() for at, _ in samples)
        increases = {
            item["metric"]["case"]: float(item["value"][1])
            for item in query(url, "increase(demo_total[1h])", at=last)
        }
        created = query(url, "demo_created", at=last)
    assert increases["zero_first"] == 7.0
    assert increases["no_zero"] < 3.0
    assert created, "Prometheus stored _created as a series of its own"


class _ScriptedTarget:
    """Serves counters by phase: 0 none, 1 both appear, 2 both at 5, 3 both at 7."""

    def __init__(self) -> None:
        self.phase = 0
        self.scrapes = 0
        self._lock = threading.Condition()

    def body(self) -> bytes:
        lines = ["# TYPE demo counter"]
        if self.phase >= 1:
            value = 5 if self.phase < 3 else 7
            lines.append(f'demo_total{{case="no_zero"}} {value}')
            lines.append(f'demo_created{{case="no_zero"}} {time.time() - 0.5:.3f}')
            lines.append(f'demo_total{{case="zero_first"}} {0 if self.phase == 1 else value}')
        return ("\n".join([*lines, "# EOF"]) + "\n").encode()

    def wait_scrapes(self, count: int) -> None:
        with self._lock:
            target = self.scrapes + count
            assert self._lock.wait_for(lambda: self.scrapes >= target, timeout=30)

    @contextmanager
    def serving(self) -> Iterator[str]:
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = script.body()
                self.send_response(200)
                self.send_header("Content-Type", "application/openmetrics-text; version=1.0.0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with script._lock:
                    script.scrapes += 1
                    script._lock.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
