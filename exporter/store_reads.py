"""What a store's mapping reads: tables, columns, mapped values and the indexes its queries use.

This is all the connect check (``exporter.connect_check``) and the run-time status check
(``exporter.store_values``) know of a mapping: a layout describes itself here, once, and
both follow. A new layout returns its ``TableRead``s from ``store_reads``: each table's
columns (with the configuration keys that name them), the columns whose values the
configuration maps and what each value becomes, and the indexes its queries need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from exporter.config import ErrorTable, HistoryTable, StoreConfig

ColumnKind = Literal["id", "value", "timestamp", "text"]
User = Literal["exporter", "dashboards"]
Unmapped = Literal["other", "uncounted", "itself"]
"""What becomes of a store value the mapping does not name: reported as ``other``,
counted nowhere (a status no role lists), or reported as itself (objects, up to the cap)."""


@dataclass(frozen=True)
class ColumnRead:
    """One column a layout reads, and the configuration key that names it."""

    key: str
    name: str
    kind: ColumnKind
    used_by: User = "exporter"


@dataclass(frozen=True)
class MappedValues:
    """A column whose values the configuration sorts into label values or roles."""

    key: str
    """Where the configuration says what the values mean, e.g. ``operations``."""
    column: str
    role: str
    """What the values are, in messages: ``operation``, ``direction``, ``status``, ``object``."""
    meaning: Mapping[str, str]
    """Store value (lower-cased when ``ignore_case``) -> what the exporter makes of it."""
    unmapped: Unmapped
    ignore_case: bool = True
    given: bool = True
    """False when the values are the defaults, not written in the file."""


@dataclass(frozen=True)
class IndexNeed:
    """An index a steady query needs: its leading columns, in any order, then ``then``."""

    name: str
    """A short name for the index to recommend, e.g. ``backlog``."""
    leading: tuple[str, ...]
    then: tuple[str, ...]
    why: str
    used_by: User = "exporter"

    def columns(self) -> tuple[str, ...]:
        """The columns of the index to recommend, in order."""
        return (*self.leading, *self.then)

    def met_by(self, index_columns: tuple[str, ...]) -> bool:
        width = len(self.leading)
        return set(index_columns[:width]) == set(self.leading) and (
            index_columns[width : width + len(self.then)] == self.then
        )


@dataclass(frozen=True)
class TableRead:
    """One table a layout reads, and how."""

    role: str
    key: str
    name: str
    newest_first: str
    """The column whose descending order gives the most recent rows (the recent window)."""
    columns: tuple[ColumnRead, ...]
    values: tuple[MappedValues, ...]
    indexes: tuple[IndexNeed, ...]
    naive_time_zone: str = "UTC"
    """The time zone timestamps without one are read in."""

    def column(self, name: str) -> ColumnRead | None:
        return next((column for column in self.columns if column.name == name), None)


def _label_meaning(mapping: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    return {raw.lower(): label for label, raws in mapping.items() for raw in raws}


def _label_values(store: StoreConfig, columns: Mapping[str, str | None]) -> list[MappedValues]:
    """Objects, operations and directions as the label rules (exporter.labels) treat them.

    A label given by ``mapping.constants`` has no column: nothing to read.
    """
    values = []
    for field, key, role, meaning, unmapped in (
        ("object_type", "objects", "object", {o: o for o in store.objects}, "itself"),
        ("operation", "operations", "operation", _label_meaning(store.operations), "other"),
        ("direction", "directions", "direction", _label_meaning(store.directions), "other"),
    ):
        name = columns.get(field)
        if name is not None:
            values.append(
                MappedValues(
                    key=key,
                    column=name,
                    role=role,
                    meaning=meaning,
                    unmapped=unmapped,  # type: ignore[arg-type]
                    given=key in store.model_fields_set,
                )
            )
    return values


_KINDS: dict[str, ColumnKind] = {
    "id": "id",
    "enqueued_at": "timestamp",
    "synced_at": "timestamp",
    "failed_at": "timestamp",
    "record_id": "text",
    "record_name": "text",
    "error_message": "text",
    "last_error": "text",
}
# Keys of a table's configuration that name no column of it.
_NOT_COLUMNS = frozenset({"table", "archive_table", "filter", "error_code_pattern"})


def _column_names(table_config: Any, store: StoreConfig) -> dict[str, str | None]:
    """Configuration key -> column name (None: not read) of one table's configuration."""
    names: dict[str, str | None] = {
        key: getattr(table_config, key)
        for key in type(table_config).model_fields
        if key not in _NOT_COLUMNS
    }
    constants = store.mapping.constants
    for field in ("object_type", "operation", "direction"):
        if field in names and getattr(constants, field) is not None:
            names[field] = None  # a constant label: the store has no such column
    return names


