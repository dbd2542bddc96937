"""One collection cycle against one store: backlog, new history and errors, last full hour."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import partial
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import URL, Engine

from exporter import cycle_connections
from exporter.config import StoreConfig
from exporter.connections import (
    ConnectionLimits,
    DatabaseUrlError,
    cancel_statement,
    server_of,
    store_engine,
)
from exporter.dialects import Dialect, UnsupportedDatabaseError, dialect_for, interrupt_connection
from exporter.feeds import FeedSink, IdFeed, MomentFeed, utc_datetime
from exporter.labels import Series, StoreLabels
from exporter.metric_specs import LATENCY_BUCKETS
from exporter.queries import FeedRow, StoreQueries, build_queries
from exporter.store_values import StatusWatch
from exporter.tally import CountsBySeries, Debuts, HistogramValue, LatencyTally

log = logging.getLogger(__name__)

ErrorSeries = tuple[str, str, str, str]
"""(object, operation, direction, error_code) label values."""
HourSeries = tuple[str, str]
"""(object, direction) label values."""
# Late rows are logged at most this often per table (the self-metric counts every one).
LATE_WARNING_EVERY = 600.0


@dataclass(frozen=True)
class Backlog:
    """Pending rows of one series and the enqueue time of the oldest (None when empty)."""

    pending: int
    oldest: float | None


@dataclass(frozen=True)
class Gauges:
    """What the store looked like at ``db_now`` (its own clock, Unix seconds)."""

    db_now: float
    backlog: dict[Series, Backlog]
    synced_last_hour: dict[HourSeries, int]
    future_rows: dict[str, int] = field(default_factory=dict)
    """Rows stamped later than ``db_now`` per table role (queue, history, errors)."""
    last_hour_start: float | None = None
    """Start (Unix seconds) of the hour ``synced_last_hour`` counts."""
    failing: dict[ErrorSeries, int] | None = None
    """Waiting changes whose last attempt failed; None where the store cannot tell."""


@dataclass(frozen=True)
class Totals:
    """Counter values: the changes counted since the exporter started reading the store.

    Empty until the first successful read: a store down at start has no counters yet.
    """

    synced: dict[Series, int] = field(default_factory=dict)
    latency: dict[Series, HistogramValue] = field(default_factory=dict)
    errors: dict[ErrorSeries, int] = field(default_factory=dict)
    open_gaps: int = 0
    late_rows: dict[str, int] = field(default_factory=dict)
    """Rows counted late per table role (status-table layout only)."""


class _HistorySink:
    def __init__(self, labels: StoreLabels) -> None:
        self._labels = labels
        self.synced: CountsBySeries[Series] = CountsBySeries()
        self.latency: LatencyTally[Series] = LatencyTally()

    def add_row(self, row: FeedRow) -> None:
        series = self._labels.series(row.object, row.operation, row.direction)
        self.synced.add(series)
        if row.latency is not None:
            self.latency.observe(series, row.latency)


class _ErrorSink:
    def __init__(self, labels: StoreLabels) -> None:
        self._labels = labels
        self.errors: CountsBySeries[ErrorSeries] = CountsBySeries()

    def add_row(self, row: FeedRow) -> None:
        series = self._labels.series(row.object, row.operation, row.direction)
        self.errors.add((*series, self._labels.error_codes(row.error_code)))


class CollectionError(Exception):
    """A cycle failed; ``step`` says what it was doing, ``__cause__`` what went wrong."""

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


class Steps:
    """The steps of one cycle: what each took, and which one a failure happened in."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        """Seconds per timed step (steps sharing a name add up)."""
        self._failed = False

    @contextmanager
    def run(self, description: str, timed: str | None = None) -> Iterator[None]:
        """Run a step; a failure in it becomes CollectionError(``description``)."""
        started = time.perf_counter()
        try:
            yield
        except Exception as error:
            if self._failed:
                raise  # already named by the innermost step
            self._failed = True
            raise CollectionError(description) from error
        finally:
            if timed is not None:
                elapsed = time.perf_counter() - started
                self.seconds[timed] = self.seconds.get(timed, 0.0) + elapsed


class DatabaseSilentError(Exception):
    """The database sent nothing for longer than any statement may take: the network stalled."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer from the database for {seconds:g}s; connection closed")


