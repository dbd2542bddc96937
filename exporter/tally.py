"""Running totals behind the counters and the latency histogram of one store."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from exporter.metric_specs import LATENCY_BUCKETS

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class HistogramValue:
    """A histogram series as exposed: cumulative bucket counts (the last is +Inf) and sum."""

    cumulative: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]

    @classmethod
    def empty(cls, bounds: int) -> HistogramValue:
        return cls((0,) * (bounds + 1), 0.0)


class LatencyTally(Generic[Key]):
    """Latencies per series, stored per bucket (not cumulative) so merging is addition."""

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self._buckets: defaultdict[Key, list[int]] = defaultdict(
            lambda: [0] * (len(self.bounds) + 1)
        )
        self._sums: defaultdict[Key, float] = defaultdict(float)

    def observe(self, key: Key, seconds: float) -> None:
        seconds = max(seconds, 0.0)  # a skewed clock must not make a negative latency
        self._buckets[key][bisect_left(self.bounds, seconds)] += 1
        self._sums[key] += seconds

    def values(self) -> dict[Key, HistogramValue]:
        result: dict[Key, HistogramValue] = {}
        for key, buckets in self._buckets.items():
            running = 0
            cumulative = []
            for count in buckets:
                running += count
                cumulative.append(running)
            result[key] = HistogramValue(tuple(cumulative), self._sums[key])
        return result


class CountsBySeries(Generic[Key]):
    """Counts per series."""

    def __init__(self) -> None:
        self._counts: defaultdict[Key, int] = defaultdict(int)

    def add(self, key: Key, amount: int = 1) -> None:
        self._counts[key] += amount

    def values(self) -> dict[Key, int]:
        return dict(self._counts)


class Debuts(Generic[Key]):
    """When each counter series was first served, so that a new one is served at 0 first.

    Prometheus's ``increase()`` counts from a series' first sample: one that first shows up
    at 5 reads as having started at 5, and those five are never counted. So a new series
    reads 0 in the collection that introduces it and until ``hold`` has passed (at least the
    longest scrape interval: every Prometheus must have scraped the 0), then its value.
    """

    def __init__(self, hold: float) -> None:
        self._hold = hold
        self._first: dict[Key, tuple[int, float]] = {}

    def held(self, key: Key, cycle: int, now: float) -> bool:
        """Whether ``key`` must still read 0 in collection ``cycle`` at time ``now``."""
        first_cycle, first_seen = self._first.setdefault(key, (cycle, now))
        return cycle == first_cycle or now - first_seen < self._hold
