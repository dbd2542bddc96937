"""The contract's metric families, built fresh from the stores' states."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Sequence

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


def collection_families(states: Sequence[StoreState], now: float) -> list[Metric]:
    """Every family but the ages: these change only when a collection ends (or its gauges
    go stale, see ``StoreState.up``)."""
    return [*_store_families(states, now), *_self_families(states, now)]


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


def _store_families(states: Sequence[StoreState], now: float) -> Iterator[Metric]:
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


def _self_families(states: Sequence[StoreState], now: float) -> Iterator[Metric]:
    up = specs.UP.gauge()
    duration = specs.COLLECTION_DURATION.gauge()
    query_duration = specs.QUERY_DURATION.gauge()
    start_delay = specs.START_DELAY.gauge()
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
        for step, seconds in state.step_seconds.items():
            query_duration.add_metric([store, step], seconds)
        if state.start_delay is not None:
            start_delay.add_metric([store], state.start_delay)
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
    yield from (up, duration, query_duration, start_delay, last_success, collections)
    yield from (failures, folded)
    yield from (gaps, late, build)
