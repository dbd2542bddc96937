"""The contract's metric families, built fresh from the stores' states."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter import metric_specs as specs
from exporter.collection import Backlog
from exporter.labels import Series
from exporter.metric_specs import LATENCY_BUCKETS, MetricSpec
from exporter.runner import StoreState
from exporter.tally import HistogramValue

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
    families = [part.spec.family() for part in STORE_FAMILIES]
    for state in states:
        up = state.up(now)
        for part, family in zip(STORE_FAMILIES, families, strict=True):
            part.fill(family, state.store, part.source(state, up))
    return [*families, build_info()]


def build_info() -> Metric:
    build = specs.BUILD.info()
    build.add_metric([], {"version": __version__, "python": platform.python_version()})
    return build


def age_family(states: Sequence[StoreState], now: float) -> Metric:
    """The oldest pending ages at ``now``, on the database's clock."""
    age = specs.OLDEST_AGE.gauge()
    for state in states:
        for series, value in store_ages(state, now).items():
            age.add_metric([state.store, *series], value)
    return age


def store_ages(state: StoreState, now: float) -> dict[Series, float]:
    """One store's oldest pending ages at ``now`` (none unless its gauges are fresh), by series."""
    gauges = state.gauges
    if gauges is None or not state.up(now):
        return {}
    db_now = gauges.db_now + (now - state.gauges_taken)
    return {
        series: 0.0 if backlog.oldest is None else max(0.0, db_now - backlog.oldest)
        for series, backlog in gauges.backlog.items()
    }


@dataclass(frozen=True)
class StoreFamily:
    """How one family shows one store: from one part of its state, and nothing else.

    A store's samples of a family change only when that part does, which is what lets a
    snapshot keep a store's encoded lines of the families whose part is the same.
    """

    spec: MetricSpec
    source: Callable[[StoreState, bool], Any]
    """The part of the state the samples come from (given whether the store is up)."""
    fill: Callable[[Any, str, Any], None]
    """Adds the store's samples: (family, store name, the part)."""

    def family(self, store: str, part: Any) -> Metric:
        """The family with this store's samples only."""
        family = self.spec.family()
        self.fill(family, store, part)
        return family


def _fresh(field: str) -> Callable[[StoreState, bool], Any]:
    """A part of the gauges: only while the last reading is fresh."""
    get = attrgetter(field)
    return lambda state, up: get(state.gauges) if up and state.gauges is not None else None


def _always(field: str) -> Callable[[StoreState, bool], Any]:
    """A part of the state served whether or not the store is up."""
    get = attrgetter(field)
    return lambda state, up: get(state)


def _up(state: StoreState, up: bool) -> float:
    return 1.0 if up else 0.0


def _add_value(family: Any, store: str, value: float | None) -> None:
    if value is not None:
        family.add_metric([store], value)


def _add_series(family: Any, store: str, values: Mapping[tuple[str, ...], float] | None) -> None:
    for labels, value in (values or {}).items():
        family.add_metric([store, *labels], value)


def _add_named(family: Any, store: str, values: Mapping[str, float] | None) -> None:
    for label, value in (values or {}).items():
        family.add_metric([store, label], value)


def _add_pending(family: Any, store: str, backlog: Mapping[Series, Backlog] | None) -> None:
    for series, waiting in (backlog or {}).items():
        family.add_metric([store, *series], waiting.pending)


def _add_oldest(family: Any, store: str, backlog: Mapping[Series, Backlog] | None) -> None:
    for series, waiting in (backlog or {}).items():
        if waiting.oldest is not None:
            family.add_metric([store, *series], waiting.oldest)


def _add_latency(family: Any, store: str, latency: Mapping[Series, HistogramValue]) -> None:
    for series, histogram in latency.items():
        family.add_metric(
            [store, *series],
            buckets=list(zip(_BUCKET_BOUNDS, histogram.cumulative, strict=True)),
            sum_value=histogram.sum,
        )


STORE_FAMILIES: tuple[StoreFamily, ...] = (
    # What the store holds...
    StoreFamily(specs.PENDING, _fresh("backlog"), _add_pending),
    StoreFamily(specs.OLDEST_TIMESTAMP, _fresh("backlog"), _add_oldest),
    StoreFamily(specs.LAST_HOUR, _fresh("synced_last_hour"), _add_series),
    StoreFamily(specs.LAST_HOUR_START, _fresh("last_hour_start"), _add_value),
    StoreFamily(specs.SYNCED, _always("totals.synced"), _add_series),
    StoreFamily(specs.ERRORS, _always("totals.errors"), _add_series),
    StoreFamily(specs.LATENCY, _always("totals.latency"), _add_latency),
    StoreFamily(specs.FUTURE_ROWS, _fresh("future_rows"), _add_named),
    StoreFamily(specs.FAILING, _fresh("failing"), _add_series),
    # ...then the exporter's own.
    StoreFamily(specs.UP, _up, _add_value),
    StoreFamily(specs.COLLECTION_DURATION, _always("last_duration"), _add_value),
    StoreFamily(specs.QUERY_DURATION, _always("step_seconds"), _add_named),
    StoreFamily(specs.START_DELAY, _always("start_delay"), _add_value),
    StoreFamily(specs.LAST_SUCCESS, _always("last_success"), _add_value),
    StoreFamily(specs.COLLECTIONS, _always("collections"), _add_value),
    StoreFamily(specs.COLLECTION_FAILURES, _always("failures"), _add_value),
    StoreFamily(specs.FOLDED, _always("folded"), _add_named),
    StoreFamily(specs.OPEN_GAPS, _always("totals.open_gaps"), _add_value),
    StoreFamily(specs.LATE_ROWS, _always("totals.late_rows"), _add_named),
)
"""Every family but the ages and the build info, in the order /metrics serves them."""
