"""The contract's metric families, built from the stores' last states (once per collection)."""

from __future__ import annotations

import math
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter import metric_specs as specs
from exporter.metric_specs import LATENCY_BUCKETS
from exporter.runner import StoreState

_BUCKET_BOUNDS = [f"{bound:g}" for bound in LATENCY_BUCKETS] + ["+Inf"]


class SyncStoreCollector(Collector):
    """Publishes every store's metrics; never queries a database itself."""

    def __init__(
        self,
        states: Callable[[], Sequence[StoreState]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._states = states
        self._clock = clock
        self._lock = threading.Lock()
        self._building = threading.Lock()
        self._generation: _Generation | None = None
        self._ages_cache: tuple[_Generation, int, Metric] | None = None

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        generation = self._unchanged_since_collection(tuple(self._states()), now)
        yield from generation.families
        # Ages move on between collections, a second at a time: scrapes within the same
        # second share one family (written once), so a hundred scrapers cost little more
        # than one.
        with self._lock:
            cached = self._ages_cache
            if cached is None or cached[0] is not generation or cached[1] != math.floor(now):
                ages = self._ages(generation.states, now)
                self._ages_cache = cached = (generation, math.floor(now), ages)
        yield cached[2]

    @contextmanager
    def preparing(self) -> Iterator[list[Metric]]:
        """The families of the stores' latest states, handed out once the block ends.

        Until then scrapes get the previous collection's, so that none waits while the new
        ones are built and written (see exporter.exposition).
        """
        with self._building:
            now = self._clock()
            generation = self._build(tuple(self._states()), now)
            yield generation.families
            self._generation = generation

    def _unchanged_since_collection(self, states: Sequence[StoreState], now: float) -> _Generation:
        """Every family but the ages: the same objects until a store's state changes.

        Handing out the same objects lets the HTTP layer write them once per collection
        rather than once per scrape (see exporter.exposition).
        """
        cached = self._generation
        if cached is not None and cached.matches(states, now):
            return cached
        # While the new families are being prepared, the previous ones are still served.
        if not self._building.acquire(blocking=cached is None):
            assert cached is not None
            return cached
        try:
            cached = self._generation
            if cached is None or not cached.matches(states, now):
                self._generation = cached = self._build(states, now)
            return cached
        finally:
            self._building.release()

    def _build(self, states: Sequence[StoreState], now: float) -> _Generation:
        families = [*self._store_metrics(states, now), *self._self_metrics(states, now)]
        return _Generation(tuple(states), tuple(state.up(now) for state in states), families)

    def _ages(self, states: Sequence[StoreState], now: float) -> Metric:
        """The oldest pending ages at ``now``, on the database's clock."""
        age = specs.OLDEST_AGE.gauge()
        for state in states:
            gauges = state.gauges
            if gauges is None or not state.up(now):
                continue
            db_now = gauges.db_now + (now - state.gauges_taken)
            for series, backlog in gauges.backlog.items():
                oldest = backlog.oldest
                age.add_metric(
                    [state.store, *series], 0.0 if oldest is None else max(0.0, db_now - oldest)
                )
        return age

    def _store_metrics(self, states: Sequence[StoreState], now: float) -> Iterator[Metric]:
        pending = specs.PENDING.gauge()
        oldest = specs.OLDEST_TIMESTAMP.gauge()
        last_hour = specs.LAST_HOUR.gauge()
        last_hour_start = specs.LAST_HOUR_START.gauge()
        synced = specs.SYNCED.counter()
        errors = specs.ERRORS.counter()
        latency = specs.LATENCY.histogram()
        future = specs.FUTURE_ROWS.gauge()
        failing = specs.FAILING.gauge()
        for state in states:
            store = state.store
            gauges = state.gauges
            if gauges is not None and state.up(now):
                for series, backlog in gauges.backlog.items():
                    labels = [store, *series]
                    pending.add_metric(labels, backlog.pending)
                    if backlog.oldest is not None:
                        oldest.add_metric(labels, backlog.oldest)
                for (obj, direction), count in gauges.synced_last_hour.items():
                    last_hour.add_metric([store, obj, direction], count)
                if gauges.last_hour_start is not None:
                    last_hour_start.add_metric([store], gauges.last_hour_start)
                for table_role, count in gauges.future_rows.items():
                    future.add_metric([store, table_role], count)
                for error_series, count in (gauges.failing or {}).items():
                    failing.add_metric([store, *error_series], count)
            totals = state.totals
            for series, count in totals.synced.items():
                synced.add_metric([store, *series], count)
            for error_series, count in totals.errors.items():
                errors.add_metric([store, *error_series], count)
            for series, histogram in totals.latency.items():
                latency.add_metric(
                    [store, *series],
                    buckets=list(zip(_BUCKET_BOUNDS, histogram.cumulative, strict=True)),
                    sum_value=histogram.sum,
                )
        yield from (pending, oldest, last_hour, last_hour_start, synced, errors, latency, future)
        yield failing

    def _self_metrics(self, states: Sequence[StoreState], now: float) -> Iterator[Metric]:
        up = specs.UP.gauge()
        duration = specs.COLLECTION_DURATION.gauge()
        query_duration = specs.QUERY_DURATION.gauge()
        last_success = specs.LAST_SUCCESS.gauge()
        collections = specs.COLLECTIONS.counter()
        failures = specs.COLLECTION_FAILURES.counter()
        folded = specs.FOLDED.gauge()
        gaps = specs.OPEN_GAPS.gauge()
        late = specs.LATE_ROWS.counter()
        for state in states:
            store = state.store
            up.add_metric([store], 1.0 if state.up(now) else 0.0)
            if state.last_duration is not None:
                duration.add_metric([store], state.last_duration)
            for query, seconds in state.query_seconds.items():
                query_duration.add_metric([store, query], seconds)
            if state.last_success is not None:
                last_success.add_metric([store], state.last_success)
            collections.add_metric([store], state.collections)
            failures.add_metric([store], state.failures)
            for label, count in state.folded.items():
                folded.add_metric([store, label], count)
            gaps.add_metric([store], state.totals.open_gaps)
            for table_role, count in state.totals.late_rows.items():
                late.add_metric([store, table_role], count)
        build = specs.BUILD.info()
        build.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield from (up, duration, query_duration, last_success, collections, failures, folded)
        yield from (gaps, late, build)


@dataclass(frozen=True)
class _Generation:
    """The families built from one set of store states."""

    states: tuple[StoreState, ...]
    up: tuple[bool, ...]
    families: list[Metric]

    def matches(self, states: Sequence[StoreState], now: float) -> bool:
        """The same state objects (replaced whole on each collection), each as up as before."""
        return len(states) == len(self.states) and all(
            new is old and new.up(now) == up
            for new, old, up in zip(states, self.states, self.up, strict=True)
        )
