"""The SQL the exporter runs, built from a store's mapping onto the reference schema."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Row,
    Select,
    and_,
    case,
    column,
    func,
    or_,
    select,
    table,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import TableClause

from exporter.config import StoreConfig
from exporter.dialects import Comparison, Dialect


def _naive_utc(epoch: float) -> datetime:
    """Sessions run in UTC, so a naive UTC datetime compares right with every column type."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def _table(name: str) -> TableClause:
    schema, _, bare = name.rpartition(".")
    return table(bare, schema=schema or None)


@dataclass(frozen=True)
class FeedRow:
    """One synced change or failed attempt as read: raw label values, Unix seconds."""

    id: int
    object: Any
    operation: Any
    direction: Any
    error_code: Any
    """The raw error code (failed attempts only)."""
    moment: float | None
    """When it was synced or failed; None for text that is no timestamp (SQLite)."""
    latency: float | None
    """Seconds from enqueue to sync (synced changes only)."""


@dataclass(frozen=True)
class BacklogRow:
    """Pending rows of one raw (object, operation, direction)."""

    object: Any
    operation: Any
    direction: Any
    pending: int
    oldest: float | None
    """Enqueue time of the oldest (Unix seconds)."""
    future: int
    """How many are stamped later than the database's clock."""


@dataclass(frozen=True)
class HourRow:
    """Synced changes of one raw (object, direction) in an hour."""

    object: Any
    direction: Any
    synced: int


@dataclass(frozen=True)
class ChangeFeedQueries:
    """Queries over one append-only kind of row: synced changes, or failed attempts.

    ``object``, ``operation``, ``direction`` (and ``error_code`` for failed attempts) are
    the raw columns the counter is split by; ``latency`` (synced changes only) is enqueued
    -> synced in seconds; ``moment`` is the row's own timestamp, used by the status-table
    layout where ids do not grow with time.
    """

    name: str
    source: TableClause
    id: ColumnElement[int]
    object: ColumnElement[Any]
    operation: ColumnElement[Any]
    direction: ColumnElement[Any]
    error_code: ColumnElement[Any] | None
    moment: ColumnElement[datetime]
    latency: ColumnElement[float] | None
    where: ColumnElement[bool] | None
    dialect: Dialect

    def filtered(self, statement: Select[Any], *conditions: ColumnElement[bool]) -> Select[Any]:
        clauses = [c for c in (self.where, *conditions) if c is not None]
        return statement.where(and_(*clauses)) if clauses else statement

    def max_id(self) -> Select[Any]:
        return self.filtered(select(func.max(self.id)).select_from(self.source))

    def row_moment(self, row_id: int) -> Select[Any]:
        """The timestamp of one row (no row when it is gone)."""
        statement = select(self.dialect.epoch_seconds(self.moment).label("moment"))
        return self.filtered(statement.select_from(self.source), self.id == row_id)

    def rows_after(self, after_id: int, limit: int) -> Select[Any]:
        """New rows in id order, a page at a time."""
        statement = select(self.id, *self._row_values()).select_from(self.source)
        return self.filtered(statement, self.id > after_id).order_by(self.id).limit(limit)

    def rows_in_ranges(self, ranges: Sequence[tuple[int, int]]) -> Select[Any]:
        """Rows whose ids fall into gaps left by transactions that had not committed yet."""
        statement = select(self.id, *self._row_values()).select_from(self.source)
        return self.filtered(statement, or_(*(self.id.between(lo, hi) for lo, hi in ranges)))

    def rows_since(self, moment: datetime) -> Select[Any]:
        """Rows stamped at or after ``moment`` (status-table layout)."""
        statement = select(self.id, *self._row_values()).select_from(self.source)
        return self.filtered(statement, self.stamped(">=", moment))

    def stamped(self, comparison: Comparison, moment: datetime) -> ColumnElement[bool]:
        """The row's timestamp compared with ``moment`` as instants, whatever its text form."""
        return self.dialect.compare_instant(self.moment, comparison, moment)

    def read_moment(self, value: Any) -> float | None:
        """A ``moment`` read by ``row_moment`` or the row queries, in Unix seconds."""
        return None if value is None else float(value)

    def decode(self, row: Row[Any]) -> FeedRow:
        """A row of ``rows_after``, ``rows_in_ranges`` or ``rows_since``, by name."""
        moment = self.read_moment(row.moment)
        latency = row.latency if self.latency is not None else None
        return FeedRow(
            id=int(row[0]),
            object=row.object,
            operation=row.operation,
            direction=row.direction,
            error_code=row.error_code if self.error_code is not None else None,
            moment=moment,
            latency=None if latency is None else float(latency),
        )

    def _row_values(self) -> list[ColumnElement[Any]]:
        values: list[ColumnElement[Any]] = [
            self.object.label("object"),
            self.operation.label("operation"),
            self.direction.label("direction"),
        ]
        if self.error_code is not None:
            values.append(self.error_code.label("error_code"))
        values += [
            self.dialect.epoch_seconds(self.moment).label("moment"),
        ]
        if self.latency is not None:
            values.append(self.latency.label("latency"))
        return values


