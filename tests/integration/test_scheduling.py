"""Collection runs on a schedule of its own: a bounded pool of workers, never the scrapes.

What the worker threads see is recorded and asserted here, in the test's thread.
"""

from __future__ import annotations

import itertools
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from crmsync_testing.helpers import add_history, add_pending, by_name, runner_for, scrape
from exporter.http import ExporterHTTPServer
from exporter.runner import StoreRunner
from exporter.scheduler import Scheduler
from exporter.schema import create_reference_schema
from exporter.snapshot import LatestSnapshot
from exporter.web_config import WebConfig


def sqlite_store(path: Path, pending: int = 5) -> str:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    add_pending(engine, pending)
    engine.dispose()
    return url


class Recorder:
    """What the collections did, written from the worker threads and read in the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cycles: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.scheduled: dict[str, list[float]] = defaultdict(list)
        self.running: dict[Hashable, int] = defaultdict(int)
        self.peak: dict[Hashable, int] = defaultdict(int)
        self.threads: set[str] = set()

    def watch(self, runner: StoreRunner, group: Hashable) -> None:
        original = runner.run_once

        def run_once(scheduled: float | None = None) -> Any:
            started = time.monotonic()
            with self._lock:
                self.running[group] += 1
                self.running["all"] += 1
                for key in (group, "all"):
                    self.peak[key] = max(self.peak[key], self.running[key])
                self.threads.add(threading.current_thread().name)
            try:
                return original(scheduled)
            finally:
                with self._lock:
                    self.running[group] -= 1
                    self.running["all"] -= 1
                    self.cycles[runner.name].append((started, time.monotonic()))
                    assert scheduled is not None
                    self.scheduled[runner.name].append(scheduled)

        runner.run_once = run_once  # type: ignore[method-assign]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {name: len(cycles) for name, cycles in self.cycles.items()}


def wait_for(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    """Poll ``condition``; the bound only turns a hang into a failure."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached"
        time.sleep(0.02)


@pytest.fixture
def stopping() -> Iterator[list[Scheduler]]:
    schedulers: list[Scheduler] = []
    yield schedulers
    for scheduler in schedulers:
        scheduler.stop(time.monotonic() + 5)


def test_a_bounded_pool_runs_every_store_on_its_interval(
    tmp_path: Path, stopping: list[Scheduler]
) -> None:
    # Twelve stores, three workers; six stores on a "server" that allows two at once.
    runners = [
        runner_for(sqlite_store(tmp_path / f"s{n}.db"), name=f"s{n}", interval="400ms")
        for n in range(12)
    ]
    recorder = Recorder()
    server = {runner.name: ("db", 5432) if n < 6 else None for n, runner in enumerate(runners)}
    for runner in runners:
        recorder.watch(runner, server[runner.name] or "sqlite")
    scheduler = Scheduler(
        runners, workers=3, per_server=2, server_of=lambda runner: server[runner.name]
    )
    stopping.append(scheduler)
    scheduler.start()
    wait_for(lambda: len(recorder.counts()) == 12 and min(recorder.counts().values()) >= 4)
    # Taken before stopping, which cancels the cycles then running.
    errors = {runner.name: runner.state.last_error for runner in runners}
    assert scheduler.stop(time.monotonic() + 5)

    assert errors == dict.fromkeys(errors)
    assert recorder.peak["all"] <= 3
    assert recorder.peak[("db", 5432)] <= 2
    assert recorder.threads <= {"collect-0", "collect-1", "collect-2"}
    for name, scheduled in recorder.scheduled.items():
        # After the first, cycles follow the store's phase, whole intervals apart: none
        # closer than one (no catching up in bursts), never started before its time.
        gaps = [later - earlier for earlier, later in itertools.pairwise(scheduled[1:])]
        assert all(round(gap / 0.4) >= 1 for gap in gaps), (name, gaps)
        assert all(gap == pytest.approx(round(gap / 0.4) * 0.4, abs=1e-6) for gap in gaps)
        starts = [start for start, _ in recorder.cycles[name]]
        assert all(start >= due for start, due in zip(starts, scheduled, strict=True))
    # The phases spread the stores over the interval rather than starting them together.
    second_starts = sorted(cycles[1][0] for cycles in recorder.cycles.values())
    assert second_starts[-1] - second_starts[0] > 0.1
    for runner in runners:
        assert runner.state.collections == len(recorder.cycles[runner.name])


def test_the_start_delay_shows_the_wait_for_a_worker(
    tmp_path: Path, stopping: list[Scheduler]
) -> None:
    runners = [
        runner_for(sqlite_store(tmp_path / f"s{n}.db", pending=200), name=f"s{n}", interval="1h")
        for n in range(4)
    ]
    recorder = Recorder()
    for runner in runners:
        recorder.watch(runner, "sqlite")
    scheduler = Scheduler(runners, workers=1, per_server=1, server_of=lambda _runner: None)
    stopping.append(scheduler)
    scheduler.start()
    wait_for(lambda: sum(recorder.counts().values()) == 4)
    assert scheduler.stop(time.monotonic() + 5)

    # One worker: the stores, all due at once, ran one after the other in the file's order,
    # and each started as late as the cycles before it took.
    order = sorted(runners, key=lambda runner: recorder.cycles[runner.name][0][0])
    assert [runner.name for runner in order] == ["s0", "s1", "s2", "s3"]
    delays = [runner.state.start_delay for runner in runners]
    assert all(delay is not None for delay in delays)
    busy = 0.0
    for runner in runners:
        delay = runner.state.start_delay
        assert delay is not None
        assert delay >= busy - 0.001, (runner.name, delay, busy)
        started, ended = recorder.cycles[runner.name][0]
        busy += ended - started
    served = by_name(scrape(*runners), "crmsync_collection_start_delay_seconds")
    assert served == {
        frozenset({("store", runner.name)}): runner.state.start_delay for runner in runners
    }