class Watchdog:
    """Calls ``abort`` when an armed cycle makes no progress for ``silence`` seconds.

    The server ends slow statements itself; this bounds what it cannot: a network that
    goes silent mid-statement, where a driver without a read timeout waits forever.
    Its thread lives only while a cycle runs: at most one per store, and nothing that
    keeps an idle reader alive.
    """

    def __init__(self, silence: float, abort: Callable[[], None], name: str) -> None:
        self.silence = silence
        self.fired = False
        self._abort = abort
        self._name = name
        self._deadline: float | None = None
        self._closed = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        with self._wake:
            self.fired = False
            self._deadline = time.monotonic() + self.silence
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()

    def progress(self) -> None:
        with self._wake:
            if self._deadline is not None:
                self._deadline = time.monotonic() + self.silence

    def disarm(self) -> None:
        with self._wake:
            self._deadline = None
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _watch(self) -> None:
        with self._wake:
            while not self._closed and self._deadline is not None:
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._wake.wait(remaining)
                    continue
                self._deadline = None
                self.fired = True
                self._abort()
            self._thread = None  # under the lock: arm() starts a new one when needed


def previous_full_hour(now: float, zone: tzinfo) -> tuple[float, float]:
    """The hour (Unix seconds, start and end) before the last full hour of ``zone``'s clock.

    It ends when the zone's clock last read HH:00:00, which is not on a full UTC hour in
    zones such as Asia/Kolkata (+05:30) or Asia/Kathmandu (+05:45), and lasts one hour: on
    the day clocks go forward, the hour shown as 01:00-03:00.
    """
    local = datetime.fromtimestamp(now, UTC).astimezone(zone)
    # replace() keeps the fold: in the repeated hour of autumn it stays the second one.
    clock = local.replace(minute=0, second=0, microsecond=0)
    while _wall(clock.astimezone(UTC).astimezone(zone)) != _wall(clock):
        # Skipped by a clock change of half an hour (Australia/Lord_Howe): an earlier one.
        clock -= timedelta(hours=1)
    end = clock.timestamp()
    return end - 3600.0, end


def _wall(moment: datetime) -> datetime:
    """What the clock reads (a time in a gap of a clock change reads differently once real)."""
    return moment.replace(tzinfo=None, fold=0)


class LastHourCache:
    """The previous full clock hour changes only while late commits can still land in it."""

    def __init__(self, settle_time: float, zone: tzinfo = UTC) -> None:
        self._settle_time = settle_time
        self._zone = zone
        self._hour_end: float | None = None
        self._counts: dict[HourSeries, int] = {}

    @property
    def hour_start(self) -> float | None:
        """Start of the hour last counted (Unix seconds)."""
        return None if self._hour_end is None else self._hour_end - 3600.0

    def get(
        self, connection: Connection, queries: StoreQueries, labels: StoreLabels, db_now: float
    ) -> dict[HourSeries, int]:
        hour_start, hour_end = previous_full_hour(db_now, self._zone)
        settled = self._hour_end == hour_end and db_now > hour_end + self._settle_time
        if settled:
            return self._counts
        counts: dict[HourSeries, int] = {}
        statement = queries.synced_between(utc_datetime(hour_start), utc_datetime(hour_end))
        for row in map(queries.hour_row, connection.execute(statement)):
            key = (labels.objects(row.object), labels.directions(row.direction))
            counts[key] = counts.get(key, 0) + row.synced
        self._hour_end, self._counts = hour_end, counts
        return counts


@dataclass(frozen=True)
class Reading:
    """What one collection cycle read, whole: nothing else of the reader is shared."""

    gauges: Gauges | None
    """None when the cycle failed."""
    error: Exception | None
    """Why the cycle failed: a CollectionError naming the step, or what else went wrong."""
    totals: Totals
    """The counters after the cycle, failed or not (see ``Totals``)."""
    step_seconds: dict[str, float]
    """Time spent in each step of the cycle; empty when it failed."""
    folded: dict[str, int]
    """Distinct store values folded into ``other`` so far, per label."""