@dataclass(frozen=True)
class StoreQueries:
    """Every query for one store, whichever layout it has."""

    dialect: Dialect
    queue_source: TableClause
    queue_labels: tuple[ColumnElement[Any], ...]
    queue_enqueued_at: ColumnElement[datetime]
    queue_where: ColumnElement[bool] | None
    history: ChangeFeedQueries
    errors: ChangeFeedQueries
    history_direction_labels: tuple[ColumnElement[Any], ColumnElement[Any]]
    append_only: bool

    def now(self) -> Select[Any]:
        return select(self.dialect.now_epoch_seconds().label("now"))

    def backlog(self, db_now: float) -> Select[Any]:
        """Pending rows, the oldest enqueue time, and rows enqueued after ``db_now``, per
        raw object, operation, direction."""
        future = case((self._later_than(self.queue_enqueued_at, db_now), 1))
        statement = (
            select(
                *(
                    label.label(name)
                    for name, label in zip(_SERIES, self.queue_labels, strict=True)
                ),
                func.count().label("pending"),
                self._oldest_enqueued().label("oldest"),
                func.count(future).label("future"),
            )
            .select_from(self.queue_source)
            .group_by(*self.queue_labels)
        )
        return statement.where(self.queue_where) if self.queue_where is not None else statement

    @staticmethod
    def backlog_row(row: Row[Any]) -> BacklogRow:
        """A row of ``backlog``, by name."""
        oldest = row.oldest
        return BacklogRow(
            object=row.object,
            operation=row.operation,
            direction=row.direction,
            pending=int(row.pending),
            oldest=None if oldest is None else float(oldest),
            future=int(row.future or 0),
        )

    def _oldest_enqueued(self) -> ColumnElement[float]:
        return self.dialect.oldest_epoch_seconds(self.queue_enqueued_at)

    def future_rows(self, db_now: float) -> Select[Any]:
        """History and error rows stamped after ``db_now``: a writer's clock runs ahead."""
        counts = [
            feed.filtered(
                select(func.count()).select_from(feed.source),
                self._later_than(feed.moment, db_now),
            )
            .scalar_subquery()
            .label(feed.name)
            for feed in (self.history, self.errors)
        ]
        return select(*counts)

    def _later_than(self, timestamp: ColumnElement[datetime], db_now: float) -> ColumnElement[bool]:
        """``timestamp`` is after the instant ``db_now``, through the column's index if any."""
        return self.dialect.compare_instant(timestamp, ">", _naive_utc(db_now))

    def synced_between(self, start: datetime, end: datetime) -> Select[Any]:
        """Synced changes per raw object and direction with start <= synced_at < end."""
        history = self.history
        statement = (
            select(
                self.history_direction_labels[0].label("object"),
                self.history_direction_labels[1].label("direction"),
                func.count().label("synced"),
            )
            .select_from(history.source)
            .group_by(*self.history_direction_labels)
        )
        return history.filtered(statement, history.stamped(">=", start), history.stamped("<", end))

    @staticmethod
    def hour_row(row: Row[Any]) -> HourRow:
        """A row of ``synced_between``, by name."""
        return HourRow(object=row.object, direction=row.direction, synced=int(row.synced))


