"""Reading only what is new in an append-only table, exactly once, however writers commit.

A counter must equal the store's count of rows, yet a cycle must not re-count the
whole history. Two strategies, one per layout:

- ``IdFeed`` (the three-table layout): ids grow, so each cycle reads ``id > last``.
  Concurrent writers commit out of id order: a row with a smaller id may become
  visible after a larger one was read. The ids skipped over are remembered as
  *gaps* and probed each cycle until they fill or ``settle_time`` passes (ids
  lost to rolled-back transactions never fill).
- ``MomentFeed`` (the status-table layout): rows change status in place, so
  their ids say nothing about when they became synced or failed. Each cycle
  re-reads the rows stamped within the last ``settle_time`` and counts those
  whose (id, timestamp) it has not seen yet.

On start both count everything older than their window with one aggregate query,
then proceed row by row: a restart re-reads the totals from the store.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Row, and_

from exporter.queries import ChangeFeedQueries

AnyRow = Row[*tuple[Any, ...]]

# On start, rows with ids this close to the newest are read one by one, so that
# transactions still open at that moment leave gaps that are watched.
STARTUP_TAIL_IDS = 10_000
# The start-up totals are read a slice of ids at a time: ten million rows take seconds to read,
# and one statement over all of them would outlast the query timeout on a large store. Each
# slice is sized from the speed of the one before, to take ``slice_seconds``.
STARTUP_SLICE_IDS = 100_000
"""The first slice."""
STARTUP_SLICE_LIMITS = (10_000, 10_000_000)
PAGE_ROWS = 20_000
GAP_RANGES_PER_QUERY = 200
MAX_OPEN_GAPS = 10_000


class FeedSink(Protocol):
    """Where a feed delivers what it read."""

    def add_aggregate(self, row: AnyRow) -> None:
        """A GROUP BY row of ``ChangeFeedQueries.aggregate``."""

    def add_row(self, row: AnyRow) -> None:
        """One new row of the table."""

    def reset(self) -> None:
        """Forget every total: the table was emptied or replaced."""


@dataclass
class _Gap:
    low: int
    high: int
    opened: float


@dataclass
class GapSet:
    """Id ranges skipped over by the feed, in order, each with the time it opened."""

    gaps: list[_Gap] = field(default_factory=list)

    def open(self, low: int, high: int, now: float) -> None:
        self.gaps.append(_Gap(low, high, now))  # new gaps are always above the old ones
        if len(self.gaps) > MAX_OPEN_GAPS:
            del self.gaps[: len(self.gaps) - MAX_OPEN_GAPS]

    def fill(self, row_id: int) -> bool:
        """Take ``row_id`` out of its gap; False when it was in none (already counted)."""
        index = bisect.bisect_right([gap.low for gap in self.gaps], row_id) - 1
        if index < 0 or row_id > self.gaps[index].high:
            return False
        gap = self.gaps[index]
        pieces = [
            _Gap(low, high, gap.opened)
            for low, high in ((gap.low, row_id - 1), (row_id + 1, gap.high))
            if low <= high
        ]
        self.gaps[index : index + 1] = pieces
        return True

    def expire(self, before: float) -> None:
        self.gaps = [gap for gap in self.gaps if gap.opened >= before]

    def ranges(self) -> list[tuple[int, int]]:
        return [(gap.low, gap.high) for gap in self.gaps]

    def __len__(self) -> int:
        return len(self.gaps)


class IdFeed:
    """New rows of an append-only table with an increasing integer id."""

    def __init__(
        self,
        queries: ChangeFeedQueries,
        sink: FeedSink,
        settle_time: float,
        clock: Callable[[], float] = time.monotonic,
        slice_seconds: float = 2.5,
    ) -> None:
        self._queries = queries
        self._sink = sink
        self._settle_time = settle_time
        self._clock = clock
        self._slice_seconds = slice_seconds
        self._last_id: int | None = None
        self.gaps = GapSet()

    def read(self, connection: Connection, db_now: float) -> None:
        del db_now  # ids, not timestamps, decide what is new here
        newest = connection.execute(self._queries.max_id()).scalar()
        if self._last_id is None or self._replaced(newest):
            self._start(connection, newest)
        self._probe_gaps(connection)
        self._read_new(connection)
        self.gaps.expire(self._clock() - self._settle_time)

    def _replaced(self, newest: int | None) -> bool:
        """The table holds fewer ids than already read: restored, truncated or recreated."""
        assert self._last_id is not None
        return (newest or 0) < self._last_id

    def _start(self, connection: Connection, newest: int | None) -> None:
        self._sink.reset()
        self.gaps = GapSet()
        settled = max(0, (newest or 0) - STARTUP_TAIL_IDS)
        if settled > 0:
            low = int(connection.execute(self._queries.min_id()).scalar() or 1) - 1
            size = STARTUP_SLICE_IDS
            while low < settled:
                high = min(settled, low + size)
                id_range = and_(self._queries.id > low, self._queries.id <= high)
                started = time.monotonic()
                for row in connection.execute(self._queries.aggregate(id_range)):
                    self._sink.add_aggregate(row)
                size = _next_slice(size, time.monotonic() - started, self._slice_seconds)
                low = high
        self._last_id = settled

    def _probe_gaps(self, connection: Connection) -> None:
        ranges = self.gaps.ranges()
        for start in range(0, len(ranges), GAP_RANGES_PER_QUERY):
            chunk = ranges[start : start + GAP_RANGES_PER_QUERY]
            rows = connection.execute(self._queries.rows_in_ranges(chunk)).all()
            for row in rows:
                if self.gaps.fill(row[0]):
                    self._sink.add_row(row)

    def _read_new(self, connection: Connection) -> None:
        assert self._last_id is not None
        while True:
            rows = connection.execute(self._queries.rows_after(self._last_id, PAGE_ROWS)).all()
            now = self._clock()
            for row in rows:
                row_id = int(row[0])
                if row_id > self._last_id + 1:
                    self.gaps.open(self._last_id + 1, row_id - 1, now)
                self._last_id = row_id
                self._sink.add_row(row)
            if len(rows) < PAGE_ROWS:
                return


class MomentFeed:
    """Rows that reached a status, found by the timestamp they carry for it."""

    def __init__(self, queries: ChangeFeedQueries, sink: FeedSink, settle_time: float) -> None:
        self._queries = queries
        self._sink = sink
        self._settle_time = settle_time
        self._since: datetime | None = None
        self._seen: dict[tuple[Any, float], float] = {}

    def read(self, connection: Connection, db_now: float) -> None:
        window_start = utc_datetime(db_now - self._settle_time)
        if self._since is None:
            self._sink.reset()
            self._seen.clear()
            for row in connection.execute(
                self._queries.aggregate(self._queries.stamped("<", window_start))
            ):
                self._sink.add_aggregate(row)
            self._since = window_start
        for row in connection.execute(self._queries.rows_since(self._since)):
            if row.moment is None:
                continue  # text that is no timestamp (SQLite): cannot be placed in time
            key = (row[0], float(row.moment))
            if key not in self._seen:
                self._seen[key] = key[1]
                self._sink.add_row(row)
        self._since = max(self._since, window_start)
        # Keep a second's margin: the SQL bound and these floats may round differently.
        horizon = self._since.replace(tzinfo=UTC).timestamp() - 1.0
        self._seen = {key: moment for key, moment in self._seen.items() if moment >= horizon}


def _next_slice(size: int, seconds: float, target: float) -> int:
    """Ids for the next start-up slice: ``target`` seconds at the last one's speed."""
    if seconds <= 0:
        return min(size * 4, STARTUP_SLICE_LIMITS[1])
    wanted = int(size * target / seconds)
    low, high = STARTUP_SLICE_LIMITS
    return max(low, min(high, size * 4, max(size // 4, wanted)))


def utc_datetime(epoch: float) -> datetime:
    """A naive UTC datetime: the sessions run in UTC, so it compares right on every column."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