def _columns(prefix: str, table_config: Any, store: StoreConfig) -> tuple[ColumnRead, ...]:
    names = _column_names(table_config, store)
    # The message is the exporter's where the code is read from it.
    dashboards = {"record_id", "record_name"}
    if names.get("error_code", "") is not None:
        dashboards.add("error_message")
    if store.mapping.failing_from_errors:
        dashboards.discard("record_id")  # matches error rows to waiting changes
    reads = [
        ColumnRead(
            key=f"{prefix}.{field}",
            name=name,
            kind=_KINDS.get(field, "value"),
            used_by="dashboards" if field in dashboards else "exporter",
        )
        for field, name in names.items()
        if name is not None
    ]
    row_filter = getattr(table_config, "filter", None)
    if row_filter is not None:
        reads.append(ColumnRead(f"{prefix}.filter.column", row_filter.column, "value"))
    return tuple(reads)


def _qualified(name: str, store: StoreConfig) -> str:
    """A table name as the queries read it: in ``schema`` unless it names its own."""
    return name if "." in name or store.schema_ is None else f"{store.schema_}.{name}"


def _append_only_reads(
    role: str, table_config: HistoryTable | ErrorTable, store: StoreConfig, *needs: IndexNeed
) -> list[TableRead]:
    """An append-only table (history or errors) and its archive, if any, read alike: new rows
    by id, and ``needs``."""
    prefix = f"mapping.{role}"
    return [
        TableRead(
            role=role,
            key=f"{prefix}.{key}",
            name=_qualified(name, store),
            newest_first=table_config.id,
            columns=_columns(prefix, table_config, store),
            values=tuple(_label_values(store, _column_names(table_config, store))),
            indexes=(IndexNeed("id", (table_config.id,), (), "new rows by id"), *needs),
            naive_time_zone=store.naive_time_zone,
        )
        for key, name in (
            ("table", table_config.table),
            ("archive_table", table_config.archive_table),
        )
        if name is not None
    ]


def store_reads(store: StoreConfig) -> tuple[TableRead, ...]:
    """Every table ``store``'s layout reads, with its columns, values and index needs."""
    mapping = store.mapping
    single = mapping.single_table
    zone = store.naive_time_zone
    if single is not None:
        prefix = "mapping.single_table"
        statuses = mapping.status_values
        status = MappedValues(
            key="mapping.status_values",
            column=single.status,
            role="status",
            meaning={value: role for role, values in statuses for value in values},
            unmapped="uncounted",
            # Compared in SQL with `IN`: exactly on PostgreSQL, by collation on MySQL.
            ignore_case=False,
            given="status_values" in mapping.model_fields_set,
        )
        return (
            TableRead(
                role="single_table",
                key=f"{prefix}.table",
                name=_qualified(single.table, store),
                newest_first=single.id,
                columns=_columns(prefix, single, store),
                values=(status, *_label_values(store, _column_names(single, store))),
                indexes=(
                    IndexNeed(
                        "status", (single.status,), (), "the backlog (pending rows by status)"
                    ),
                    IndexNeed(
                        "synced_at", (single.synced_at,), (), "new syncs and the last full hour"
                    ),
                    IndexNeed("failed_at", (single.failed_at,), (), "new failures"),
                ),
                naive_time_zone=zone,
            ),
        )

    queue = mapping.queue
    queue_names = _column_names(queue, store)
    grouped = tuple(
        name for name in (queue_names[f] for f in ("object_type", "operation", "direction")) if name
    )
    reads = [
        TableRead(
            role="queue",
            key="mapping.queue.table",
            name=_qualified(queue.table, store),
            newest_first=queue.enqueued_at,
            columns=_columns("mapping.queue", queue, store),
            values=tuple(_label_values(store, queue_names)),
            indexes=(
                IndexNeed(
                    "backlog",
                    grouped,
                    (queue.enqueued_at,),
                    "the backlog (count and oldest enqueued_at per object, operation, direction)",
                ),
            ),
            naive_time_zone=zone,
        )
    ]
    history, errors = mapping.history, mapping.errors
    if history is not None:
        reads += _append_only_reads(
            "history",
            history,
            store,
            IndexNeed(
                "synced_at",
                (history.synced_at,),
                (),
                "the last full hour and rows stamped in the future",
            ),
        )
    if errors is not None:
        needs = [
            IndexNeed(
                "failed_at",
                (errors.failed_at,),
                (),
                "rows stamped in the future, and the errors dashboard's pages",
            )
        ]
        if mapping.failing_from_errors:
            needs.append(
                IndexNeed(
                    "failing",
                    (errors.record_id,),
                    (errors.failed_at,),
                    "the failing changes (error rows newer than their queue row)",
                )
            )
        reads += _append_only_reads("errors", errors, store, *needs)
    return tuple(reads)
