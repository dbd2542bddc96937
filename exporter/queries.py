"""The SQL the exporter runs, built from a store's mapping onto the reference schema."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    DateTime,
    Row,
    Select,
    and_,
    case,
    column,
    exists,
    func,
    null,
    or_,
    select,
    table,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import TableClause

from exporter.config import (
    Constants,
    ErrorTable,
    QueueTable,
    RowFilter,
    StoreConfig,
)
from exporter.dialects import Comparison, Dialect
from exporter.wall_clock import WallClock


def _naive_utc(epoch: float) -> datetime:
    """Sessions run in UTC, so a naive UTC datetime compares right with every column type."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class FeedRow:
    """One synced change or failed attempt as read: raw label values, Unix seconds."""

    id: int
    object: Any
    operation: Any
    direction: Any
    error_code: Any
    """The raw error code (failed attempts only; None where the message has none)."""
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
class FailingRow:
    """Waiting changes of one raw (object, operation, direction, error code) that failed."""

    object: Any
    operation: Any
    direction: Any
    error_code: Any
    failing: int


@dataclass(frozen=True)
class HourRow:
    """Synced changes of one raw (object, direction) in an hour."""

    object: Any
    direction: Any
    synced: int


MESSAGE_CHARACTERS = 512
"""How much of an error message is read to find its code in."""


@dataclass(frozen=True)
class LabelColumns:
    """The raw columns a role's rows are labelled by; None where a constant gives the label."""

    object: ColumnElement[Any] | None
    operation: ColumnElement[Any] | None
    direction: ColumnElement[Any] | None

    def selected(self, *names: str) -> list[ColumnElement[Any]]:
        """The columns named (object, operation, direction), labelled by those names."""
        return [
            getattr(self, name).label(name) for name in names if getattr(self, name) is not None
        ]

    def grouped(self, *names: str) -> list[ColumnElement[Any]]:
        return [getattr(self, name) for name in names if getattr(self, name) is not None]


_SERIES = ("object", "operation", "direction")


def _value(row: Row[Any], name: str) -> Any:
    """A label column's value; None when a constant gives the label (not selected)."""
    return row._mapping.get(name)


def _error_code(pattern: re.Pattern[str] | None, text: Any) -> Any:
    """The code itself, or the one ``pattern`` finds in a message (None when none)."""
    if pattern is None or text is None:
        return text
    found = pattern.search(str(text))
    return found.group(1) if found else None


