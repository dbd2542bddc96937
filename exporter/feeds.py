"""Reading what becomes visible in a table after the exporter starts, exactly once.

Counters count the changes that become visible while the exporter reads a store, never the
history already there (see "Counters" in the README). A cycle must not re-read the whole
table either. Two strategies, one per layout:

- ``IdFeed`` (the three-table layout): ids grow, so each cycle reads ``id > last``. On start
  it takes the newest id as its position without reading the history; the ids missing just
  below it (transactions still open at that moment, or rolled back) are watched as *gaps*.
  Concurrent writers commit out of id order: a row with a smaller id may become visible
  after a larger one was read, so the ids skipped over are gaps too. Gaps are probed each
  cycle until they fill or ``settle_time`` passes (ids lost to rolled-back transactions
  never fill). Each cycle also looks up the last row read: when it is gone or carries
  another timestamp, the table was truncated, restored from a backup or recreated (even if
  refilled past the position since). The feed then takes the newest id as its position and
  counts the rows near it that it has not read before and that are stamped after its
  previous read (less ``settle_time``): those the new table received since then.
- ``MomentFeed`` (the status-table layout): rows change status in place, so their ids say
  nothing about when they became synced or failed. Each cycle re-reads the rows stamped
  within the last two ``settle_time`` and counts those whose (id, timestamp) it has not seen
  yet; on start, the rows already there are marked seen without being counted. A row that
  becomes visible stamped more than ``settle_time`` ago is counted and reported as *late*;
  one stamped more than twice ``settle_time`` ago cannot be found without scanning the table.

Neither ever lowers what it delivered: totals only grow during the exporter's life.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Select

from exporter.queries import ChangeFeedQueries, FeedRow

# On start (and when ids go backwards), the rows with ids this close to the newest are read
# one by one: transactions still open at that moment leave gaps that are watched.
TAIL_IDS = 10_000
PAGE_ROWS = 20_000
GAP_RANGES_PER_QUERY = 200
MAX_OPEN_GAPS = 10_000


class FeedSink(Protocol):
    """Where a feed delivers the rows it counts."""

    def add_row(self, row: FeedRow) -> None:
        """One row that became visible since the previous read."""


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
    ) -> None:
        self._queries = queries
        self.table_names = queries.table_names
        self._sink = sink
        self._settle_time = settle_time
        self._clock = clock
        self._last_id: int | None = None
        self._last_moment: float | None = None
        """The timestamp of the row at ``_last_id``, to tell it from another with its id."""
        self._read_at: float | None = None
        """The database's clock at the previous read."""
        # Rows read that a re-read after ids went backwards could count (id -> timestamp):
        # those stamped within settle_time of the last read, at most a tail's worth.
        self._recent: dict[int, float] = {}
        self.gaps = GapSet()

    def read(self, connection: Connection, db_now: float) -> None:
        newest = connection.execute(self._queries.max_id()).scalar()
        if self._last_id is None:
            self._take_position(connection, newest or 0, count_since=None)
        elif newest is None:
            # Emptied (truncated, or purged to the last row): what was open below the
            # position can no longer commit, and new rows come above it or, with their ids
            # restarted, below it (then caught as ids going backwards).
            self.gaps = GapSet()
        elif self._replaced(connection, newest):
            assert self._read_at is not None
            self._take_position(connection, newest, count_since=self._read_at - self._settle_time)
        self._probe_gaps(connection)
        self._read_new(connection)
        self.gaps.expire(self._clock() - self._settle_time)
        self._read_at = db_now
        horizon = db_now - self._settle_time
        self._recent = {row_id: at for row_id, at in self._recent.items() if at >= horizon}

    def _replaced(self, connection: Connection, newest: int) -> bool:
        """The last row read is gone or another: truncated, restored from a backup, recreated."""
        assert self._last_id is not None
        if newest < self._last_id:
            return True
        if self._last_id == 0:
            return False  # nothing read yet: the table was empty at start
        row = connection.execute(self._queries.row_moment(self._last_id)).first()
        return row is None or self._queries.read_moment(row.moment) != self._last_moment

    def _take_position(
        self, connection: Connection, newest: int, count_since: float | None
    ) -> None:
        """Continue after ``newest``; ids missing just below it are watched as gaps.

        With ``count_since``, the rows near ``newest`` stamped at or after it that were not
        read before (same id, same timestamp) are counted now: the table was replaced, and
        they arrived since.
        """
        self.gaps = GapSet()
        low = max(0, newest - TAIL_IDS)
        now = self._clock()
        expected = low + 1
        rows: Iterable[FeedRow] = ()
        if newest > low:
            rows = self._rows(connection, self._queries.rows_in_ranges([(low + 1, newest)]))
        for row in sorted(rows, key=lambda row: row.id):
            row_id = row.id
            if row_id > expected:
                self.gaps.open(expected, row_id - 1, now)
            expected = row_id + 1
            moment = row.moment
            if (
                count_since is not None
                and moment is not None
                and moment >= count_since
                and (row_id not in self._recent or self._recent[row_id] != moment)
            ):
                self._sink.add_row(row)
            self._remember(row_id, moment)
            self._last_moment = moment
        if expected <= newest:
            self.gaps.open(expected, newest, now)
        self._last_id = newest

    def _probe_gaps(self, connection: Connection) -> None:
        ranges = self.gaps.ranges()
        for start in range(0, len(ranges), GAP_RANGES_PER_QUERY):
            chunk = ranges[start : start + GAP_RANGES_PER_QUERY]
            for row in self._rows(connection, self._queries.rows_in_ranges(chunk)):
                if self.gaps.fill(row.id):
                    self._deliver(row)

    def _read_new(self, connection: Connection) -> None:
        assert self._last_id is not None
        while True:
            rows = self._rows(connection, self._queries.rows_after(self._last_id, PAGE_ROWS))
            now = self._clock()
            for row in rows:
                if row.id > self._last_id + 1:
                    self.gaps.open(self._last_id + 1, row.id - 1, now)
                self._last_id = row.id
                self._last_moment = row.moment
                self._deliver(row)
            if len(rows) < PAGE_ROWS:
                return

    def _rows(self, connection: Connection, statement: Select[Any]) -> list[FeedRow]:
        return [self._queries.decode(row) for row in connection.execute(statement)]

    def _deliver(self, row: FeedRow) -> None:
        self._sink.add_row(row)
        self._remember(row.id, row.moment)

    def _remember(self, row_id: int, moment: float | None) -> None:
        if moment is None:
            return  # never counted by its timestamp, so never counted twice by it
        self._recent.pop(row_id, None)
        self._recent[row_id] = moment
        if len(self._recent) > TAIL_IDS:
            del self._recent[next(iter(self._recent))]  # the first read of those kept


