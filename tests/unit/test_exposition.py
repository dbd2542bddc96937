"""/metrics bodies: exactly prometheus_client's output, written once per collection."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector

from crmsync_testing.helpers import add_errors, add_history, add_pending, runner_for, samples
from exporter.exposition import Exposition
from exporter.metrics import SyncStoreCollector
from exporter.runner import StoreRunner, StoreState
from exporter.schema import create_reference_schema

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


class _Odd(Collector):
    """Families the fast writer must get right or leave to prometheus_client."""

    def collect(self) -> Iterator[Metric]:
        odd = GaugeMetricFamily("odd_values", 'help with "quotes", \\ and\na newline', labels=["a"])
        odd.add_metric(['quo"te \\ back\nslash'], 1.5)
        odd.add_metric(["é ü"], float("inf"))
        odd.add_metric(["big"], 1e22)
        odd.add_metric(["nan"], float("nan"))
        yield odd
        created = CounterMetricFamily("odd_created", "A counter with _created.", labels=["x"])
        created.add_metric(["1"], 3, created=12.0)
        yield created
        stamped = GaugeMetricFamily("odd_stamped", "A sample with a timestamp.")
        stamped.add_metric([], 2.0, timestamp=1_700_000_000.5)
        yield stamped


@pytest.fixture
def runner(sqlite_url: str) -> Iterator[StoreRunner]:
    writer = sa.create_engine(sqlite_url)
    create_reference_schema(writer)
    add_pending(writer, 200)
    add_history(writer, 2000)
    add_errors(writer, 100)
    writer.dispose()
    store = runner_for(sqlite_url)
    store.run_once()
    yield store
    store.collector.close()


def _registry(states: list[StoreState], clock: list[float]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SyncStoreCollector(lambda: states, clock=lambda: clock[0]))
    registry.register(_Odd())
    return registry


@pytest.mark.parametrize(
    ("accept", "reference"),
    [("", generate_latest), (PROMETHEUS_ACCEPT, openmetrics_latest)],
    ids=["text", "openmetrics"],
)
def test_the_body_is_byte_for_byte_what_prometheus_client_writes(
    runner: StoreRunner, accept: str, reference: object
) -> None:
    clock = [runner.state.gauges_taken + 3.0]
    registry = _registry([runner.state], clock)
    exposition = Exposition(registry)
    assert callable(reference)
    for _ in range(2):  # written fresh, then from what was kept
        body, _, compressed = exposition.render(accept, gzip=False)
        assert not compressed
        assert body == reference(registry)
        zipped, _, compressed = exposition.render(accept, gzip=True)
        assert compressed
        assert gzip.decompress(zipped) == body


def test_ages_move_between_collections_and_the_rest_is_reused(runner: StoreRunner) -> None:
    clock = [runner.state.gauges_taken + 1.0]
    states = [runner.state]
    collector = SyncStoreCollector(lambda: states, clock=lambda: clock[0])
    first = list(collector.collect())
    clock[0] += 10.0
    second = list(collector.collect())
    ages = "crmsync_oldest_pending_age_seconds"
    assert [m for m in first if m.name != ages] == [m for m in second if m.name != ages]
    assert all(a is b for a, b in zip(first[:-1], second[:-1], strict=True))
    older = {s.labels["object"]: s.value for m in first if m.name == ages for s in m.samples}
    newer = {s.labels["object"]: s.value for m in second if m.name == ages for s in m.samples}
    assert any(newer[key] == pytest.approx(value + 10.0) for key, value in older.items() if value)

    states[0] = runner.run_once()
    third = list(collector.collect())
    assert not any(a is b for a, b in zip(first[:-1], third[:-1], strict=True))
    text = Exposition(_registry(states, clock)).render("", gzip=False)[0].decode()
    assert samples(text)