@dataclass(frozen=True)
class ChangeFeedQueries:
    """Queries over one kind of row: synced changes, or failed attempts.

    ``sources`` are the table and, where processed rows move on, its archive (the same
    columns; a row moves with its id and timestamp). ``where`` picks the role's rows by
    status. ``error_code`` (failed attempts) is the code's column, or the message's when
    ``code_pattern`` finds the code in it. ``moment`` is the row's own timestamp (synced or
    failed), ``enqueued_at`` (synced changes) its enqueue time.
    """

    name: str
    sources: tuple[TableClause, ...]
    id: ColumnElement[int]
    labels: LabelColumns
    error_code: ColumnElement[Any] | None
    code_pattern: re.Pattern[str] | None
    moment: ColumnElement[datetime]
    enqueued_at: ColumnElement[datetime] | None
    where: ColumnElement[bool] | None
    dialect: Dialect
    clock: WallClock | None

    @property
    def append_only(self) -> bool:
        """Rows only ever added to one table: new ones are found by their growing ids."""
        return len(self.sources) == 1 and self.where is None

    @property
    def source(self) -> TableClause:
        return self.sources[0]

    @property
    def table_names(self) -> str:
        return " and ".join(source.fullname for source in self.sources)

    def filtered(self, statement: Select[Any], *conditions: ColumnElement[bool]) -> Select[Any]:
        clauses = [c for c in (self.where, *conditions) if c is not None]
        return statement.where(and_(*clauses)) if clauses else statement

    def _each_source(
        self, columns: Sequence[ColumnElement[Any]], *conditions: ColumnElement[bool]
    ) -> Select[Any] | CompoundSelect[Any]:
        """The role's rows of every source, each source filtered on its own (its index)."""
        selects = [
            self.filtered(select(*columns).select_from(source), *conditions)
            for source in self.sources
        ]
        return selects[0] if len(selects) == 1 else union_all(*selects)

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

    def rows_since(self, moment: datetime) -> Select[Any] | CompoundSelect[Any]:
        """Rows stamped at or after ``moment``, from every source (where rows change state)."""
        return self._each_source([self.id, *self._row_values()], self.stamped(">=", moment))

    def count_later_than(self, moment: datetime) -> ColumnElement[int]:
        """How many rows are stamped after ``moment`` (a scalar subquery)."""
        counts = [
            self.filtered(
                select(func.count()).select_from(source), self.stamped(">", moment)
            ).scalar_subquery()
            for source in self.sources
        ]
        total: ColumnElement[int] = counts[0]
        for count in counts[1:]:
            total = total + count
        return total

    def stamped(self, comparison: Comparison, moment: datetime) -> ColumnElement[bool]:
        """The row's timestamp compared with ``moment`` as instants, whatever its text form."""
        if self.clock is not None:
            moment = self.clock.reading(moment)
        return self.dialect.compare_instant(self.moment, comparison, moment)

    def read_moment(self, value: Any) -> float | None:
        """A timestamp read as ``epoch_seconds``, in Unix seconds."""
        return _instant(self.clock, value)

    def decode(self, row: Row[Any]) -> FeedRow:
        """A row of ``rows_after``, ``rows_in_ranges`` or ``rows_since``, by name."""
        moment = self.read_moment(row.moment)
        latency = None
        if self.enqueued_at is not None:
            enqueued = self.read_moment(row.enqueued)
            if moment is not None and enqueued is not None:
                latency = moment - enqueued
        return FeedRow(
            id=int(row[0]),
            object=_value(row, "object"),
            operation=_value(row, "operation"),
            direction=_value(row, "direction"),
            error_code=(
                _error_code(self.code_pattern, row.error_code)
                if self.error_code is not None
                else None
            ),
            moment=moment,
            latency=latency,
        )

    def _row_values(self) -> list[ColumnElement[Any]]:
        values = self.labels.selected(*_SERIES)
        if self.error_code is not None:
            values.append(self.error_code.label("error_code"))
        values.append(self.dialect.epoch_seconds(self.moment).label("moment"))
        if self.enqueued_at is not None:
            values.append(self.dialect.epoch_seconds(self.enqueued_at).label("enqueued"))
        return values


def _instant(clock: WallClock | None, value: Any) -> float | None:
    if value is None:
        return None
    return float(value) if clock is None else clock.instant(float(value))


@dataclass(frozen=True)
class QueueQueries:
    """The waiting changes: rows of ``source`` that ``where`` picks."""

    source: TableClause
    labels: LabelColumns
    enqueued_at: ColumnElement[datetime]
    where: ColumnElement[bool] | None
    retries: ColumnElement[Any] | None
    last_error: ColumnElement[Any] | None
    code_pattern: re.Pattern[str]


