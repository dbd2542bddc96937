"""Every metric the exporter serves: name, type, labels, help text and buckets, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

Kind = Literal["gauge", "counter", "histogram", "info"]

SERIES = ("store", "object", "operation", "direction")

# From seconds to a day: a healthy sync takes seconds, a stuck one hours.
LATENCY_BUCKETS: tuple[float, ...] = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)


@dataclass(frozen=True)
class MetricSpec:
    """One metric family as exposed (counters named with their ``_total``)."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()
    keys: tuple[str, ...] = ()
    """An info metric's keys: the labels of its one ``_info`` sample, always 1."""

    def family(self) -> Metric:
        """A fresh, empty family of this spec's kind."""
        match self.kind:
            case "gauge":
                return self.gauge()
            case "counter":
                return self.counter()
            case "histogram":
                return self.histogram()
            case "info":
                return self.info()

    def gauge(self) -> GaugeMetricFamily:
        """A fresh, empty family to add this collection's samples to."""
        assert self.kind == "gauge", self.name
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)

    def counter(self) -> CounterMetricFamily:
        assert self.kind == "counter", self.name
        return CounterMetricFamily(self.name, self.help, labels=self.labels)

    def histogram(self) -> HistogramMetricFamily:
        assert self.kind == "histogram", self.name
        return HistogramMetricFamily(self.name, self.help, labels=self.labels)

    def info(self) -> InfoMetricFamily:
        assert self.kind == "info", self.name
        return InfoMetricFamily(self.name, self.help, labels=self.labels)

    @property
    def exposed_names(self) -> tuple[str, ...]:
        """The sample names Prometheus stores for this family."""
        match self.kind:
            case "histogram":
                return tuple(f"{self.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            case "info":
                return (f"{self.name}_info",)
            case _:
                return (self.name,)


# The contract's metrics (../shared/DESIGN.md, "The metrics").
PENDING = MetricSpec(
    "crmsync_pending_records", "gauge", SERIES, "Changes waiting in the sync queue."
)
OLDEST_AGE = MetricSpec(
    "crmsync_oldest_pending_age_seconds",
    "gauge",
    SERIES,
    "Age of the oldest waiting change by the database's clock; 0 when none waits.",
)
OLDEST_TIMESTAMP = MetricSpec(
    "crmsync_oldest_pending_timestamp_seconds",
    "gauge",
    SERIES,
    "Enqueue time of the oldest waiting change (Unix seconds); absent when none waits.",
)
SYNCED = MetricSpec(
    "crmsync_records_synced_total",
    "counter",
    SERIES,
    "Changes synced since the exporter started reading the store.",
)
ERRORS = MetricSpec(
    "crmsync_sync_errors_total",
    "counter",
    (*SERIES, "error_code"),
    "Failed sync attempts since the exporter started reading the store.",
)
LATENCY = MetricSpec(
    "crmsync_sync_latency_seconds",
    "histogram",
    SERIES,
    "Time from enqueue to sync of each change synced since the exporter started reading the store.",
    LATENCY_BUCKETS,
)
LAST_HOUR = MetricSpec(
    "crmsync_records_synced_last_hour",
    "gauge",
    ("store", "object", "direction"),
    "Changes synced in the previous full clock hour.",
)
FAILING = MetricSpec(
    "crmsync_failing_records",
    "gauge",
    (*SERIES, "error_code"),
    "Changes waiting in the queue whose last attempt failed, where the store can tell.",
)
UP = MetricSpec(
    "crmsync_up", "gauge", ("store",), "1 when the last collection from the store succeeded."
)

# The exporter's own metrics.
LAST_HOUR_START = MetricSpec(
    "crmsync_records_synced_last_hour_start_timestamp_seconds",
    "gauge",
    ("store",),
    "Start (Unix seconds) of the hour crmsync_records_synced_last_hour counts.",
)
FUTURE_ROWS = MetricSpec(
    "crmsync_future_timestamp_rows",
    "gauge",
    ("store", "table"),
    "Rows stamped later than the database's clock (a writer's clock is ahead): "
    "queue by enqueued_at, history by synced_at, errors by failed_at.",
)
COLLECTION_DURATION = MetricSpec(
    "crmsync_collection_duration_seconds",
    "gauge",
    ("store",),
    "How long the last successful collection took.",
)
QUERY_DURATION = MetricSpec(
    "crmsync_query_duration_seconds",
    "gauge",
    ("store", "query"),
    "Time spent in each step of the last successful collection.",
)
START_DELAY = MetricSpec(
    "crmsync_collection_start_delay_seconds",
    "gauge",
    ("store",),
    "How much later than scheduled the last collection started (waiting for a worker or "
    "for a connection to the store's database server).",
)
LAST_SUCCESS = MetricSpec(
    "crmsync_last_successful_collection_timestamp_seconds",
    "gauge",
    ("store",),
    "Unix time of the last successful collection.",
)
COLLECTIONS = MetricSpec(
    "crmsync_collections_total", "counter", ("store",), "Collection cycles run."
)
COLLECTION_FAILURES = MetricSpec(
    "crmsync_collection_failures_total", "counter", ("store",), "Collection cycles that failed."
)
FOLDED = MetricSpec(
    "crmsync_folded_label_values",
    "gauge",
    ("store", "label"),
    "Distinct store values reported as 'other' (over a cap, or not in the mapping).",
)
OPEN_GAPS = MetricSpec(
    "crmsync_open_id_gaps",
    "gauge",
    ("store",),
    "Id ranges skipped by concurrent writers and still watched for late commits.",
)
LATE_ROWS = MetricSpec(
    "crmsync_late_rows_total",
    "counter",
    ("store", "table"),
    "Rows counted that became visible stamped more than settle_time ago (status-table "
    "layout); rows later than twice settle_time are missed.",
)
BUILD = MetricSpec(
    "crmsync_build",
    "info",
    (),
    "Version of crmsync-exporter and of Python running it.",
    keys=("version", "python"),
)
SHARD = MetricSpec(
    "crmsync_shard",
    "info",
    (),
    "Shard of the configured stores this exporter collects.",
    keys=("index", "count"),
)