_SERIES = ("object", "operation", "direction")


def build_queries(store: StoreConfig, dialect: Dialect) -> StoreQueries:
    """The queries for ``store`` on a database of the given dialect."""
    mapping = store.mapping

    def col(name: str, type_: Any = None) -> ColumnElement[Any]:
        return column(name, type_) if type_ is not None else column(name)

    if mapping.single_table is None:
        queue, history, errors = mapping.queue, mapping.history, mapping.errors
        queue_source = _table(queue.table)
        history_source = _table(history.table)
        errors_source = _table(errors.table)
        history_labels = (
            col(history.object_type),
            col(history.operation),
            col(history.direction),
        )
        history_feed = ChangeFeedQueries(
            name="history",
            source=history_source,
            id=col(history.id, BigInteger),
            object=history_labels[0],
            operation=history_labels[1],
            direction=history_labels[2],
            error_code=None,
            moment=col(history.synced_at, DateTime),
            latency=dialect.epoch_seconds(col(history.synced_at))
            - dialect.epoch_seconds(col(history.enqueued_at)),
            where=None,
            dialect=dialect,
        )
        error_feed = ChangeFeedQueries(
            name="errors",
            source=errors_source,
            id=col(errors.id, BigInteger),
            object=col(errors.object_type),
            operation=col(errors.operation),
            direction=col(errors.direction),
            error_code=col(errors.error_code),
            moment=col(errors.failed_at, DateTime),
            latency=None,
            where=None,
            dialect=dialect,
        )
        return StoreQueries(
            dialect=dialect,
            queue_source=queue_source,
            queue_labels=(col(queue.object_type), col(queue.operation), col(queue.direction)),
            queue_enqueued_at=col(queue.enqueued_at, DateTime),
            queue_where=None,
            history=history_feed,
            errors=error_feed,
            history_direction_labels=(col(history.object_type), col(history.direction)),
            append_only=True,
        )

    single = mapping.single_table
    statuses = mapping.status_values
    source = _table(single.table)
    status = col(single.status)
    labels = (col(single.object_type), col(single.operation), col(single.direction))
    history_feed = ChangeFeedQueries(
        name="history",
        source=source,
        id=col(single.id, BigInteger),
        object=labels[0],
        operation=labels[1],
        direction=labels[2],
        error_code=None,
        moment=col(single.synced_at, DateTime),
        latency=dialect.epoch_seconds(col(single.synced_at))
        - dialect.epoch_seconds(col(single.enqueued_at)),
        where=status.in_(statuses.synced),
        dialect=dialect,
    )
    error_feed = ChangeFeedQueries(
        name="errors",
        source=source,
        id=col(single.id, BigInteger),
        object=labels[0],
        operation=labels[1],
        direction=labels[2],
        error_code=col(single.error_code),
        moment=col(single.failed_at, DateTime),
        latency=None,
        where=status.in_(statuses.failed),
        dialect=dialect,
    )
    return StoreQueries(
        dialect=dialect,
        queue_source=source,
        queue_labels=labels,
        queue_enqueued_at=col(single.enqueued_at, DateTime),
        queue_where=status.in_(statuses.pending),
        history=history_feed,
        errors=error_feed,
        history_direction_labels=(col(single.object_type), col(single.direction)),
        append_only=False,
    )