@dataclass(frozen=True)
class StoreQueries:
    """Every query for one store, whichever layout it has.

    ``history`` and ``errors`` are None where the store keeps no such rows.
    """

    dialect: Dialect
    queue: QueueQueries
    history: ChangeFeedQueries | None
    errors: ChangeFeedQueries | None
    failing_match: FailingMatch | None
    """How error rows are matched to waiting changes, where they tell which failed."""
    clock: WallClock | None

    @property
    def queue_source(self) -> TableClause:
        return self.queue.source

    @property
    def feeds(self) -> tuple[ChangeFeedQueries, ...]:
        return tuple(feed for feed in (self.history, self.errors) if feed is not None)

    def now(self) -> Select[Any]:
        return select(self.dialect.now_epoch_seconds().label("now"))

    def backlog(self, db_now: float) -> Select[Any]:
        """Pending rows, the oldest enqueue time, and rows enqueued after ``db_now``, per
        raw object, operation, direction."""
        queue = self.queue
        future = case((self._later_than(queue.enqueued_at, db_now), 1))
        statement = (
            select(
                *queue.labels.selected(*_SERIES),
                func.count().label("pending"),
                self.dialect.oldest_epoch_seconds(queue.enqueued_at).label("oldest"),
                func.count(future).label("future"),
            )
            .select_from(queue.source)
            .group_by(*queue.labels.grouped(*_SERIES))
        )
        return statement.where(queue.where) if queue.where is not None else statement

    def backlog_row(self, row: Row[Any]) -> BacklogRow:
        """A row of ``backlog``, by name."""
        return BacklogRow(
            object=_value(row, "object"),
            operation=_value(row, "operation"),
            direction=_value(row, "direction"),
            pending=int(row.pending),
            oldest=_instant(self.clock, row.oldest),
            future=int(row.future or 0),
        )

    def failing(self) -> Select[Any] | None:
        """Waiting changes whose last attempt failed, per raw labels and error code text.

        From the queue row's retry count or last error where it has them; else from error
        rows for the same record stamped at or after the queue row's enqueue time (one index
        probe per waiting change with an index on the errors' record_id, failed_at).
        """
        queue = self.queue
        if queue.retries is not None or queue.last_error is not None:
            failed = []
            if queue.retries is not None:
                failed.append(queue.retries > 0)
            code: ColumnElement[Any] = null()
            if queue.last_error is not None:
                failed.append(func.length(func.trim(queue.last_error)) > 0)
                code = func.substr(queue.last_error, 1, MESSAGE_CHARACTERS)
            conditions = [or_(*failed)]
            if queue.where is not None:
                conditions.append(queue.where)
            statement: Select[Any] = (
                select(
                    *queue.labels.selected(*_SERIES),
                    code.label("code"),
                    func.count().label("failing"),
                )
                .select_from(queue.source)
                .where(*conditions)
                .group_by(*queue.labels.grouped(*_SERIES), code)
            )
            return statement
        if self.failing_match is None:
            return None
        return self._failing_from_errors()

    def _failing_from_errors(self) -> Select[Any]:
        match = self.failing_match
        assert match is not None
        waiting = _aliased(match.queue_table, "waiting", match.queue_columns())
        failed = _aliased(match.errors_table, "failed", match.errors_columns())
        newer = [
            failed.c[match.errors_record_id] == waiting.c[match.queue_record_id],
            failed.c[match.errors_failed_at] >= waiting.c[match.queue_enqueued_at],
        ]
        if match.queue_object is not None and match.errors_object is not None:
            newer.append(failed.c[match.errors_object] == waiting.c[match.queue_object])
        if match.errors_filter is not None:
            newer.append(failed.c[match.errors_filter.column].in_(match.errors_filter.values))
        code = failed.c[match.errors_code]
        if match.code_from_message:
            code = func.substr(code, 1, MESSAGE_CHARACTERS)
        latest_code = (
            select(code)
            .where(*newer)
            .order_by(failed.c[match.errors_failed_at].desc(), failed.c[match.errors_id].desc())
            .limit(1)
            .scalar_subquery()
        )
        labels = [(name, c) for name, c in match.queue_labels if c is not None]
        rows = select(
            *(waiting.c[c].label(name) for name, c in labels), latest_code.label("code")
        ).where(exists().where(*newer))
        if match.queue_filter is not None:
            rows = rows.where(waiting.c[match.queue_filter.column].in_(match.queue_filter.values))
        per_row = rows.subquery("failing_rows")
        grouped = [per_row.c[name] for name, _ in labels]
        return select(*grouped, per_row.c.code, func.count().label("failing")).group_by(
            *grouped, per_row.c.code
        )

    def failing_row(self, row: Row[Any]) -> FailingRow:
        """A row of ``failing``, by name."""
        pattern: re.Pattern[str] | None = self.queue.code_pattern
        if self.failing_match is not None and self.errors is not None:
            pattern = self.errors.code_pattern
        return FailingRow(
            object=_value(row, "object"),
            operation=_value(row, "operation"),
            direction=_value(row, "direction"),
            error_code=_error_code(pattern, row.code),
            failing=int(row.failing),
        )

    def future_rows(self, db_now: float) -> Select[Any] | None:
        """History and error rows stamped after ``db_now``: a writer's clock runs ahead."""
        if not self.feeds:
            return None
        moment = _naive_utc(db_now)
        counts: list[ColumnElement[Any]] = [
            feed.count_later_than(moment).label(feed.name) for feed in self.feeds
        ]
        return select(*counts)

    def _later_than(self, timestamp: ColumnElement[datetime], db_now: float) -> ColumnElement[bool]:
        """``timestamp`` is after the instant ``db_now``, through the column's index if any."""
        moment = _naive_utc(db_now)
        if self.clock is not None:
            moment = self.clock.reading(moment)
        return self.dialect.compare_instant(timestamp, ">", moment)

    def synced_between(self, start: datetime, end: datetime) -> Select[Any]:
        """Synced changes per raw object and direction with start <= synced_at < end."""
        history = self.history
        assert history is not None
        names = ("object", "direction")
        rows = history._each_source(
            history.labels.selected(*names),
            history.stamped(">=", start),
            history.stamped("<", end),
        )
        if isinstance(rows, Select):
            return rows.add_columns(func.count().label("synced")).group_by(
                *history.labels.grouped(*names)
            )
        every = rows.subquery("synced")
        present = [every.c[name] for name in names if getattr(history.labels, name) is not None]
        return select(*present, func.count().label("synced")).group_by(*present)

    @staticmethod
    def hour_row(row: Row[Any]) -> HourRow:
        """A row of ``synced_between``, by name."""
        return HourRow(
            object=_value(row, "object"), direction=_value(row, "direction"), synced=int(row.synced)
        )