def test_a_store_waiting_for_a_worker_does_not_go_stale(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    engine.dispose()
    runner = runner_for(sqlite_url, interval="1s", query_timeout="1s")
    state = runner.run_once()
    taken = state.gauges_taken
    stale_at = state.fresh_until
    assert stale_at == pytest.approx(taken + 2 * 1 + 1)
    assert state.up(stale_at - 0.1)
    assert not state.up(stale_at + 0.1)

    # Due, and waiting for a worker since just before it would have gone stale.
    runner.queue_wait.waiting(stale_at - 0.5)
    assert state.up(stale_at + 10.0)
    # A worker takes it: the wait stops growing, and the cycle's own time counts again.
    runner.queue_wait.started(stale_at + 10.0)
    assert state.up(stale_at + 10.4)
    assert not state.up(stale_at + 10.6)
    runner.queue_wait.finished()
    assert not state.up(stale_at + 0.1)
    runner.close()


@pytest.mark.parametrize("last_cycle", ["failed", "succeeded"])
def test_waiting_for_a_server_whose_last_collection_failed_counts_against_freshness(
    tmp_path: Path, stopping: list[Scheduler], last_cycle: str
) -> None:
    """A store queued behind a server's hanging cycle stays up while the server's last
    collection succeeded (the server is busy), and goes stale on time when it failed (the
    server is likely down, and its stores' gauges go with it)."""
    hanging_url = sqlite_store(tmp_path / "hanging.db")
    hanging = runner_for(hanging_url, name="hanging", interval="250ms", query_timeout="500ms")
    waiting = runner_for(
        sqlite_store(tmp_path / "waiting.db"), name="waiting", interval="1s", query_timeout="500ms"
    )
    finished: list[tuple[str, bool]] = []
    hung, release = threading.Event(), threading.Event()
    lock = threading.Lock()

    def watch(runner: StoreRunner) -> None:
        original = runner.run_once

        def run_once(scheduled: float | None = None) -> Any:
            with lock:
                # Hang once the server's last finished cycle is the one the case wants.
                hang = (
                    runner is hanging
                    and bool(finished)
                    and finished[-1] == ("hanging", last_cycle == "failed")
                    and not hung.is_set()
                )
            if hang:
                hung.set()
                assert release.wait(30)
            state = original(scheduled)
            with lock:
                finished.append((runner.name, state.last_error is not None))
            return state

        runner.run_once = run_once  # type: ignore[method-assign]

    for runner in (hanging, waiting):
        watch(runner)
    scheduler = Scheduler(
        [hanging, waiting], workers=2, per_server=1, server_of=lambda _runner: ("db", 1)
    )
    stopping.append(scheduler)
    scheduler.start()
    wait_for(lambda: waiting.state.collections >= 1 and hanging.state.collections >= 1)
    if last_cycle == "failed":
        engine = sa.create_engine(hanging_url)
        with engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE sync_queue RENAME TO sync_queue_moved"))
        engine.dispose()
    try:
        assert hung.wait(30), "the cycle to hang never came"
        state = waiting.state
        # Freshness: 2 intervals + the query timeout after its last collection ended.
        assert state.fresh_until == pytest.approx(state.gauges_taken + 2.5)
        wait_for(lambda: time.monotonic() > state.fresh_until + 1.0)
        assert waiting.state is state  # it could not run: the server's one place is held
        assert waiting.state.up(time.monotonic()) is (last_cycle == "succeeded")
    finally:
        release.set()


def test_stop_ends_waiting_and_running_stores_at_once(
    tmp_path: Path, stopping: list[Scheduler]
) -> None:
    runners = [
        runner_for(sqlite_store(tmp_path / f"s{n}.db"), name=f"s{n}", interval="100ms")
        for n in range(30)
    ]
    scheduler = Scheduler(runners, workers=4, per_server=4, server_of=lambda _runner: None)
    stopping.append(scheduler)
    scheduler.start()
    wait_for(lambda: all(runner.state.collections >= 2 for runner in runners))
    assert scheduler.stop(time.monotonic() + 2.0)
    after_stop = [runner.state.collections for runner in runners]
    time.sleep(0.3)
    assert [runner.state.collections for runner in runners] == after_stop


SCRAPERS = 20
SCRAPES = 25


def test_concurrent_scrapes_cause_no_queries(sqlite_url: str, stopping: list[Scheduler]) -> None:
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

    def published(_runner: StoreRunner) -> None:
        metrics.publish()
        first_cycle.set()

    scheduler = Scheduler(
        [runner], workers=2, per_server=1, server_of=lambda _runner: None, after_cycle=published
    )
    stopping.append(scheduler)
    scheduler.start()
    assert first_cycle.wait(30), "no first collection"
    queried = len(statements)
    threads = [threading.Thread(target=scraper) for _ in range(SCRAPERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert scheduler.stop(time.monotonic() + 5)
    server.shutdown()

    assert len(bodies) == SCRAPERS * SCRAPES
    assert all(b'crmsync_up{store="main"} 1.0' in body for body in bodies)
    assert runner.state.collections == 1
    assert len(statements) == queried  # hundreds of scrapes, not one statement
    assert set(statements) == {"collect-0"}
