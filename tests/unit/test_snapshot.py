"""/metrics bodies: prometheus_client's output, encoded once per collection, ages per scrape."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.registry import Collector

from crmsync_testing.helpers import (
    Samples,
    add_errors,
    add_history,
    add_pending,
    by_name,
    error_counts,
    history_counts,
    lowered,
    newest_id,
    nonzero,
    runner_for,
    samples,
    series_total,
    sql_counts,
)
from exporter.metrics import STORE_FAMILIES, SyncStoreCollector
from exporter.runner import StoreRunner, StoreState
from exporter.schema import create_reference_schema
from exporter.sharding import Shard, ShardInfo
from exporter.snapshot import (
    FORMAT_MEMORY,
    MAX_FORMATS,
    PROMETHEUS_ACCEPT,
    Encoded,
    LatestSnapshot,
    Layout,
    Snapshot,
)

PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
ACCEPTS = {
    "text": "",
    "prometheus-2": PROMETHEUS_ACCEPT,
    "prometheus-3": PROMETHEUS_3_ACCEPT,
    "text-escaping-values": "text/plain;version=1.0.0;escaping=values",
}
AGES = "crmsync_oldest_pending_age_seconds"
openmetrics_families: Callable[[str], Iterator[Metric]] = (
    openmetrics_parser.text_string_to_metric_families
)
PENDING_SQL = (
    "SELECT object_type, operation, direction, COUNT(*) FROM sync_queue "
    "GROUP BY object_type, operation, direction"
)


class _Odd(Collector):
    """Families that test the encoders' corners: escaping, special values, timestamps."""

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


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def extras(*collectors: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShardInfo(Shard()))
    for collector in collectors:
        registry.register(collector)
    return registry


@pytest.fixture
def store(sqlite_url: str) -> Iterator[tuple[StoreRunner, sa.Engine, int, int]]:
    """A store read twice (the second read counts new rows): runner, writer, first ids."""
    writer = sa.create_engine(sqlite_url)
    create_reference_schema(writer)
    add_pending(writer, 200)
    add_history(writer, 50)
    start, start_errors = newest_id(writer, "sync_history"), newest_id(writer, "sync_error")
    runner = runner_for(sqlite_url)
    assert runner.run_once().last_error is None
    add_history(writer, 400, seed=5, hours=0.01)
    add_errors(writer, 40, seed=6)
    assert runner.run_once().last_error is None
    assert runner.run_once().last_error is None
    yield runner, writer, start, start_errors
    runner.reader.close()
    writer.dispose()