@dataclass(frozen=True)
class FailingMatch:
    """Column names that match error rows to the waiting change of the same record."""

    queue_table: TableClause
    queue_labels: tuple[tuple[str, str | None], ...]
    """(object, operation, direction) and their columns (None: a constant)."""
    queue_record_id: str
    queue_enqueued_at: str
    queue_object: str | None
    queue_filter: RowFilter | None
    errors_table: TableClause
    errors_id: str
    errors_record_id: str
    errors_failed_at: str
    errors_object: str | None
    errors_code: str
    code_from_message: bool
    errors_filter: RowFilter | None

    def queue_columns(self) -> set[str]:
        names = {self.queue_record_id, self.queue_enqueued_at}
        names |= {c for _, c in self.queue_labels if c is not None}
        if self.queue_filter is not None:
            names.add(self.queue_filter.column)
        return names

    def errors_columns(self) -> set[str]:
        names = {self.errors_id, self.errors_record_id, self.errors_failed_at, self.errors_code}
        if self.errors_object is not None:
            names.add(self.errors_object)
        if self.errors_filter is not None:
            names.add(self.errors_filter.column)
        return names


def _aliased(source: TableClause, name: str, columns: set[str]) -> Any:
    """An alias of ``source`` with ``columns``, for correlated subqueries."""
    described = table(source.name, *(column(c) for c in sorted(columns)), schema=source.schema)
    return described.alias(name)


def _table(name: str, schema: str | None) -> TableClause:
    qualifier, _, bare = name.rpartition(".")
    return table(bare, schema=qualifier or schema)


def _label_columns(config_table: Any, constants: Constants) -> LabelColumns:
    def label(name: str, constant: str | None) -> ColumnElement[Any] | None:
        return None if constant is not None else column(getattr(config_table, name))

    return LabelColumns(
        object=label("object_type", constants.object_type),
        operation=label("operation", constants.operation),
        direction=label("direction", constants.direction),
    )


