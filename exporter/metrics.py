"""The contract's metric families, built fresh from the stores' states."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter import metric_specs as specs
from exporter.metric_specs import LATENCY_BUCKETS
from exporter.runner import StoreState

_BUCKET_BOUNDS = [f"{bound:g}" for bound in LATENCY_BUCKETS] + ["+Inf"]


class SyncStoreCollector(Collector):
    """Every store's metrics from its last state; never queries a database itself."""

    def __init__(
        self,
        states: Callable[[], Sequence[StoreState]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._states = states
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        states = self._states()
        yield from collection_families(states, now)
        yield age_family(states, now)


def collection_families(states: Iterable[StoreState], now: float) -> list[Metric]:
    """Every family but the ages: these change only when a collection ends (or its gauges
    go stale, see ``StoreState.up``)."""
    families = StoreFamilies()
    for state in states:
        families.add(state, now)
    return [*families.families(), build_info()]


def store_families(state: StoreState, now: float) -> list[Metric]:
    """One store's part of ``collection_families`` but the build info, family by family in
    the same order, empty families included."""
    families = StoreFamilies()
    families.add(state, now)
    return families.families()


def build_info() -> Metric:
    build = specs.BUILD.info()
    build.add_metric([], {"version": __version__, "python": platform.python_version()})
    return build


def age_family(states: Sequence[StoreState], now: float) -> Metric:
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


class StoreFamilies:
    """The families of ``collection_families`` but the build info, filled store by store."""

    def __init__(self) -> None:
        self.pending = specs.PENDING.gauge()
        self.oldest = specs.OLDEST_TIMESTAMP.gauge()
        self.last_hour = specs.LAST_HOUR.gauge()
        self.last_hour_start = specs.LAST_HOUR_START.gauge()
        self.synced = specs.SYNCED.counter()
        self.errors = specs.ERRORS.counter()
        self.latency = specs.LATENCY.histogram()
        self.future = specs.FUTURE_ROWS.gauge()
        self.failing = specs.FAILING.gauge()
        self.up = specs.UP.gauge()
        self.duration = specs.COLLECTION_DURATION.gauge()
        self.query_duration = specs.QUERY_DURATION.gauge()
        self.start_delay = specs.START_DELAY.gauge()
        self.last_success = specs.LAST_SUCCESS.gauge()
        self.collections = specs.COLLECTIONS.counter()
        self.failures = specs.COLLECTION_FAILURES.counter()
        self.folded = specs.FOLDED.gauge()
        self.gaps = specs.OPEN_GAPS.gauge()
        self.late = specs.LATE_ROWS.counter()

    def families(self) -> list[Metric]:
        """In the order /metrics serves them: what the store holds, then the exporter's own."""
        return [
            self.pending,
            self.oldest,
            self.last_hour,
            self.last_hour_start,
            self.synced,
            self.errors,
            self.latency,
            self.future,
            self.failing,
            self.up,
            self.duration,
            self.query_duration,
            self.start_delay,
            self.last_success,
            self.collections,
            self.failures,
            self.folded,
            self.gaps,
            self.late,
        ]

    def add(self, state: StoreState, now: float) -> None:
        """Add one store's samples: gauges only while its last reading is fresh."""
        up = state.up(now)
        if up:
            self._add_gauges(state)
        self._add_counters(state)
        self._add_own(state, up)

    def _add_gauges(self, state: StoreState) -> None:
        store = state.store
        gauges = state.gauges
        assert gauges is not None  # up
        for series, backlog in gauges.backlog.items():
            labels = [store, *series]
            self.pending.add_metric(labels, backlog.pending)
            if backlog.oldest is not None:
                self.oldest.add_metric(labels, backlog.oldest)
        for (obj, direction), count in gauges.synced_last_hour.items():
            self.last_hour.add_metric([store, obj, direction], count)
        if gauges.last_hour_start is not None:
            self.last_hour_start.add_metric([store], gauges.last_hour_start)
        for table_role, count in gauges.future_rows.items():
            self.future.add_metric([store, table_role], count)
        for error_series, count in (gauges.failing or {}).items():
            self.failing.add_metric([store, *error_series], count)

    def _add_counters(self, state: StoreState) -> None:
        store = state.store
        totals = state.totals
        for series, count in totals.synced.items():
            self.synced.add_metric([store, *series], count)
        for error_series, count in totals.errors.items():
            self.errors.add_metric([store, *error_series], count)
        for series, histogram in totals.latency.items():
            self.latency.add_metric(
                [store, *series],
                buckets=list(zip(_BUCKET_BOUNDS, histogram.cumulative, strict=True)),
                sum_value=histogram.sum,
            )

    def _add_own(self, state: StoreState, up: bool) -> None:
        store = state.store
        self.up.add_metric([store], 1.0 if up else 0.0)
        if state.last_duration is not None:
            self.duration.add_metric([store], state.last_duration)
        for step, seconds in state.step_seconds.items():
            self.query_duration.add_metric([store, step], seconds)
        if state.start_delay is not None:
            self.start_delay.add_metric([store], state.start_delay)
        if state.last_success is not None:
            self.last_success.add_metric([store], state.last_success)
        self.collections.add_metric([store], state.collections)
        self.failures.add_metric([store], state.failures)
        for label, count in state.folded.items():
            self.folded.add_metric([store, label], count)
        self.gaps.add_metric([store], state.totals.open_gaps)
        for table_role, count in state.totals.late_rows.items():
            self.late.add_metric([store, table_role], count)
