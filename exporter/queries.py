"""The SQL the exporter runs, built from a store's mapping onto the reference schema."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
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
from exporter.dialects import Comparison, compare_instant, epoch_seconds, now_epoch_seconds


def _naive_utc(epoch: float) -> datetime:
    """Sessions run in UTC, so a naive UTC datetime compares right with every column type."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def _table(name: str) -> TableClause:
    schema, _, bare = name.rpartition(".")
    return table(bare, schema=schema or None)


@dataclass(frozen=True)
class ChangeFeedQueries:
    """Queries over one append-only kind of row: synced changes, or failed attempts.

    ``labels`` are the raw columns the counter is split by; ``latency`` (synced
    changes only) is enqueued -> synced in seconds; ``moment`` is the row's own
    timestamp, used by the status-table layout where ids do not grow with time.
    """

    name: str
    source: TableClause
    id: ColumnElement[int]
    labels: tuple[ColumnElement[Any], ...]
    moment: ColumnElement[datetime]
    latency: ColumnElement[float] | None
    where: ColumnElement[bool] | None
    dialect: str

    def filtered(self, statement: Select[Any], *conditions: ColumnElement[bool]) -> Select[Any]:
        clauses = [c for c in (self.where, *conditions) if c is not None]
        return statement.where(and_(*clauses)) if clauses else statement

    def max_id(self) -> Select[Any]:
        return self.filtered(select(func.max(self.id)).select_from(self.source))

    def row_moment(self, row_id: int) -> Select[Any]:
        """The timestamp of one row (no row when it is gone)."""
        statement = select(epoch_seconds(self.dialect, self.moment).label("moment"))
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
        return compare_instant(self.dialect, self.moment, comparison, moment)

    def _row_values(self) -> list[ColumnElement[Any]]:
        values: list[ColumnElement[Any]] = [
            *self.labels,
            epoch_seconds(self.dialect, self.moment).label("moment"),
        ]
        if self.latency is not None:
            values.append(self.latency.label("latency"))
        return values


@dataclass(frozen=True)
class StoreQueries:
    """Every query for one store, whichever layout it has."""

    dialect: str
    queue_source: TableClause
    queue_labels: tuple[ColumnElement[Any], ...]
    queue_enqueued_at: ColumnElement[datetime]
    queue_where: ColumnElement[bool] | None
    history: ChangeFeedQueries
    errors: ChangeFeedQueries
    history_direction_labels: tuple[ColumnElement[Any], ColumnElement[Any]]
    append_only: bool

    def now(self) -> Select[Any]:
        return select(now_epoch_seconds(self.dialect).label("now"))

    def backlog(self, db_now: float) -> Select[Any]:
        """Pending rows, the oldest enqueue time, and rows enqueued after ``db_now``, per
        raw object, operation, direction."""
        future = case((self._later_than(self.queue_enqueued_at, db_now), 1))
        statement = (
            select(
                *self.queue_labels,
                func.count().label("pending"),
                self._oldest_enqueued().label("oldest"),
                func.count(future).label("future"),
            )
            .select_from(self.queue_source)
            .group_by(*self.queue_labels)
        )
        return statement.where(self.queue_where) if self.queue_where is not None else statement

    def _oldest_enqueued(self) -> ColumnElement[float]:
        if self.dialect == "sqlite":
            # SQLite keeps timestamps as text, possibly with differing UTC offsets:
            # the smallest string is not always the earliest instant.
            return func.min(epoch_seconds(self.dialect, self.queue_enqueued_at))
        return epoch_seconds(self.dialect, func.min(self.queue_enqueued_at))

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
        return compare_instant(self.dialect, timestamp, ">", _naive_utc(db_now))

    def synced_between(self, start: datetime, end: datetime) -> Select[Any]:
        """Synced changes per raw object and direction with start <= synced_at < end."""
        history = self.history
        statement = (
            select(*self.history_direction_labels, func.count().label("synced"))
            .select_from(history.source)
            .group_by(*self.history_direction_labels)
        )
        return history.filtered(statement, history.stamped(">=", start), history.stamped("<", end))


def build_queries(store: StoreConfig, dialect: str) -> StoreQueries:
    """The queries for ``store`` on a database of the given SQLAlchemy dialect name."""
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
            labels=history_labels,
            moment=col(history.synced_at, DateTime),
            latency=epoch_seconds(dialect, col(history.synced_at))
            - epoch_seconds(dialect, col(history.enqueued_at)),
            where=None,
            dialect=dialect,
        )
        error_feed = ChangeFeedQueries(
            name="errors",
            source=errors_source,
            id=col(errors.id, BigInteger),
            labels=(
                col(errors.object_type),
                col(errors.operation),
                col(errors.direction),
                col(errors.error_code),
            ),
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
        labels=labels,
        moment=col(single.synced_at, DateTime),
        latency=epoch_seconds(dialect, col(single.synced_at))
        - epoch_seconds(dialect, col(single.enqueued_at)),
        where=status.in_(statuses.synced),
        dialect=dialect,
    )
    error_feed = ChangeFeedQueries(
        name="errors",
        source=source,
        id=col(single.id, BigInteger),
        labels=(*labels, col(single.error_code)),
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
