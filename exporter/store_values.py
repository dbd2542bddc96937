"""The values a store holds in its most recent rows, against what its mapping makes of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, column, func, select, table
from sqlalchemy.sql.expression import TableClause

from exporter.config import StatusValues, StoreConfig
from exporter.dialects import dialect_for
from exporter.labels import label_text
from exporter.store_reads import MappedValues, TableRead, store_reads

log = logging.getLogger(__name__)

WINDOW_ROWS = 1000
"""The recent window: this many of a table's newest rows (by its id, or enqueue time)."""
MAX_DISTINCT = 200
"""Distinct values read per column: enough to name what is unmapped, bounded whatever the data."""
STATUS_RECHECK = 600.0
"""Seconds between run-time reads of the status values once the defaults are confirmed."""


def source(name: str) -> TableClause:
    """A possibly schema-qualified table name as a FROM clause (quoted by the dialect)."""
    schema, _, bare = name.rpartition(".")
    return table(bare, schema=schema or None)


@dataclass(frozen=True)
class ValueCount:
    """One distinct value in the window and the rows that hold it."""

    value: Any
    rows: int

    def text(self) -> str:
        return "NULL" if self.value is None else repr(str(self.value))


@dataclass(frozen=True)
class Window:
    """What the newest rows of one table hold."""

    rows: int
    values: dict[str, list[ValueCount]] = field(default_factory=dict)
    """Per column, its distinct values, most frequent first."""
    newest: dict[str, float | None] = field(default_factory=dict)
    """Per timestamp column, its latest instant (Unix seconds, naive values read as UTC)."""


def read_window(
    connection: Connection,
    read: TableRead,
    value_columns: Collection[str],
    timestamp_columns: Collection[str] = (),
    rows: int = WINDOW_ROWS,
) -> Window:
    """The distinct values and latest timestamps among ``read``'s newest ``rows`` rows."""
    dialect = dialect_for(connection.dialect.name)
    wanted = sorted({*value_columns, *timestamp_columns, read.newest_first})
    window = (
        select(*(column(name) for name in wanted))
        .select_from(source(read.name))
        .order_by(column(read.newest_first).desc())
        .limit(rows)
        .subquery("w")
    )
    stats = select(
        func.count().label("rows"),
        *(
            func.max(dialect.epoch_seconds(window.c[name])).label(f"t{index}")
            for index, name in enumerate(timestamp_columns)
        ),
    ).select_from(window)
    summary = connection.execute(stats).one()
    newest = {
        name: None if summary[index + 1] is None else float(summary[index + 1])
        for index, name in enumerate(timestamp_columns)
    }
    values: dict[str, list[ValueCount]] = {}
    for name in value_columns:
        counted = func.count().label("n")
        statement = (
            select(window.c[name], counted)
            .group_by(window.c[name])
            .order_by(counted.desc())
            .limit(MAX_DISTINCT)
        )
        values[name] = [ValueCount(value, int(n)) for value, n in connection.execute(statement)]
    return Window(int(summary.rows), values, newest)


def meaning(mapped: MappedValues, raw: Any) -> str | None:
    """What the exporter makes of the store value ``raw``; None when the mapping does not say."""
    if mapped.ignore_case:
        # As the label rules read it: stripped, blank as "unknown", lower-cased.
        return mapped.meaning.get(label_text(raw, lower=True))
    return None if raw is None else mapped.meaning.get(str(raw))


def unmapped(mapped: MappedValues, seen: Sequence[ValueCount]) -> list[ValueCount]:
    """The values seen that the configuration does not name (for objects: not listed)."""
    return [value for value in seen if meaning(mapped, value.value) is None]


def default_status_values() -> dict[str, list[str]]:
    return {role: list(values) for role, values in StatusValues()}


def unconfirmed_defaults(store: StoreConfig) -> str | None:
    """Why the status-table layout's status values cannot be taken on trust, if they cannot."""
    mapping = store.mapping
    if mapping.single_table is None or "status_values" in mapping.model_fields_set:
        return None
    defaults = ", ".join(f"{role}: {values}" for role, values in default_status_values().items())
    return (
        f"not set, and the defaults ({defaults}) are used only where the store holds no "
        "other status: set mapping.status_values to the status column's values, or run "
        "--config.connect-check, which confirms the defaults when they are all the store holds"
    )


class UnconfirmedStatusValuesError(Exception):
    """The store holds status values that the default ``status_values`` do not list."""


class StatusWatch:
    """At run time: status values no role lists, logged once each, and unconfirmed defaults.

    Rows whose status no role lists are counted nowhere, and the collection cannot see them:
    only a read of the statuses themselves can. A store whose ``status_values`` are the
    defaults is read every cycle until its recent rows hold only default values (the
    collection fails meanwhile); after that, and for values set in the file, every
    ``STATUS_RECHECK`` seconds.
    """

    def __init__(self, config: StoreConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = config.name
        self._clock = clock
        reads = store_reads(config)
        self._status = next(
            ((read, mapped) for read in reads for mapped in read.values if mapped.role == "status"),
            None,
        )
        self._confirmed = self._status is None or self._status[1].given
        self._next_read = 0.0
        self._warned: set[str] = set()

    def check(self, connection: Connection) -> None:
        """Read the recent statuses when due; raise UnconfirmedStatusValuesError if needed."""
        if self._status is None or self._clock() < self._next_read:
            return
        read, mapped = self._status
        window = read_window(connection, read, [mapped.column])
        outside = unmapped(mapped, window.values[mapped.column])
        if not self._confirmed:
            if outside:
                listed = ", ".join(f"{v.text()} ({v.rows} rows)" for v in outside[:10])
                raise UnconfirmedStatusValuesError(
                    f"mapping.status_values is not set and the newest {window.rows} rows of "
                    f"{read.name} hold statuses the defaults do not list: {listed}; set "
                    "mapping.status_values (see --config.connect-check)"
                )
            if window.rows == 0:
                return  # nothing to confirm the defaults with yet, and nothing to count
            self._confirmed = True
            log.info(
                "the default status_values are confirmed by the store's recent rows",
                extra={"store": self._store, "table": read.name},
            )
        for value in outside:
            key = value.text()
            if key in self._warned:
                continue
            self._warned.add(key)
            log.warning(
                "a status value that mapping.status_values does not list: its rows are "
                "counted nowhere",
                extra={
                    "store": self._store,
                    "table": read.name,
                    "column": mapped.column,
                    "value": key,
                    "rows": value.rows,
                    "window": window.rows,
                },
            )
        self._next_read = self._clock() + STATUS_RECHECK