class MomentFeed:
    """Rows that reached a status, found by the timestamp they carry for it.

    Where rows move on to an archive table (with their id and timestamp), both tables are
    read in one statement: a row is in one of them in its snapshot, and a row read from the
    table and later from the archive has the same key, so it is counted once.
    """

    def __init__(self, queries: ChangeFeedQueries, sink: FeedSink, settle_time: float) -> None:
        self._queries = queries
        self.table_names = queries.table_names
        self._sink = sink
        self._settle_time = settle_time
        self._since: datetime | None = None
        self._seen: dict[tuple[Any, float], float] = {}
        self.late_rows = 0
        """Rows counted that were stamped more than ``settle_time`` before they became visible."""
        self.latest_lateness = 0.0
        """Seconds between stamp and visibility of the latest late row."""

    def read(self, connection: Connection, db_now: float) -> None:
        # Read two settle times back: rows stamped in the older one are late but still found.
        lookback = utc_datetime(db_now - 2 * self._settle_time)
        on_time = db_now - self._settle_time
        first = self._since is None
        # Never back: a database clock set back must not bring forgotten rows in again.
        since = lookback if self._since is None else max(self._since, lookback)
        for raw in connection.execute(self._queries.rows_since(since)):
            row = self._queries.decode(raw)
            moment = row.moment
            if moment is None:
                continue  # text that is no timestamp (SQLite): cannot be placed in time
            key = (row.id, moment)
            if key in self._seen:
                continue
            self._seen[key] = moment
            if first:
                continue  # there before the exporter started reading: not counted
            self._sink.add_row(row)
            if moment < on_time:
                self.late_rows += 1
                self.latest_lateness = db_now - moment
        self._since = since
        # Keep a second's margin: the SQL bound and these floats may round differently.
        horizon = since.replace(tzinfo=UTC).timestamp() - 1.0
        self._seen = {key: moment for key, moment in self._seen.items() if moment >= horizon}


def utc_datetime(epoch: float) -> datetime:
    """A naive UTC datetime: the sessions run in UTC, so it compares right on every column."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
