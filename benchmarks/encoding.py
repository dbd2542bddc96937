"""/metrics encoding in-process: CPU per collection's snapshot and per scrape, at a chosen size.

python -m benchmarks.encoding               # 95 kinds of object: about 8,400 lines
python -m benchmarks.encoding --objects 40  # fewer series

The stores' states are made up (every series pending, synced, half of them failing), so that
the size is the same on every run; the work is the exporter's own (``LatestSnapshot``) with
the process metrics /metrics serves beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from prometheus_client.registry import CollectorRegistry

from benchmarks.stats import median, percentile
from exporter.collection import Backlog, Gauges, Totals
from exporter.metric_specs import LATENCY_BUCKETS
from exporter.runner import StoreState
from exporter.sharding import Shard, ShardInfo
from exporter.snapshot import PROMETHEUS_ACCEPT, LatestSnapshot
from exporter.tally import HistogramValue

DB_NOW = 1.8e9


def made_up_state(objects: int, now: float) -> StoreState:
    """One store with ``objects`` kinds of object, each inserted and updated both ways."""
    series = [
        (f"object_{index}", operation, direction)
        for index in range(objects)
        for operation in ("insert", "update")
        for direction in ("to_crm", "from_crm")
    ]
    gauges = Gauges(
        db_now=DB_NOW,
        backlog={s: Backlog(i + 1, DB_NOW - 100 - i) for i, s in enumerate(series)},
        synced_last_hour={(obj, direction): 7 for obj, _, direction in series},
        future_rows={"queue": 0, "history": 0, "errors": 0},
        last_hour_start=DB_NOW - 3600,
    )
    buckets = tuple(range(0, 10 * (len(LATENCY_BUCKETS) + 1), 10))
    totals = Totals(
        synced={s: 1000 + i for i, s in enumerate(series)},
        latency=dict.fromkeys(series, HistogramValue(buckets, 1234.5)),
        errors={(*s, "DUPLICATE_VALUE"): 3 for s in series[: len(series) // 2]},
    )
    return StoreState(
        store="main",
        gauges=gauges,
        gauges_taken=now,
        fresh_until=now + 10**9,
        totals=totals,
        collections=1,
        last_success=time.time(),
        last_duration=0.02,
    )


def cpu_ms(action: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.process_time()
        action()
        samples.append((time.process_time() - started) * 1000)
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoding", description=__doc__)
    parser.add_argument("--objects", type=int, default=95, help="kinds of object (%(default)s)")
    parser.add_argument("--runs", type=int, default=30, help="collections measured (%(default)s)")
    args = parser.parse_args(argv)

    clock = [time.monotonic()]
    states = [made_up_state(args.objects, clock[0])]
    extras = CollectorRegistry(auto_describe=False)
    for collector in (ShardInfo(Shard()), PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        extras.register(collector)
    metrics = LatestSnapshot(lambda: states, extras, clock=lambda: clock[0])

    def collection() -> None:
        states[0] = dataclasses.replace(states[0], collections=states[0].collections + 1)
        metrics.publish()

    def next_second() -> None:
        clock[0] += 1.0
        metrics.page(PROMETHEUS_ACCEPT, "gzip")

    collection()
    body = metrics.page("", "").body
    rows = [
        ("a collection's snapshot, Prometheus's format", cpu_ms(collection, args.runs)),
        (
            "a scrape, Prometheus's format, gzip",
            cpu_ms(lambda: metrics.page(PROMETHEUS_ACCEPT, "gzip"), 10 * args.runs),
        ),
        ("the first scrape of a second (ages encoded)", cpu_ms(next_second, 10 * args.runs)),
    ]
    lines = body.count(b"\n")
    print(f"{lines:,} lines, {len(body) / 1024:,.0f} KiB (text format)")
    print("| CPU per | median ms | p90 ms |\n|---|---|---|")
    for name, samples in rows:
        print(f"| {name} | {median(samples):.2f} | {percentile(samples, 90):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
