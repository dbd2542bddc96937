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
from typing import Literal

from exporter.config import StoreConfig

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


def _label_values(store: StoreConfig, columns: Mapping[str, str]) -> list[MappedValues]:
    """Objects, operations and directions as the label rules (exporter.labels) treat them."""
    return [
        MappedValues(
            key="objects",
            column=columns["object_type"],
            role="object",
            meaning={obj: obj for obj in store.objects},
            unmapped="itself",
            given="objects" in store.model_fields_set,
        ),
        MappedValues(
            key="operations",
            column=columns["operation"],
            role="operation",
            meaning=_label_meaning(store.operations),
            unmapped="other",
            given="operations" in store.model_fields_set,
        ),
        MappedValues(
            key="directions",
            column=columns["direction"],
            role="direction",
            meaning=_label_meaning(store.directions),
            unmapped="other",
            given="directions" in store.model_fields_set,
        ),
    ]


def _columns(
    prefix: str,
    names: Mapping[str, str | None],
    kinds: Mapping[str, ColumnKind],
    dashboards: frozenset[str],
) -> tuple[ColumnRead, ...]:
    return tuple(
        ColumnRead(
            key=f"{prefix}.{field}",
            name=name,
            kind=kinds.get(field, "value"),
            used_by="dashboards" if field in dashboards else "exporter",
        )
        for field, name in names.items()
        if name is not None
    )


_KINDS: dict[str, ColumnKind] = {
    "id": "id",
    "enqueued_at": "timestamp",
    "synced_at": "timestamp",
    "failed_at": "timestamp",
    "record_id": "text",
    "record_name": "text",
    "error_message": "text",
}
_DASHBOARDS_ONLY = frozenset({"record_id", "record_name", "error_message"})


def store_reads(store: StoreConfig) -> tuple[TableRead, ...]:
    """Every table ``store``'s layout reads, with its columns, values and index needs."""
    mapping = store.mapping
    single = mapping.single_table
    if single is not None:
        prefix = "mapping.single_table"
        names = single.model_dump()
        del names["table"]
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
                name=single.table,
                newest_first=single.id,
                columns=_columns(prefix, names, {**_KINDS, "status": "value"}, _DASHBOARDS_ONLY),
                values=(status, *_label_values(store, names)),
                indexes=(
                    IndexNeed(
                        "status", (single.status,), (), "the backlog (pending rows by status)"
                    ),
                    IndexNeed(
                        "synced_at", (single.synced_at,), (), "new syncs and the last full hour"
                    ),
                    IndexNeed("failed_at", (single.failed_at,), (), "new failures"),
                ),
            ),
        )

    queue, history, errors = mapping.queue, mapping.history, mapping.errors
    queue_names = queue.model_dump()
    del queue_names["table"]
    history_names = history.model_dump()
    del history_names["table"]
    error_names = errors.model_dump()
    del error_names["table"]
    return (
        TableRead(
            role="queue",
            key="mapping.queue.table",
            name=queue.table,
            newest_first=queue.enqueued_at,
            columns=_columns("mapping.queue", queue_names, _KINDS, _DASHBOARDS_ONLY),
            values=tuple(_label_values(store, queue_names)),
            indexes=(
                IndexNeed(
                    "backlog",
                    (queue.object_type, queue.operation, queue.direction),
                    (queue.enqueued_at,),
                    "the backlog (count and oldest enqueued_at per object, operation, direction)",
                ),
            ),
        ),
        TableRead(
            role="history",
            key="mapping.history.table",
            name=history.table,
            newest_first=history.id,
            columns=_columns("mapping.history", history_names, _KINDS, _DASHBOARDS_ONLY),
            values=tuple(_label_values(store, history_names)),
            indexes=(
                IndexNeed("id", (history.id,), (), "new rows by id"),
                IndexNeed(
                    "synced_at",
                    (history.synced_at,),
                    (),
                    "the last full hour and rows stamped in the future",
                ),
            ),
        ),
        TableRead(
            role="errors",
            key="mapping.errors.table",
            name=errors.table,
            newest_first=errors.id,
            columns=_columns("mapping.errors", error_names, _KINDS, _DASHBOARDS_ONLY),
            values=tuple(_label_values(store, error_names)),
            indexes=(
                IndexNeed("id", (errors.id,), (), "new rows by id"),
                IndexNeed(
                    "failed_at",
                    (errors.failed_at,),
                    (),
                    "rows stamped in the future, and the errors dashboard's pages",
                ),
            ),
        ),
    )