class StoreReader:
    """Owns one store's connection and running totals; ``read`` runs one cycle."""

    def __init__(
        self,
        config: StoreConfig,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.monotonic,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.config = config
        self.engine = engine or make_engine(config, limits)
        self.dialect = dialect_for(self.engine.dialect.name)
        self.labels = StoreLabels(config)
        self.queries = build_queries(config, self.dialect)
        self._clock = clock
        self._start_reading()
        self._read_once = False
        """Whether a collection has succeeded: no counter is served before."""
        self._cycles = 0
        self._series_debuts: Debuts[Series] = Debuts(config.new_counter_hold)
        self._error_debuts: Debuts[ErrorSeries] = Debuts(config.new_counter_hold)
        self._late_logged: dict[str, tuple[float, int]] = {}
        self._last_hour = LastHourCache(config.settle_time, config.last_hour_zone)
        self._status_watch = StatusWatch(config, clock)
        self._failing_seen: set[ErrorSeries] = set()
        # Long enough for any statement the server lets run (query_timeout) and its result.
        self._watchdog = Watchdog(
            2 * config.query_timeout + 2.0, self._interrupt, f"watchdog-{config.name}"
        )
        self._connections: list[Any] = []
        """The connections the running cycle holds: what the watchdog and shutdown end."""
        cycle_connections.watch(self.engine)

    def _start_reading(self) -> None:
        """Counters at zero, feeds to take their position at the next read."""
        self._history = _HistorySink(self.labels)
        self._errors = _ErrorSink(self.labels)
        sinks: dict[str, FeedSink] = {"history": self._history, "errors": self._errors}
        settle_time = self.config.settle_time
        # Rows only ever added are found by id; rows that change state or move, by timestamp.
        self._feeds: dict[str, IdFeed | MomentFeed] = {
            feed.name: (IdFeed if feed.append_only else MomentFeed)(
                feed, sinks[feed.name], settle_time
            )
            for feed in self.queries.feeds
        }

    # Told by cycle_connections about the connections of this store's running cycle.
    def holding(self, dbapi_connection: Any) -> None:
        if not any(held is dbapi_connection for held in self._connections):
            self._connections = [*self._connections, dbapi_connection]
        self._watchdog.progress()

    def released(self, dbapi_connection: Any) -> None:
        self._connections = [c for c in self._connections if c is not dbapi_connection]

    def progressed(self) -> None:
        self._watchdog.progress()

    def _interrupt(self) -> None:
        log.warning(
            "no answer from the database; closing the connection",
            extra={"store": self.config.name, "seconds": self._watchdog.silence},
        )
        for dbapi_connection in list(self._connections):
            interrupt_connection(dbapi_connection)

    def read(self) -> Reading:
        """Run every query once; a failed cycle's reading says why."""
        try:
            gauges, step_seconds = self._cycle()
        except Exception as error:
            return Reading(None, error, self._totals(), {}, self.labels.folded_counts())
        return Reading(gauges, None, self._totals(), step_seconds, self.labels.folded_counts())

    def _cycle(self) -> tuple[Gauges, dict[str, float]]:
        """Raises CollectionError naming the step that failed."""
        self._watchdog.arm()
        self._cycles += 1
        try:
            with cycle_connections.running_cycle(self):
                gauges, step_seconds = self._collect()
        except CollectionError as error:
            if not self._read_once:
                # Counters start with the first successful read, whatever a failed one saw.
                self._start_reading()
            if self._watchdog.fired:
                raise error from DatabaseSilentError(self._watchdog.silence)
            raise
        finally:
            self._watchdog.disarm()
        self._read_once = True
        self._log_late_rows()
        return gauges, step_seconds

    def _collect(self) -> tuple[Gauges, dict[str, float]]:
        steps = Steps()
        queries = self.queries
        with (
            steps.run(f"connecting to {self.config.display_url()}"),
            self.engine.connect() as connection,
            connection.begin(),
        ):
            with steps.run("reading the database clock", timed="backlog"):
                db_now = float(connection.execute(queries.now()).scalar_one())
            with steps.run("reading the recent status values"):
                self._status_watch.check(connection)
            with steps.run(
                f"reading the backlog from {queries.queue_source.fullname}", timed="backlog"
            ):
                backlog, future_pending = self._backlog(connection, db_now)
            failing = None
            failing_query = queries.failing()
            if failing_query is not None:
                with steps.run(
                    f"counting failing changes in {queries.queue_source.fullname}",
                    timed="failing",
                ):
                    failing = self._failing(connection, failing_query)
            for feed in queries.feeds:
                with steps.run(
                    f"reading new {feed.name} rows from {feed.table_names}", timed=feed.name
                ):
                    self._feeds[feed.name].read(connection, db_now)
            future_rows = {"queue": future_pending}
            future_query = queries.future_rows(db_now)
            if future_query is not None:
                tables = " and ".join(feed.table_names for feed in queries.feeds)
                with steps.run(
                    f"counting rows stamped in the future in {tables}", timed="future_rows"
                ):
                    future = connection.execute(future_query).one()
                future_rows |= {
                    feed.name: int(future._mapping[feed.name]) for feed in queries.feeds
                }
            last_hour: dict[HourSeries, int] = {}
            if queries.history is not None:
                with steps.run(
                    f"counting last hour's syncs in {queries.history.table_names}",
                    timed="last_hour",
                ):
                    last_hour = self._last_hour.get(connection, queries, self.labels, db_now)
                zero_hour = {(obj, direction): 0 for obj, _, direction in self.labels.zero_filled()}
                last_hour = {**zero_hour, **last_hour}
        gauges = Gauges(
            db_now=db_now,
            backlog=backlog,
            synced_last_hour=last_hour,
            future_rows=future_rows,
            last_hour_start=self._last_hour.hour_start if queries.history is not None else None,
            failing=failing,
        )
        return gauges, steps.seconds

    def _failing(self, connection: Connection, statement: Any) -> dict[ErrorSeries, int]:
        """Failing changes per series; a series seen failing before reads 0 once drained."""
        failing = dict.fromkeys(self._failing_seen, 0)
        for row in map(self.queries.failing_row, connection.execute(statement)):
            series = self.labels.series(row.object, row.operation, row.direction)
            key = (*series, self.labels.error_codes(row.error_code))
            failing[key] = failing.get(key, 0) + row.failing
        self._failing_seen.update(failing)
        return failing

    def _totals(self) -> Totals:
        """A copy of the counters, safe to hand to another thread.

        A series seen for the first time reads 0 for a while (see ``Debuts``).
        """
        if not self._read_once:
            return Totals()
        now = self._clock()
        synced = self._history.synced.values()
        latency = self._history.latency.values()
        if self.queries.history is not None:
            for series in self.labels.zero_filled():
                synced.setdefault(series, 0)
        empty = HistogramValue.empty(len(LATENCY_BUCKETS))
        for series in synced:
            if self._series_debuts.held(series, self._cycles, now):
                synced[series] = 0
                latency[series] = empty
            else:
                latency.setdefault(series, empty)
        errors = {
            series: 0 if self._error_debuts.held(series, self._cycles, now) else count
            for series, count in self._errors.errors.values().items()
        }
        open_gaps = sum(len(feed.gaps) for feed in self._feeds.values() if isinstance(feed, IdFeed))
        late_rows = {
            name: feed.late_rows
            for name, feed in self._feeds.items()
            if isinstance(feed, MomentFeed)
        }
        return Totals(synced, latency, errors, open_gaps, late_rows)

    def _log_late_rows(self) -> None:
        """Say when rows arrive later than settle_time: later still, they would be missed."""
        now = self._clock()
        for name, feed in self._feeds.items():
            if not isinstance(feed, MomentFeed):
                continue
            logged_at, logged_rows = self._late_logged.get(name, (-LATE_WARNING_EVERY, 0))
            if feed.late_rows > logged_rows and now - logged_at >= LATE_WARNING_EVERY:
                log.warning(
                    "rows became visible stamped more than settle_time ago: counted, but rows "
                    "later than twice settle_time are missed; raise settle_time",
                    extra={
                        "store": self.config.name,
                        "table": feed.table_names,
                        "rows": feed.late_rows - logged_rows,
                        "lateness": round(feed.latest_lateness, 3),
                        "settle_time": self.config.settle_time,
                    },
                )
                self._late_logged[name] = (now, feed.late_rows)

    def cancel(self, timeout: float) -> None:
        """End the statements this store is running, from another thread (shutdown)."""
        for dbapi_connection in list(self._connections):
            cancel_statement(dbapi_connection, timeout)

    def close(self) -> None:
        self._watchdog.close()
        self.engine.dispose()

    def _backlog(self, connection: Connection, db_now: float) -> tuple[dict[Series, Backlog], int]:
        """The backlog per series, and how many pending rows are stamped in the future."""
        pending: dict[Series, int] = dict.fromkeys(self.labels.zero_filled(), 0)
        oldest: dict[Series, float] = {}
        future = 0
        for row in map(self.queries.backlog_row, connection.execute(self.queries.backlog(db_now))):
            series = self.labels.series(row.object, row.operation, row.direction)
            pending[series] = pending.get(series, 0) + row.pending
            future += row.future
            if row.oldest is not None:
                oldest[series] = min(row.oldest, oldest.get(series, row.oldest))
        backlog = {series: Backlog(count, oldest.get(series)) for series, count in pending.items()}
        return backlog, future


def make_engine(config: StoreConfig, limits: ConnectionLimits | None = None) -> Engine:
    """The store's own engine: read-only sessions bounded by the query timeout."""
    return store_engines([(config, config.database_url())], limits)[config.name]


def store_engines(
    stores: Sequence[tuple[StoreConfig, URL]], limits: ConnectionLimits | None = None
) -> dict[str, Engine]:
    """An engine for each store (given with its URL, password filled in), by name.

    Stores of a database server that connect alike (the same URL, credentials and query
    timeout) share one, and so its connections: a fleet of stores in one database, a
    schema each, costs one engine (its memory and the dialect's first-connection queries)
    and, read often enough together, a few connections kept open instead of one opened
    and closed for each cycle (see connections). Raises StoreEngineError.
    """
    alike: dict[tuple[str, float], list[tuple[int, StoreConfig, URL]]] = {}
    for position, (store, url) in enumerate(stores):
        url = read_only_sqlite(url)
        # SQLite has no server to spare: each store keeps an engine of its own.
        key = url.render_as_string(hide_password=False) if server_of(url) else store.name
        alike.setdefault((key, store.query_timeout), []).append((position, store, url))
    engines: dict[str, Engine] = {}
    for sharing in alike.values():
        position, first, url = sharing[0]
        timeout = first.query_timeout
        try:
            dialect: Dialect = dialect_for(url.get_backend_name())
            engine = store_engine(
                url,
                connect_args=dialect.connect_arguments(timeout),
                query_timeout=timeout,
                configure=partial(dialect.configure, query_timeout=timeout),
                intervals=[store.interval for _, store, _ in sharing],
                limits=limits,
            )
        except (DatabaseUrlError, UnsupportedDatabaseError) as error:
            raise StoreEngineError(position, error) from None
        engines.update((store.name, engine) for _, store, _ in sharing)
    return engines


class StoreEngineError(Exception):
    """No engine could be built for the store at ``position``; the message says why."""

    def __init__(self, position: int, error: DatabaseUrlError | UnsupportedDatabaseError) -> None:
        super().__init__(str(error))
        self.position = position


def read_only_sqlite(url: URL) -> URL:
    """Open SQLite files read-only: a missing file is an error, never a new empty store."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    if database.startswith("file:"):
        return url
    return url.set(database=f"file:{database}").update_query_dict({"mode": "ro", "uri": "true"})