def reference(accept: str, states: Sequence[StoreState], clock: Clock, more: Collector) -> bytes:
    """What prometheus_client writes for the same families at the same moment."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SyncStoreCollector(lambda: states, clock=clock))
    registry.register(more)
    encoder, _ = choose_encoder(accept)
    return encoder(registry)


@pytest.mark.parametrize("accept", ACCEPTS.values(), ids=ACCEPTS.keys())
def test_the_body_is_what_prometheus_client_writes_for_the_same_families(
    store: tuple[StoreRunner, sa.Engine, int, int], accept: str
) -> None:
    runner, *_ = store
    states = [runner.state]
    clock = Clock(runner.state.gauges_taken + 3.0)
    more = extras(_Odd())
    metrics = LatestSnapshot(lambda: states, more, clock)
    metrics.publish()
    content_type = choose_encoder(accept)[1]
    # Prometheus's format is encoded from the start; the first scrape in another encodes the
    # latest snapshot in it, and collections from then on encode it ahead.
    assert (content_type in metrics.snapshot.encoded) is (accept == PROMETHEUS_ACCEPT)
    for _ in range(2):
        collection = metrics.snapshot.states
        expected = reference(accept, states, clock, more)
        page = metrics.page(accept, "")
        assert (page.body, page.content_type, page.compressed) == (expected, content_type, False)
        assert content_type in metrics.snapshot.encoded
        assert metrics.snapshot.states is collection  # still the same collection's
        zipped = metrics.page(accept, "gzip")
        assert zipped.compressed
        assert gzip.decompress(zipped.body) == expected
        clock.now += 1.5
        metrics.publish()
        assert content_type in metrics.snapshot.encoded


@pytest.mark.parametrize("accept", ACCEPTS.values(), ids=ACCEPTS.keys())
def test_stores_are_encoded_when_their_state_changes_and_laid_out_family_by_family(
    store: tuple[StoreRunner, sa.Engine, int, int], sqlite_url: str, accept: str
) -> None:
    runner, writer, *_ = store
    other = runner_for(sqlite_url, name="other")
    assert other.run_once().last_error is None
    never_read = StoreState(store="never-read")
    states = [runner.state, never_read, other.state]
    clock = Clock(runner.state.gauges_taken + 2.0)
    metrics = LatestSnapshot(lambda: states, extras(), clock)
    metrics.page(accept, "")  # encoded ahead in this format from now on
    metrics.publish()
    assert metrics.page(accept, "").body == reference(accept, states, clock, extras())
    before = {text.store: text.lines for text in metrics.snapshot.stores}

    key = choose_encoder(accept)[1]
    segments_before = metrics.snapshot.encoded[key].segments

    # One store's collection ends: only its samples are encoded again.
    add_pending(writer, 7, seed=11)
    states[2] = other.run_once()
    metrics.publish()
    after = {text.store: text.lines for text in metrics.snapshot.stores}
    # Compressed again: the families where any store's lines changed, and no other.
    segments_after = metrics.snapshot.encoded[key].segments
    recompressed = {
        family.spec.name
        for family, old, new in zip(STORE_FAMILIES, segments_before, segments_after, strict=False)
        if old is not new
    }
    assert "crmsync_pending_records" in recompressed
    assert "crmsync_sync_latency_seconds" not in recompressed
    assert after["main"][key] is before["main"][key]
    assert after["never-read"][key] is before["never-read"][key]
    # Of its families, those whose part of the state changed: the backlog (7 more pending)
    # and the exporter's own, not the counters (no history was written).
    changed = {
        family.spec.name
        for family, old, new in zip(
            STORE_FAMILIES, before["other"][key], after["other"][key], strict=True
        )
        if old is not new
    }
    assert {"crmsync_pending_records", "crmsync_collections_total"} <= changed
    assert not changed & {
        "crmsync_records_synced_total",
        "crmsync_sync_errors_total",
        "crmsync_sync_latency_seconds",
        "crmsync_up",
    }
    body = metrics.page(accept, "").body
    assert body == reference(accept, states, clock, extras())
    assert gzip.decompress(metrics.page(accept, "gzip").body) == body
    served = samples(body.decode()) if not accept else None
    if served is not None:
        assert sum(by_name(served, "crmsync_pending_records").values()) == 200 + 207

    # Its counters move: their families are encoded again, and served as counted.
    add_history(writer, 30, seed=12, hours=0.01)
    states[2] = other.run_once()
    metrics.publish()
    expected = reference(accept, states, clock, extras())
    assert metrics.page(accept, "").body == expected
    assert gzip.decompress(metrics.page(accept, "gzip").body) == expected
    other.close()


def ages(result: Samples) -> dict[tuple[str, ...], float]:
    return series_total(result, AGES)


def test_ages_advance_between_scrapes_without_a_new_collection(
    store: tuple[StoreRunner, sa.Engine, int, int],
) -> None:
    runner, writer, *_ = store
    clock = Clock(runner.state.gauges_taken + 1.0)
    metrics = LatestSnapshot(lambda: [runner.state], extras(), clock)
    metrics.publish()
    first = metrics.page("", "").body.decode()
    snapshot = metrics.snapshot
    clock.now += 10.0
    second = metrics.page("", "").body.decode()
    assert metrics.snapshot is snapshot  # nothing encoded again
    before, after = ages(samples(first)), ages(samples(second))
    # Every series with a pending row, as an independent count finds them.
    assert before.keys() == after.keys() == nonzero(sql_counts(writer, PENDING_SQL)).keys()
    assert all(after[key] == pytest.approx(before[key] + 10.0) for key in before)
    assert all(value > 0 for value in before.values())
    # Everything else is the same text.
    assert [line for line in first.splitlines() if not line.startswith(AGES)] == [
        line for line in second.splitlines() if not line.startswith(AGES)
    ]


def test_scrapes_arriving_together_encode_the_ages_once_and_never_wait(
    store: tuple[StoreRunner, sa.Engine, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, *_ = store
    clock = Clock(runner.state.gauges_taken + 1.0)
    metrics = LatestSnapshot(lambda: [runner.state], extras(), clock)
    built: list[float] = []
    encode_ages = Layout.ages

    def slow_ages(layout: Layout, snapshot: Snapshot, now: float) -> bytes:
        built.append(now)
        time.sleep(0.2)  # long enough for every scraper to arrive meanwhile
        return encode_ages(layout, snapshot, now)

    monkeypatch.setattr(Layout, "ages", slow_ages)

    def scrape_together() -> tuple[list[bytes], list[float]]:
        """Eight scrapes a few milliseconds apart: their bodies and how long each took."""
        scraped: list[tuple[float, bytes]] = []

        def scrape() -> None:
            started = time.monotonic()
            body = metrics.page(PROMETHEUS_ACCEPT, "").body
            scraped.append((time.monotonic() - started, body))

        scrapers = [threading.Thread(target=scrape) for _ in range(8)]
        for scraper in scrapers:
            scraper.start()
            time.sleep(0.005)
        for scraper in scrapers:
            scraper.join(10)
        assert len(scraped) == 8
        scraped.sort()
        return [body for _, body in scraped], [took for took, _ in scraped]

    # A publication writes the ages of its second ahead of the scrapes.
    metrics.publish()
    assert len(built) == 1
    pages, _ = scrape_together()
    assert len(set(pages)) == 1
    assert len(built) == 1

    # In the next second the first scraper writes them; the others are served the last
    # ones written meanwhile, a second old, rather than wait.
    clock.now += 1.0
    pages, took = scrape_together()
    assert len(built) == 2
    assert len(set(pages)) == 2
    assert took[-2] < 0.1 < took[-1]  # only the one that wrote them waited
    assert metrics.page(PROMETHEUS_ACCEPT, "").body == pages[-1]  # this second's, kept
    assert len(built) == 2

    # Written once a second ahead (the exporter's ticker): no scrape writes them.
    clock.now += 1.0
    metrics.prepare()
    assert len(built) == 3
    pages, _ = scrape_together()
    assert len(set(pages)) == 1
    assert len(built) == 3


def test_a_scrape_during_a_collection_gets_the_whole_previous_snapshot(
    store: tuple[StoreRunner, sa.Engine, int, int],
) -> None:
    runner, writer, *_ = store
    building, release = threading.Event(), threading.Event()
    blocked = False

    def states() -> list[StoreState]:
        if blocked:  # the build of the next snapshot stops half-way
            building.set()
            assert release.wait(10)
        return [runner.state]

    metrics = LatestSnapshot(states, extras())
    metrics.publish()
    old = samples(metrics.page("", "").body.decode())
    metrics.page(PROMETHEUS_ACCEPT, "")  # both formats are encoded ahead from here on
    add_pending(writer, 30, seed=9)
    runner.run_once()
    blocked = True
    publisher = threading.Thread(target=metrics.publish)
    publisher.start()
    try:
        assert building.wait(10)
        for accept, encoding in (("", ""), (PROMETHEUS_ACCEPT, "gzip")):
            page = metrics.page(accept, encoding)
            body = gzip.decompress(page.body) if page.compressed else page.body
            during = (
                {
                    (sample.name, frozenset(sample.labels.items())): sample.value
                    for family in openmetrics_families(body.decode())
                    for sample in family.samples
                }
                if accept
                else samples(body.decode())
            )
            assert {k: v for k, v in during.items() if k[0] != AGES} == {
                k: v for k, v in old.items() if k[0] != AGES
            }
    finally:
        release.set()
        publisher.join(10)
    new = samples(metrics.page("", "").body.decode())
    assert sum(by_name(new, "crmsync_pending_records").values()) == 230
    assert sum(by_name(old, "crmsync_pending_records").values()) == 200
    assert by_name(new, "crmsync_collections_total") != by_name(old, "crmsync_collections_total")


def counters(result: Samples) -> dict[str, dict[tuple[str, ...], float]]:
    return {
        name: series_total(result, name)
        for name in (
            "crmsync_records_synced_total",
            "crmsync_sync_errors_total",
            "crmsync_sync_latency_seconds_count",
        )
    }


STORE_GAUGES = (
    "crmsync_pending_records",
    "crmsync_oldest_pending_timestamp_seconds",
    AGES,
    "crmsync_records_synced_last_hour",
    "crmsync_future_timestamp_rows",
)


def check_counts(
    result: Samples, writer: sa.Engine, start: int, start_errors: int
) -> dict[str, dict[tuple[str, ...], float]]:
    values = counters(result)
    assert nonzero(values["crmsync_records_synced_total"]) == history_counts(writer, start)
    errors = lowered(nonzero(values["crmsync_sync_errors_total"]))
    assert errors == error_counts(writer, start_errors)
    return values


def test_a_failed_collection_takes_the_gauges_away_and_keeps_the_counters(
    store: tuple[StoreRunner, sa.Engine, int, int],
) -> None:
    runner, writer, start, start_errors = store
    metrics = LatestSnapshot(lambda: [runner.state], extras())
    metrics.publish()
    up = samples(metrics.page("", "").body.decode())
    assert all(by_name(up, name) for name in STORE_GAUGES)
    kept = check_counts(up, writer, start, start_errors)

    with writer.begin() as connection:
        connection.execute(sa.text("ALTER TABLE sync_queue RENAME TO sync_queue_moved"))
    assert runner.run_once().last_error is not None
    metrics.publish()
    down = samples(metrics.page("", "").body.decode())
    assert by_name(down, "crmsync_up") == {frozenset({("store", "main")}): 0.0}
    assert not any(by_name(down, name) for name in STORE_GAUGES)
    assert counters(down) == kept
    assert sum(by_name(down, "crmsync_collection_failures_total").values()) == 1


def test_gauges_gone_stale_vanish_at_the_next_scrape_without_a_collection(
    store: tuple[StoreRunner, sa.Engine, int, int],
) -> None:
    runner, writer, start, start_errors = store
    clock = Clock(runner.state.gauges_taken + 1.0)
    metrics = LatestSnapshot(lambda: [runner.state], extras(), clock)
    metrics.publish()
    fresh = samples(metrics.page("", "").body.decode())
    assert by_name(fresh, "crmsync_up") == {frozenset({("store", "main")}): 1.0}
    kept = check_counts(fresh, writer, start, start_errors)
    snapshot = metrics.snapshot
    assert snapshot.stale_at == runner.state.fresh_until

    # The collection hangs: no new state, no publish; its gauges go stale all the same.
    clock.now = runner.state.fresh_until + 0.5
    stale = samples(metrics.page("", "").body.decode())
    assert metrics.snapshot is not snapshot
    assert by_name(stale, "crmsync_up") == {frozenset({("store", "main")}): 0.0}
    assert not any(by_name(stale, name) for name in STORE_GAUGES)
    assert counters(stale) == kept


def test_a_store_waiting_for_a_worker_past_its_freshness_costs_scrapes_no_rebuild(
    store: tuple[StoreRunner, sa.Engine, int, int],
) -> None:
    runner, _, _, _ = store
    clock = Clock(runner.state.gauges_taken + 1.0)
    metrics = LatestSnapshot(lambda: [runner.state], extras(), clock)
    metrics.publish()
    metrics.page("", "")  # the text format, encoded ahead from now on
    snapshot = metrics.snapshot

    # Queued behind other stores' collections: still up past fresh_until, so the scrapes
    # read the same snapshot rather than rebuilding every store's metrics each time.
    runner.queue_wait.waiting(runner.state.fresh_until - 1.0)
    clock.now = runner.state.fresh_until + 5.0
    waiting = samples(metrics.page("", "").body.decode())
    assert metrics.snapshot is snapshot
    assert by_name(waiting, "crmsync_up") == {frozenset({("store", "main")}): 1.0}

    # Its cycle starts and hangs: from then on the wait no longer counts, and it goes stale.
    runner.queue_wait.started(runner.state.fresh_until + 5.0)
    clock.now = runner.state.fresh_until + 6.5
    stale = samples(metrics.page("", "").body.decode())
    assert metrics.snapshot is not snapshot
    assert by_name(stale, "crmsync_up") == {frozenset({("store", "main")}): 0.0}


def test_formats_are_encoded_ahead_while_scraped_and_within_bounds(
    store: tuple[StoreRunner, sa.Engine, int, int],
) -> None:
    runner, *_ = store
    clock = Clock(runner.state.gauges_taken)
    metrics = LatestSnapshot(lambda: [runner.state], extras(), clock)
    prometheus = choose_encoder(PROMETHEUS_ACCEPT)[1]
    metrics.page(PROMETHEUS_ACCEPT, "")
    # Odd Accept headers, each a content type of its own: encoded per scrape past the bound.
    odd = [f"application/openmetrics-text;version=1.0.{n}" for n in range(1, MAX_FORMATS + 4)]
    for accept in odd:
        metrics.page(accept, "")
    kept = {prometheus} | {choose_encoder(accept)[1] for accept in odd[: MAX_FORMATS - 1]}
    assert set(metrics.snapshot.encoded) == kept
    metrics.publish()
    assert set(metrics.snapshot.encoded) == kept
    page = metrics.page(odd[-1], "")
    assert page.body == reference(odd[-1], [runner.state], clock, extras())
    assert set(metrics.snapshot.encoded) == kept
    # A format nobody scrapes any more is no longer encoded ahead, and makes room.
    clock.now += FORMAT_MEMORY / 2
    metrics.page(PROMETHEUS_ACCEPT, "")
    clock.now += FORMAT_MEMORY / 2 + 1.0
    metrics.publish()
    assert set(metrics.snapshot.encoded) == {prometheus}
    metrics.page(odd[-1], "")
    assert set(metrics.snapshot.encoded) == {prometheus, choose_encoder(odd[-1])[1]}


def test_a_body_of_many_megabytes_is_compressed_in_chunks_into_one_gzip_member() -> None:
    lines = [
        f'crmsync_pending_records{{store="s{n}"}} {n * 7 % 1013}.0\n'.encode()
        for n in range(200_000)
    ]
    text = b"".join(lines)
    assert len(text) > 3 * (1 << 20)  # several chunks
    encoded = Encoded.of([tuple(lines)], lambda: text)
    tail = b"crmsync_oldest_pending_age_seconds 1.5\n# EOF\n"
    assert gzip.decompress(encoded.body(tail, compressed=True)) == text + tail
    assert encoded.body(tail, compressed=False) == text + tail
    assert len(encoded.deflated) < len(text) / 3
    # The ages of a second follow it, compressed once for every scrape of that second.
    ages = b"".join(
        f'crmsync_oldest_pending_age_seconds{{s="{n}"}} {n}.0\n'.encode() for n in range(9)
    )
    with_ages = encoded.then(ages)
    assert gzip.decompress(with_ages.body(tail, compressed=True)) == text + ages + tail
    assert with_ages.body(tail, compressed=False) == text + ages + tail