def _filter(row_filter: RowFilter | None) -> ColumnElement[bool] | None:
    if row_filter is None:
        return None
    return column(row_filter.column).in_(row_filter.values)


def build_queries(store: StoreConfig, dialect: Dialect) -> StoreQueries:
    """The queries for ``store`` on a database of the given dialect."""
    mapping = store.mapping
    constants = mapping.constants
    clock = None if store.naive_time_zone == "UTC" else WallClock(store.naive_zone)
    schema = store.schema_
    queue_config, history_config, errors_config = mapping.roles()

    history = None
    if history_config is not None:
        history = ChangeFeedQueries(
            name="history",
            sources=_sources(history_config.table, history_config.archive_table, schema),
            id=column(history_config.id, BigInteger),
            labels=_label_columns(history_config, constants),
            error_code=None,
            code_pattern=None,
            moment=column(history_config.synced_at, DateTime),
            enqueued_at=column(history_config.enqueued_at, DateTime),
            where=_filter(history_config.filter),
            dialect=dialect,
            clock=clock,
        )
    errors = None
    if errors_config is not None:
        by_message = errors_config.error_code is None
        errors = ChangeFeedQueries(
            name="errors",
            sources=_sources(errors_config.table, errors_config.archive_table, schema),
            id=column(errors_config.id, BigInteger),
            labels=_label_columns(errors_config, constants),
            error_code=(
                func.substr(column(errors_config.error_message), 1, MESSAGE_CHARACTERS)
                if errors_config.error_code is None
                else column(errors_config.error_code)
            ),
            code_pattern=re.compile(errors_config.error_code_pattern) if by_message else None,
            moment=column(errors_config.failed_at, DateTime),
            enqueued_at=None,
            where=_filter(errors_config.filter),
            dialect=dialect,
            clock=clock,
        )
    queue = QueueQueries(
        source=_table(queue_config.table, schema),
        labels=_label_columns(queue_config, constants),
        enqueued_at=column(queue_config.enqueued_at, DateTime),
        where=_filter(queue_config.filter),
        retries=None if queue_config.retries is None else column(queue_config.retries),
        last_error=None if queue_config.last_error is None else column(queue_config.last_error),
        code_pattern=re.compile(queue_config.error_code_pattern),
    )
    failing_match = None
    if mapping.failing_from_errors and errors_config is not None:
        failing_match = _failing_match(queue_config, errors_config, constants, schema)
    return StoreQueries(
        dialect=dialect,
        queue=queue,
        history=history,
        errors=errors,
        failing_match=failing_match,
        clock=clock,
    )


def _failing_match(
    queue: QueueTable, errors: ErrorTable, constants: Constants, schema: str | None
) -> FailingMatch:
    def label_column(config_table: QueueTable | ErrorTable, name: str) -> str | None:
        constant = getattr(constants, name)
        return None if constant is not None else str(getattr(config_table, name))

    return FailingMatch(
        queue_table=_table(queue.table, schema),
        queue_labels=tuple(
            (label, label_column(queue, key))
            for label, key in zip(_SERIES, ("object_type", "operation", "direction"), strict=True)
        ),
        queue_record_id=queue.record_id,
        queue_enqueued_at=queue.enqueued_at,
        queue_object=label_column(queue, "object_type"),
        queue_filter=queue.filter,
        errors_table=_table(errors.table, schema),
        errors_id=errors.id,
        errors_record_id=errors.record_id,
        errors_failed_at=errors.failed_at,
        errors_object=label_column(errors, "object_type"),
        errors_code=errors.error_message if errors.error_code is None else errors.error_code,
        code_from_message=errors.error_code is None,
        errors_filter=errors.filter,
    )


def _sources(name: str, archive: str | None, schema: str | None) -> tuple[TableClause, ...]:
    if archive is None:
        return (_table(name, schema),)
    return (_table(name, schema), _table(archive, schema))
