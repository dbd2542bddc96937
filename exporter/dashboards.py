"""Grafana dashboards generated from the configuration, so that their SQL fits the mapping."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.dialects.mysql.base import MySQLDialect
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import Dialect, make_url

from exporter.config import ConfigError, StoreConfig, load_config

Json = dict[str, Any]
SqlDialect = Literal["postgresql", "mysql"]

UIDS = {
    "status": "crmsync-status",
    "object": "crmsync-object",
    "errors": "crmsync-errors",
    "capacity": "crmsync-capacity",
}
TAG = "crmsync"
PROMETHEUS_UID = "crmsync-prometheus"
STORE_UID = "crmsync-store"
# Grafana's plugin ids of its built-in SQL datasources.
SQL_PLUGIN: dict[SqlDialect, str] = {
    "postgresql": "grafana-postgresql-datasource",
    "mysql": "mysql",
}
# Upper bounds of crmsync_sync_latency_seconds (exporter.tally.LATENCY_BUCKETS), as `le` text.
LATENCY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)

_PROMETHEUS_DS = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Options:
    """Choices that are not part of the store mapping."""

    dialect: SqlDialect = "postgresql"
    page_size: int = 500
    oldest_per_operation: int = 5
    latency_objective: int = 1800
    latency_target: float = 0.99
    prometheus_uid: str = PROMETHEUS_UID
    store_uid: str = STORE_UID


# --- SQL -----------------------------------------------------------------------------------
#
# Nothing a person types or a URL carries reaches the SQL as SQL text. Every variable is
# interpolated with Grafana's `queryparam` (or `percentencode`) format, whose output consists
# of [A-Za-z0-9-_.~%=&] only, and the query percent-decodes it itself. Grafana's `sqlstring`
# format is not used: it doubles single quotes but leaves backslashes alone, so on MySQL and
# MariaDB (backslash escapes on by default) a value such as \' ends the string literal.


@dataclass(frozen=True)
class _Sql:
    """Quoting and the few functions that differ between PostgreSQL and MySQL/MariaDB."""

    name: SqlDialect
    dialect: Dialect

    def ident(self, name: str) -> str:
        schema, _, bare = name.rpartition(".")
        quoted = self.dialect.identifier_preparer.quote(bare)
        if schema:
            return f"{self.dialect.identifier_preparer.quote_schema(schema)}.{quoted}"
        return quoted

    def literal(self, value: str) -> str:
        escaped = value.replace("'", "''")
        if self.name == "mysql":
            escaped = escaped.replace("\\", "\\\\")
        return f"'{escaped}'"

    def alias(self, name: str) -> str:
        return f'"{name}"' if self.name == "postgresql" else f"`{name}`"

    def contains(self, haystack: str, needle: str) -> str:
        """Case-insensitive substring test; ``needle`` is already lower-case."""
        if self.name == "postgresql":
            return f"strpos(lower({haystack}), {needle}) > 0"
        # Bytes, so that the column's collation and the parameter's never have to agree.
        return f"LOCATE(CAST({needle} AS BINARY), CAST(LOWER({haystack}) AS BINARY)) > 0"

    def same(self, left: str, right: str) -> str:
        if self.name == "postgresql":
            return f"{left} = {right}"
        return f"CAST({left} AS BINARY) = CAST({right} AS BINARY)"


def _sql(dialect: SqlDialect) -> _Sql:
    if dialect == "postgresql":
        return _Sql("postgresql", PGDialect())  # type: ignore[no-untyped-call]
    return _Sql("mysql", MySQLDialect())


def _params_cte(sql: _Sql, variables: Sequence[str]) -> str:
    """A CTE ``params(variable, value)``: the decoded values of the dashboard's variables.

    ``variable`` is ``var-<name>``; a multi-value variable gives one row per selected value,
    ``All`` when "All" is selected.
    """
    query = "&".join(f"${{{name}:queryparam}}" for name in variables)
    if sql.name == "postgresql":
        return (
            "params (variable, value) AS (\n"
            "  SELECT split_part(item, '=', 1),\n"
            "    convert_from(coalesce((\n"
            "      SELECT string_agg(CASE WHEN left(m[1], 1) = '%'\n"
            "          THEN decode(substr(m[1], 2), 'hex') ELSE convert_to(m[1], 'UTF8') END,\n"
            "        ''::bytea ORDER BY n)\n"
            "      FROM regexp_matches(substr(item, strpos(item, '=') + 1),\n"
            "        '%[0-9A-Fa-f]{2}|[^%]', 'g') WITH ORDINALITY AS t (m, n)\n"
            "    ), ''::bytea), 'UTF8')\n"
            f"  FROM unnest(string_to_array('{query}', '&')) AS item\n"
            "  WHERE item <> ''\n"
            ")"
        )
    return (
        "query_string (n, item, rest) AS (\n"
        f"  SELECT 0, CAST('' AS CHAR(4000)), CONCAT('{query}', '&')\n"
        "  UNION ALL\n"
        "  SELECT n + 1, SUBSTRING(rest, 1, LOCATE('&', rest) - 1),\n"
        "    SUBSTRING(rest, LOCATE('&', rest) + 1)\n"
        "  FROM query_string WHERE rest <> ''\n"
        "),\n"
        "query_char (n, item, p) AS (\n"
        "  SELECT n, item, LOCATE('=', item) + 1 FROM query_string\n"
        "  WHERE LOCATE('=', item) > 0\n"
        "  UNION ALL\n"
        "  SELECT n, item, p + 1 FROM query_char WHERE p < CHAR_LENGTH(item)\n"
        "),\n"
        "params (variable, value) AS (\n"
        "  SELECT SUBSTRING_INDEX(item, '=', 1),\n"
        "    CONVERT(UNHEX(GROUP_CONCAT(CASE\n"
        "      WHEN p > CHAR_LENGTH(item) THEN ''\n"
        "      WHEN SUBSTRING(item, p, 1) = '%' THEN SUBSTRING(item, p + 1, 2)\n"
        "      WHEN SUBSTRING(item, p - 1, 1) = '%' OR SUBSTRING(item, p - 2, 1) = '%' THEN ''\n"
        "      ELSE HEX(SUBSTRING(item, p, 1)) END ORDER BY p SEPARATOR '')) USING utf8mb4)\n"
        "  FROM query_char GROUP BY n, item\n"
        ")"
    )


def _with(sql: _Sql, ctes: Sequence[str]) -> str:
    keyword = "WITH RECURSIVE" if sql.name == "mysql" else "WITH"
    return f"{keyword}\n" + ",\n".join(ctes)


def _selected(sql: _Sql, variable: str, label: str) -> str:
    """``label`` is among the values selected in ``variable`` (or All is selected)."""
    return (
        f"EXISTS (SELECT 1 FROM params WHERE params.variable = 'var-{variable}'\n"
        f"    AND (params.value = 'All' OR {sql.same('params.value', label)}))"
    )


def _search_cte() -> str:
    return (
        "search_for (needle) AS (\n"
        "  SELECT lower(coalesce(max(CASE WHEN variable = 'var-search' THEN value END), ''))\n"
        "  FROM params\n"
        ")"
    )


@dataclass(frozen=True)
class _Source:
    """Where one kind of row lives and how its columns become the metrics' label values."""

    table: str
    where: str | None
    columns: Mapping[str, str]


class StoreSql:
    """The dashboards' SQL for one store's mapping, in one dialect."""

    def __init__(self, store: StoreConfig, dialect: SqlDialect) -> None:
        self.store = store
        self.sql = _sql(dialect)
        mapping = store.mapping
        statuses = mapping.status_values
        single = mapping.single_table
        if single is None:
            self.errors = _Source(
                mapping.errors.table,
                None,
                {
                    "id": mapping.errors.id,
                    "time": mapping.errors.failed_at,
                    "object": mapping.errors.object_type,
                    "record_id": mapping.errors.record_id,
                    "record_name": mapping.errors.record_name,
                    "operation": mapping.errors.operation,
                    "direction": mapping.errors.direction,
                    "error_code": mapping.errors.error_code,
                    "error_message": mapping.errors.error_message,
                },
            )
            self.queue = _Source(
                mapping.queue.table,
                None,
                {
                    "time": mapping.queue.enqueued_at,
                    "object": mapping.queue.object_type,
                    "record_id": mapping.queue.record_id,
                    "operation": mapping.queue.operation,
                    "direction": mapping.queue.direction,
                },
            )
        else:
            status = self.sql.ident(single.status)
            self.errors = _Source(
                single.table,
                f"{status} IN ({self._list(statuses.failed)})",
                {
                    "id": single.id,
                    "time": single.failed_at,
                    "object": single.object_type,
                    "record_id": single.record_id,
                    "record_name": single.record_name,
                    "operation": single.operation,
                    "direction": single.direction,
                    "error_code": single.error_code,
                    "error_message": single.error_message,
                },
            )
            self.queue = _Source(
                single.table,
                f"{status} IN ({self._list(statuses.pending)})",
                {
                    "time": single.enqueued_at,
                    "object": single.object_type,
                    "record_id": single.record_id,
                    "operation": single.operation,
                    "direction": single.direction,
                },
            )

    def _list(self, values: Iterable[str]) -> str:
        return ", ".join(self.sql.literal(value) for value in values)

    def _mapped(self, column: str, mapping: Mapping[str, Sequence[str]]) -> str:
        """The exporter's label value of a mapped column (operation, direction)."""
        raw = f"lower(trim({column}))"
        branches = "".join(
            f"\n      WHEN {raw} IN ({self._list(value.lower() for value in values)})"
            f" THEN {self.sql.literal(label)}"
            for label, values in mapping.items()
        )
        return f"CASE{branches}\n      ELSE 'other' END"

    def _labelled(self, source: _Source, extra: Sequence[str]) -> str:
        """A subquery of ``source`` with label columns computed as the exporter computes them."""
        sql = self.sql
        c = {key: sql.ident(name) for key, name in source.columns.items()}
        fields = [
            f"{c['time']} AS {sql.alias('time')}",
            f"lower(trim({c['object']})) AS object",
            f"{c['record_id']} AS record_id",
            f"{self._mapped(c['operation'], self.store.operations)} AS operation",
            f"{self._mapped(c['direction'], self.store.directions)} AS direction",
            *extra,
        ]
        return ",\n    ".join(fields)

    def failed_records(self, page_size: int) -> str:
        """The errors browser: failed attempts in the time range, filtered, newest first."""
        sql = self.sql
        source = self.errors
        c = {key: sql.ident(name) for key, name in source.columns.items()}
        where = [f"$__timeFilter({c['time']})"] + ([source.where] if source.where else [])
        fields = self._labelled(
            source,
            [
                f"{c['record_name']} AS record_name",
                f"trim({c['error_code']}) AS error_code",
                f"{c['error_message']} AS error_message",
                f"{c['id']} AS id",
            ],
        )
        return (
            _with(sql, [_params_cte(sql, _ERROR_FILTERS), _search_cte()])
            + "\nSELECT f.time, f.object, f.record_id, f.record_name, f.operation, f.direction,"
            "\n  f.error_code, f.error_message"
            f"\nFROM (\n  SELECT\n    {fields}\n  FROM {sql.ident(source.table)}"
            f"\n  WHERE {' AND '.join(where)}\n) AS f CROSS JOIN search_for"
            f"\nWHERE {self._error_filters()}"
            "\nORDER BY f.time DESC, f.id DESC"
            f"\nLIMIT {int(page_size)}"
        )

    def failed_count(self) -> str:
        """How many failed attempts match the errors browser's filters (it shows a page)."""
        sql = self.sql
        source = self.errors
        c = {key: sql.ident(name) for key, name in source.columns.items()}
        where = [f"$__timeFilter({c['time']})"] + ([source.where] if source.where else [])
        fields = self._labelled(
            source,
            [
                f"{c['record_name']} AS record_name",
                f"trim({c['error_code']}) AS error_code",
                f"{c['error_message']} AS error_message",
            ],
        )
        return (
            _with(sql, [_params_cte(sql, _ERROR_FILTERS), _search_cte()])
            + f"\nSELECT count(*) AS {sql.alias('matching failed records')}"
            f"\nFROM (\n  SELECT\n    {fields}\n  FROM {sql.ident(source.table)}"
            f"\n  WHERE {' AND '.join(where)}\n) AS f CROSS JOIN search_for"
            f"\nWHERE {self._error_filters()}"
        )

    def _error_filters(self) -> str:
        sql = self.sql
        search = "\n    OR ".join(
            sql.contains(f"coalesce(f.{column}, '')", "search_for.needle")
            for column in ("record_id", "record_name", "error_code", "error_message")
        )
        return "\n  AND ".join(
            [
                _selected(sql, "object", "f.object"),
                _selected(sql, "operation", "f.operation"),
                _selected(sql, "direction", "f.direction"),
                _selected(sql, "error_code", "f.error_code"),
                f"(search_for.needle = ''\n    OR {search})",
            ]
        )

    def oldest_pending(self, per_operation: int) -> str:
        """The oldest waiting changes of one object, the first few of each operation."""
        sql = self.sql
        source = self.queue
        c = {key: sql.ident(name) for key, name in source.columns.items()}
        fields = self._labelled(source, [])
        where = f"\n  WHERE {source.where}" if source.where else ""
        if sql.name == "postgresql":
            age = f"extract(epoch from (now() AT TIME ZONE 'UTC') - {c['time']})"
        else:
            age = f"TIMESTAMPDIFF(MICROSECOND, {c['time']}, UTC_TIMESTAMP(6)) / 1e6"
        parts = []
        for operation in self.store.operations:
            parts.append(
                "  (SELECT q.time, q.record_id, q.operation, q.direction, q.age\n"
                f"   FROM q\n   WHERE q.operation = {sql.literal(operation)}\n"
                f"     AND {_selected(sql, 'object', 'q.object')}\n"
                f"     AND {_selected(sql, 'direction', 'q.direction')}\n"
                f"   ORDER BY q.time\n   LIMIT {int(per_operation)})"
            )
        queue = (
            f"q AS (\n  SELECT\n    {fields},\n    {age} AS age\n"
            f"  FROM {sql.ident(source.table)}{where}\n)"
        )
        return (
            _with(sql, [_params_cte(sql, ["object", "direction"]), queue])
            + "\nSELECT p.time AS enqueued_at, p.record_id, p.operation, p.direction,"
            f" p.age AS {sql.alias('age')}\nFROM (\n"
            + "\n  UNION ALL\n".join(parts)
            + "\n) AS p\nORDER BY p.time"
        )


_ERROR_FILTERS = ["object", "operation", "direction", "error_code", "search"]


# --- Grafana building blocks ----------------------------------------------------------------


def _grid(x: int, y: int, w: int, h: int) -> Json:
    return {"x": x, "y": y, "w": w, "h": h}


def _prom(
    expr: str, ref: str, legend: str = "", instant: bool = False, table: bool = False
) -> Json:
    target: Json = {
        "datasource": dict(_PROMETHEUS_DS),
        "editorMode": "code",
        "expr": expr,
        "refId": ref,
    }
    if legend:
        target["legendFormat"] = legend
    if instant:
        target["instant"] = True
        target["range"] = False
    else:
        target["range"] = True
    if table:
        target["format"] = "table"
    return target


def _sql_target(sql_text: str, ref: str = "A", plugin: str = "") -> Json:
    return {
        "datasource": {"type": plugin, "uid": "${store_datasource}"},
        "editorMode": "code",
        "format": "table",
        "rawQuery": True,
        "rawSql": sql_text,
        "refId": ref,
    }


def _panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    grid: Json,
    targets: Sequence[Json],
    *,
    datasource: Json | None = None,
    options: Json | None = None,
    custom: Json | None = None,
    overrides: Sequence[Json] = (),
    thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),),
    mappings: Sequence[Json] = (),
    links: Sequence[Json] = (),
    transformations: Sequence[Json] = (),
    decimals: int | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Json:
    defaults: Json = {
        "unit": unit,
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in thresholds],
        },
        "mappings": list(mappings),
    }
    if custom is not None:
        defaults["custom"] = custom
    if links:
        defaults["links"] = list(links)
    if decimals is not None:
        defaults["decimals"] = decimals
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    panel: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "gridPos": grid,
        "datasource": datasource if datasource is not None else dict(_PROMETHEUS_DS),
        "targets": list(targets),
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": options or {},
    }
    if transformations:
        panel["transformations"] = list(transformations)
    return panel


def _timeseries(
    title: str,
    description: str,
    unit: str,
    grid: Json,
    targets: Sequence[Json],
    *,
    stack: bool = False,
    thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),),
    threshold_line: bool = False,
    links: Sequence[Json] = (),
    minimum: float | None = None,
    maximum: float | None = None,
) -> Json:
    custom: Json = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 25 if stack else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if threshold_line else "off"},
    }
    return _panel(
        "timeseries",
        title,
        description,
        unit,
        grid,
        targets,
        custom=custom,
        thresholds=thresholds,
        links=links,
        minimum=minimum,
        maximum=maximum,
        options={
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def _stat(
    title: str,
    description: str,
    unit: str,
    grid: Json,
    targets: Sequence[Json],
    *,
    thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),),
    mappings: Sequence[Json] = (),
    datasource: Json | None = None,
    decimals: int | None = None,
) -> Json:
    return _panel(
        "stat",
        title,
        description,
        unit,
        grid,
        targets,
        datasource=datasource,
        thresholds=thresholds,
        mappings=mappings,
        decimals=decimals,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    )


def _override(field: str, properties: Mapping[str, Any]) -> Json:
    return {
        "matcher": {"id": "byName", "options": field},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def _link(title: str, uid: str, query: str) -> Json:
    return {"title": title, "url": f"/d/{uid}?{query}&${{__url_time_range}}"}


def _datasource_variable(name: str, label: str, plugin: str, uid: str) -> Json:
    return {
        "type": "datasource",
        "name": name,
        "label": label,
        "query": plugin,
        "current": {"text": uid, "value": uid},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def _query_variable(
    name: str,
    label: str,
    query: str,
    *,
    multi: bool,
    all_value: bool,
    description: str,
) -> Json:
    variable: Json = {
        "type": "query",
        "name": name,
        "label": label,
        "description": description,
        "datasource": dict(_PROMETHEUS_DS),
        "definition": query,
        "query": {
            "qryType": 1,
            "query": query,
            "refId": "PrometheusVariableQueryEditor-VariableQuery",
        },
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": all_value,
        "current": {"text": ["All"], "value": ["$__all"]} if all_value else {},
        "hide": 0,
        "regex": "",
        "options": [],
    }
    if all_value:
        # Matches every value in PromQL; SQL sees "All" (the queryparam format of this value).
        variable["allValue"] = ".*"
    return variable


def _custom_variable(
    name: str, label: str, options: Sequence[tuple[str, str]], description: str
) -> Json:
    text, value = options[0]
    return {
        "type": "custom",
        "name": name,
        "label": label,
        "description": description,
        "query": ",".join(f"{t} : {v}" for t, v in options),
        "current": {"text": text, "value": value},
        "options": [
            {"text": t, "value": v, "selected": index == 0} for index, (t, v) in enumerate(options)
        ],
        "multi": False,
        "includeAll": False,
        "hide": 0,
    }


def _textbox_variable(name: str, label: str, description: str) -> Json:
    return {
        "type": "textbox",
        "name": name,
        "label": label,
        "description": description,
        "query": "",
        "current": {"text": "", "value": ""},
        "options": [],
        "hide": 0,
    }


def _dashboard(
    uid: str, title: str, description: str, variables: Sequence[Json], panels: Sequence[Json]
) -> Json:
    numbered = []
    for index, panel in enumerate(panels, start=1):
        numbered.append({"id": index, **panel})
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc",
        "links": [
            {
                "type": "dashboards",
                "title": "CRM sync",
                "tags": [TAG],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "targetBlank": False,
                "icon": "external link",
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": list(variables)},
        "annotations": {"list": []},
        "panels": numbered,
    }


# --- the dashboards -------------------------------------------------------------------------


class _Builder:
    def __init__(self, store: StoreConfig, options: Options) -> None:
        self.store = store
        self.options = options
        self.sql = StoreSql(store, options.dialect)
        self.plugin = SQL_PLUGIN[options.dialect]
        self.operations = list(store.operations)

    # variables

    def datasource(self) -> Json:
        return _datasource_variable(
            "datasource", "Prometheus", "prometheus", self.options.prometheus_uid
        )

    def store_datasource(self) -> Json:
        return _datasource_variable(
            "store_datasource", "Sync store", self.plugin, self.options.store_uid
        )

    def store_variable(self) -> Json:
        return _query_variable(
            "store",
            "Store",
            "label_values(crmsync_up, store)",
            multi=False,
            all_value=False,
            description="The configured sync store (the exporter's store name).",
        )

    def label_variable(self, name: str, label: str, metric: str, *, multi: bool) -> Json:
        return _query_variable(
            name,
            label,
            f'label_values({metric}{{store="$store"}}, {name})',
            multi=multi,
            all_value=multi,
            description=f"{label} values as the exporter reports them (lower-case, mapped).",
        )

    # selectors

    @staticmethod
    def sel(*extra: str) -> str:
        return ", ".join(['store="$store"', *extra])

    def status(self) -> Json:
        view = _custom_variable(
            "view",
            "View",
            [("Backlog", "0"), ("Last hour", "1")],
            "Backlog: what waits now. Last hour: records synced in the previous full clock hour.",
        )
        variables = [
            self.datasource(),
            self.store_variable(),
            self.label_variable("direction", "Direction", "crmsync_pending_records", multi=True),
            view,
        ]
        sel = self.sel('direction=~"$direction"')
        backlog_gate = "and on () (vector($view) == 0)"
        hour_gate = "and on () (vector($view) == 1)"
        targets: list[Json] = []
        rename: dict[str, str] = {"object": "Object"}
        overrides: list[Json] = []
        for index, operation in enumerate(self.operations):
            op_sel = f'{sel}, operation="{operation}"'
            pending_ref, age_ref, na_ref = f"P{index}", f"A{index}", f"N{index}"
            targets.append(
                _prom(
                    f"sum by (object) (crmsync_pending_records{{{op_sel}}}) {backlog_gate}",
                    pending_ref,
                    instant=True,
                    table=True,
                )
            )
            targets.append(
                _prom(
                    f"max by (object) (crmsync_oldest_pending_age_seconds{{{op_sel}}})"
                    f" {backlog_gate}",
                    age_ref,
                    instant=True,
                    table=True,
                )
            )
            targets.append(
                _prom(
                    f"sum by (object) (crmsync_records_synced_last_hour{{{sel}}}) * NaN"
                    f" {hour_gate}",
                    na_ref,
                    instant=True,
                    table=True,
                )
            )
            plural = f"{operation}s"
            rename[f"Value #{pending_ref}"] = f"Pending {plural}"
            rename[f"Value #{age_ref}"] = f"Oldest pending {operation}"
            rename[f"Value #{na_ref}"] = plural.capitalize()
            overrides.append(_override(f"Pending {plural}", {"unit": "short", "decimals": 0}))
            overrides.append(
                _override(
                    f"Oldest pending {operation}",
                    {
                        "unit": "s",
                        "custom.cellOptions": {"type": "color-text"},
                        "thresholds": {
                            "mode": "absolute",
                            "steps": [
                                {"color": "green", "value": None},
                                {"color": "orange", "value": 900},
                                {"color": "red", "value": 3600},
                            ],
                        },
                    },
                )
            )
            overrides.append(
                _override(
                    plural.capitalize(),
                    {
                        "unit": "short",
                        "mappings": [
                            {
                                "type": "special",
                                "options": {
                                    "match": "nan",
                                    "result": {"text": "N/A", "index": 0},
                                },
                            }
                        ],
                    },
                )
            )
        targets.append(
            _prom(
                f"sum by (object) (crmsync_records_synced_last_hour{{{sel}}}) {hour_gate}",
                "H",
                instant=True,
                table=True,
            )
        )
        rename["Value #H"] = "Synced in the last full hour"
        overrides.append(
            _override("Synced in the last full hour", {"unit": "short", "decimals": 0})
        )
        overrides.append(
            _override(
                "Object",
                {
                    "links": [
                        _link(
                            "Open ${__value.raw}",
                            UIDS["object"],
                            "${datasource:queryparam}&${store:queryparam}"
                            "&${direction:queryparam}&var-object=${__value.raw}",
                        )
                    ]
                },
            )
        )
        table = _panel(
            "table",
            "Sync Status",
            "One row per object. View Backlog: changes waiting to be synced, split into "
            "inserts and updates, and the age of the oldest waiting insert and update. View "
            "Last hour: records synced in the previous full clock hour (e.g. 1:00-2:00); the "
            "insert and update columns read N/A there, as the store does not split that count. "
            "Click an object to open its details.",
            "short",
            _grid(0, 4, 24, 8),
            targets,
            custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
            overrides=overrides,
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "renameByName": rename,
                        "indexByName": {},
                    },
                },
            ],
            options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        )
        arrival = self.arrival_expr(sel, "")
        synced = f"sum (rate(crmsync_records_synced_total{{{sel}}}[$__rate_interval]))"
        panels = [
            _stat(
                "Pending changes",
                "Changes waiting in the sync queue now, all objects of the selected directions.",
                "short",
                _grid(0, 0, 6, 4),
                [_prom(f"sum (crmsync_pending_records{{{sel}}})", "A", instant=False)],
                thresholds=((None, "green"), (1000, "orange"), (10000, "red")),
                decimals=0,
            ),
            _stat(
                "Oldest pending change",
                "How long the oldest waiting change has waited, by the store's clock.",
                "s",
                _grid(6, 0, 6, 4),
                [_prom(f"max (crmsync_oldest_pending_age_seconds{{{sel}}})", "A")],
                thresholds=((None, "green"), (900, "orange"), (3600, "red")),
            ),
            _stat(
                "Synced in the last full hour",
                "Records synced in the previous full clock hour, all objects.",
                "short",
                _grid(12, 0, 6, 4),
                [_prom(f"sum (crmsync_records_synced_last_hour{{{sel}}})", "A")],
                decimals=0,
            ),
            _stat(
                "Store readable",
                "Whether the exporter's last collection from the store succeeded. When it did "
                "not, the backlog numbers are missing rather than stale.",
                "none",
                _grid(18, 0, 6, 4),
                [_prom('min (crmsync_up{store="$store"})', "A")],
                thresholds=((None, "red"), (1, "green")),
                mappings=[
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "DOWN", "index": 0},
                            "1": {"text": "UP", "index": 1},
                        },
                    }
                ],
            ),
            table,
            _timeseries(
                "Backlog over time",
                "Changes waiting in the queue, per object (stacked).",
                "short",
                _grid(0, 12, 12, 8),
                [_prom(f"sum by (object) (crmsync_pending_records{{{sel}}})", "A", "{{object}}")],
                stack=True,
                minimum=0,
            ),
            _timeseries(
                "Throughput",
                "Changes synced per second, per object (stacked).",
                "ops",
                _grid(12, 12, 12, 8),
                [
                    _prom(
                        f"sum by (object) (rate(crmsync_records_synced_total{{{sel}}}"
                        "[$__rate_interval]))",
                        "A",
                        "{{object}}",
                    )
                ],
                stack=True,
                minimum=0,
            ),
            _timeseries(
                "Arrival rate against sync rate",
                "Changes entering the queue per second (estimated: synced + failed attempts + "
                "growth of the backlog) against changes synced per second. When arrivals stay "
                "above the sync rate the backlog grows.",
                "ops",
                _grid(0, 20, 12, 8),
                [_prom(arrival, "A", "arriving"), _prom(synced, "B", "synced")],
                minimum=0,
            ),
            _timeseries(
                "Time to drain the backlog",
                "How long the backlog of each object would take to reach zero at the rate it "
                "has shrunk over the last 15 minutes; 0 when nothing waits, no value while it "
                "does not shrink.",
                "s",
                _grid(12, 20, 12, 8),
                [
                    _prom(
                        f"(sum by (object) (crmsync_pending_records{{{sel}}}) > 0)"
                        f" / (-sum by (object) (deriv(crmsync_pending_records{{{sel}}}[15m])) > 0)"
                        f" or sum by (object) (crmsync_pending_records{{{sel}}}) == 0",
                        "A",
                        "{{object}}",
                    )
                ],
                minimum=0,
            ),
        ]
        return _dashboard(
            UIDS["status"],
            "CRM sync / Sync Status",
            "The Sync Status tab: backlog and oldest pending change per object, throughput.",
            variables,
            panels,
        )

    def arrival_expr(self, sel: str, by: str) -> str:
        group = f"by ({by}) " if by else ""
        synced = f"sum {group}(rate(crmsync_records_synced_total{{{sel}}}[$__rate_interval]))"
        errors = f"sum {group}(rate(crmsync_sync_errors_total{{{sel}}}[$__rate_interval]))"
        growth = f"sum {group}(deriv(crmsync_pending_records{{{sel}}}[$__rate_interval]))"
        return f"clamp_min({synced} + ({errors} or 0 * {synced}) + {growth}, 0)"

    def object(self) -> Json:
        variables = [
            self.datasource(),
            self.store_datasource(),
            self.store_variable(),
            self.label_variable("object", "Object", "crmsync_pending_records", multi=False),
            self.label_variable("direction", "Direction", "crmsync_pending_records", multi=True),
        ]
        sel = self.sel('object="$object"', 'direction=~"$direction"')
        panels: list[Json] = []
        width = 24 // (2 * len(self.operations)) if len(self.operations) <= 6 else 4
        x = 0
        for operation in self.operations:
            op_sel = f'{sel}, operation="{operation}"'
            panels.append(
                _stat(
                    f"Pending {operation}s",
                    f"{operation.capitalize()} changes of this object waiting to be synced.",
                    "short",
                    _grid(x % 24, (x // 24) * 4, width, 4),
                    [_prom(f"sum (crmsync_pending_records{{{op_sel}}})", "A")],
                    decimals=0,
                )
            )
            x += width
            panels.append(
                _stat(
                    f"Oldest pending {operation}",
                    f"Age of the oldest waiting {operation} of this object.",
                    "s",
                    _grid(x % 24, (x // 24) * 4, width, 4),
                    [_prom(f"max (crmsync_oldest_pending_age_seconds{{{op_sel}}})", "A")],
                    thresholds=((None, "green"), (900, "orange"), (3600, "red")),
                )
            )
            x += width
        top = ((x + 23) // 24) * 4
        per = self.options.oldest_per_operation
        panels += [
            _timeseries(
                "Backlog by operation",
                "Waiting changes of this object, inserts and updates stacked.",
                "short",
                _grid(0, top, 12, 8),
                [
                    _prom(
                        f"sum by (operation) (crmsync_pending_records{{{sel}}})",
                        "A",
                        "{{operation}}",
                    )
                ],
                stack=True,
                minimum=0,
            ),
            _panel(
                "table",
                "Oldest pending records",
                f"The {per} oldest waiting changes of each operation, read from the store: "
                "record id, when it entered the queue and how long it has waited.",
                "short",
                _grid(12, top, 12, 8),
                [_sql_target(self.sql.oldest_pending(per), plugin=self.plugin)],
                datasource={"type": self.plugin, "uid": "${store_datasource}"},
                custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
                overrides=[
                    _override("age", {"unit": "s"}),
                    _override("enqueued_at", {"unit": "dateTimeAsIso"}),
                ],
                options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
            ),
            _timeseries(
                "Sync latency percentiles",
                "Time from enqueue to sync of the changes synced in each interval: median, 90th "
                "and 99th percentile (estimated from the histogram buckets).",
                "s",
                _grid(0, top + 8, 12, 8),
                [
                    _prom(
                        f"histogram_quantile({q}, sum by (le) (rate("
                        f"crmsync_sync_latency_seconds_bucket{{{sel}}}[$__rate_interval])))",
                        ref,
                        f"p{int(q * 100)}",
                    )
                    for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
                ],
                minimum=0,
            ),
            _timeseries(
                "Throughput by operation",
                "Changes of this object synced per second, by operation.",
                "ops",
                _grid(12, top + 8, 12, 8),
                [
                    _prom(
                        f"sum by (operation) (rate(crmsync_records_synced_total{{{sel}}}"
                        "[$__rate_interval]))",
                        "A",
                        "{{operation}}",
                    )
                ],
                stack=True,
                minimum=0,
            ),
            _timeseries(
                "Arrival rate against sync rate",
                "Changes of this object entering the queue per second (estimated) against "
                "changes synced per second.",
                "ops",
                _grid(0, top + 16, 12, 8),
                [
                    _prom(self.arrival_expr(sel, ""), "A", "arriving"),
                    _prom(
                        f"sum (rate(crmsync_records_synced_total{{{sel}}}[$__rate_interval]))",
                        "B",
                        "synced",
                    ),
                ],
                minimum=0,
            ),
            _timeseries(
                "Failed attempts by error code",
                "Failed sync attempts of this object per second, by error code. Click a series "
                "to browse those failures.",
                "ops",
                _grid(12, top + 16, 12, 8),
                [
                    _prom(
                        f"sum by (error_code) (rate(crmsync_sync_errors_total{{{sel}}}"
                        "[$__rate_interval]))",
                        "A",
                        "{{error_code}}",
                    )
                ],
                stack=True,
                minimum=0,
                links=[
                    _link(
                        "Browse these failures",
                        UIDS["errors"],
                        "${datasource:queryparam}&${store_datasource:queryparam}"
                        "&${store:queryparam}&${object:queryparam}&${direction:queryparam}"
                        "&var-error_code=${__field.labels.error_code}",
                    )
                ],
            ),
        ]
        return _dashboard(
            UIDS["object"],
            "CRM sync / Object detail",
            "One object: backlog by operation, the oldest waiting records, latency, throughput.",
            variables,
            panels,
        )

    def errors(self) -> Json:
        variables = [
            self.datasource(),
            self.store_datasource(),
            self.store_variable(),
            self.label_variable("object", "Object", "crmsync_pending_records", multi=True),
            self.label_variable("operation", "Operation", "crmsync_pending_records", multi=True),
            self.label_variable("direction", "Direction", "crmsync_pending_records", multi=True),
            self.label_variable(
                "error_code", "Error code", "crmsync_sync_errors_total", multi=True
            ),
            _textbox_variable(
                "search",
                "Search",
                "Free text looked for in the record id, the record name, the error code and the "
                "error message (case-insensitive).",
            ),
        ]
        sel = self.sel(
            'object=~"$object"',
            'operation=~"$operation"',
            'direction=~"$direction"',
            'error_code=~"$error_code"',
        )
        synced_sel = self.sel(
            'object=~"$object"', 'operation=~"$operation"', 'direction=~"$direction"'
        )
        rate = f"rate(crmsync_sync_errors_total{{{sel}}}[$__rate_interval])"
        sql_ds = {"type": self.plugin, "uid": "${store_datasource}"}
        object_link = _link(
            "Open ${__field.labels.object}",
            UIDS["object"],
            "${datasource:queryparam}&${store_datasource:queryparam}&${store:queryparam}"
            "&var-object=${__field.labels.object}",
        )
        by_panels = [
            _timeseries(
                f"Failed attempts by {label}",
                f"Failed sync attempts per second, by {label}."
                + (" Click a series to open that object." if name == "object" else ""),
                "ops",
                _grid(x, y, 12, 7),
                [_prom(f"sum by ({name}) ({rate})", "A", f"{{{{{name}}}}}")],
                stack=True,
                minimum=0,
                links=[object_link] if name == "object" else (),
            )
            for name, label, x, y in (
                ("error_code", "error code", 0, 4),
                ("object", "object", 12, 4),
                ("operation", "operation", 0, 11),
                ("direction", "direction", 12, 11),
            )
        ]
        panels = [
            _stat(
                "Failed attempts",
                "Failed sync attempts in the selected time range, all selected filters.",
                "short",
                _grid(0, 0, 6, 4),
                [
                    _prom(
                        f"sum (increase(crmsync_sync_errors_total{{{sel}}}[$__range]))",
                        "A",
                        instant=True,
                    )
                ],
                decimals=0,
            ),
            _stat(
                "Error ratio",
                "Failed attempts as a share of all attempts (failed + synced) in the selected "
                "time range.",
                "percentunit",
                _grid(6, 0, 6, 4),
                [
                    _prom(
                        f"sum (increase(crmsync_sync_errors_total{{{sel}}}[$__range])) / ("
                        f"sum (increase(crmsync_sync_errors_total{{{sel}}}[$__range])) + "
                        f"sum (increase(crmsync_records_synced_total{{{synced_sel}}}[$__range])))",
                        "A",
                        instant=True,
                    )
                ],
                thresholds=((None, "green"), (0.05, "orange"), (0.25, "red")),
            ),
            _stat(
                "Matching failed records",
                "Failed attempts in the store matching the time range, the filters and the "
                f"search. The table below shows the newest {self.options.page_size} of them.",
                "short",
                _grid(12, 0, 6, 4),
                [_sql_target(self.sql.failed_count(), plugin=self.plugin)],
                datasource=sql_ds,
                decimals=0,
            ),
            _stat(
                "Error codes",
                "Distinct error codes seen in the selected time range.",
                "short",
                _grid(18, 0, 6, 4),
                [
                    _prom(
                        f"count (sum by (error_code) (increase(crmsync_sync_errors_total{{{sel}}}"
                        "[$__range])) > 0)",
                        "A",
                        instant=True,
                    )
                ],
                decimals=0,
            ),
            *by_panels,
            _panel(
                "table",
                "Failed records",
                "The failed sync attempts themselves, newest first, read from the store: time, "
                "object, record id and name, operation, direction, error code and message. "
                "Narrow them with the time range, the filters and Search; export them with "
                f"the panel menu (Inspect > Data > Download CSV). At most "
                f"{self.options.page_size} rows: narrow the time range to page back.",
                "short",
                _grid(0, 18, 24, 14),
                [_sql_target(self.sql.failed_records(self.options.page_size), plugin=self.plugin)],
                datasource=sql_ds,
                custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": True},
                overrides=[
                    _override("time", {"unit": "dateTimeAsIso"}),
                    _override("error_message", {"custom.width": 480}),
                ],
                options={
                    "showHeader": True,
                    "cellHeight": "sm",
                    "footer": {
                        "show": True,
                        "enablePagination": True,
                        "reducer": ["count"],
                        "fields": ["record_id"],
                    },
                },
            ),
        ]
        return _dashboard(
            UIDS["errors"],
            "CRM sync / Sync Errors",
            "The Sync Errors tab: error rates, and the failed records to browse, search and "
            "export.",
            variables,
            panels,
        )

    def capacity(self) -> Json:
        horizon = _custom_variable(
            "horizon",
            "Forecast horizon",
            [("4h", "14400"), ("1h", "3600"), ("12h", "43200"), ("1d", "86400")],
            "How far ahead the backlog forecast looks.",
        )
        variables = [
            self.datasource(),
            self.store_variable(),
            self.label_variable("object", "Object", "crmsync_pending_records", multi=True),
            self.label_variable("direction", "Direction", "crmsync_pending_records", multi=True),
            horizon,
        ]
        sel = self.sel('object=~"$object"', 'direction=~"$direction"')
        objective = self.options.latency_objective
        target = self.options.latency_target
        sync_rate = (
            f"sum by (object) (rate(crmsync_records_synced_total{{{sel}}}[$__rate_interval]))"
        )
        within = (
            f"sum by (object) (rate(crmsync_sync_latency_seconds_bucket{{{sel}, "
            f'le=~"{objective}([.]0)?"}}[$__rate_interval]))'
            f" / sum by (object) (rate(crmsync_sync_latency_seconds_count{{{sel}}}"
            "[$__rate_interval]))"
        )
        panels = [
            _timeseries(
                "Arrival rate per object",
                "Changes entering the queue per second (estimated: synced + failed attempts + "
                "growth of the backlog). Click a series to open that object.",
                "ops",
                _grid(0, 0, 12, 8),
                [_prom(self.arrival_expr(sel, "object"), "A", "{{object}}")],
                stack=True,
                minimum=0,
                links=[
                    _link(
                        "Open ${__field.labels.object}",
                        UIDS["object"],
                        "${datasource:queryparam}&${store:queryparam}"
                        "&var-object=${__field.labels.object}",
                    )
                ],
            ),
            _timeseries(
                "Sync rate per object",
                "Changes synced per second.",
                "ops",
                _grid(12, 0, 12, 8),
                [_prom(sync_rate, "A", "{{object}}")],
                stack=True,
                minimum=0,
            ),
            _panel(
                "bargauge",
                "Peak hourly throughput",
                "The most records synced in one full clock hour within the selected time "
                "range, per object: what the sync has shown it can do.",
                "short",
                _grid(0, 8, 8, 8),
                [
                    _prom(
                        "max_over_time((sum by (object) ("
                        f"crmsync_records_synced_last_hour{{{sel}}}))[$__range:])",
                        "A",
                        "{{object}}",
                        instant=True,
                    )
                ],
                decimals=0,
                options={
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "orientation": "horizontal",
                    "displayMode": "gradient",
                    "showUnfilled": True,
                },
            ),
            _panel(
                "bargauge",
                "Headroom",
                "1 - arrival rate / peak sync rate, per object: the share of the highest sync "
                "rate seen in the time range (a lower bound of the capacity) that current "
                "arrivals leave unused. Near or below 0 the backlog can only grow.",
                "percentunit",
                _grid(8, 8, 8, 8),
                [
                    _prom(
                        f"1 - {self.arrival_expr(sel, 'object')} / max_over_time(({sync_rate})"
                        "[$__range:])",
                        "A",
                        "{{object}}",
                        instant=True,
                    )
                ],
                thresholds=((None, "red"), (0.2, "orange"), (0.5, "green")),
                minimum=-1,
                maximum=1,
                options={
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "orientation": "horizontal",
                    "displayMode": "gradient",
                    "showUnfilled": True,
                },
            ),
            _timeseries(
                "Backlog forecast",
                "Waiting changes per object now and, at the trend of the last hour, after the "
                "forecast horizon (linear extrapolation, never below 0).",
                "short",
                _grid(16, 8, 8, 8),
                [
                    _prom(
                        f"clamp_min(sum by (object) (predict_linear("
                        f"crmsync_pending_records{{{sel}}}[1h], $horizon)), 0)",
                        "A",
                        "{{object}} in ${horizon:text}",
                    ),
                    _prom(
                        f"sum by (object) (crmsync_pending_records{{{sel}}})",
                        "B",
                        "{{object}} now",
                    ),
                ],
                minimum=0,
            ),
            _timeseries(
                "Synced within the latency objective",
                f"Share of synced changes that took at most {objective}s from enqueue to sync, "
                f"against the objective of {target:.0%} (dashed line).",
                "percentunit",
                _grid(0, 16, 12, 8),
                [_prom(within, "A", "{{object}}")],
                thresholds=((None, "red"), (target, "green")),
                threshold_line=True,
                minimum=0,
                maximum=1,
            ),
            _timeseries(
                "99th percentile latency against the objective",
                f"99th percentile of the enqueue-to-sync time per object; the dashed line is "
                f"the objective of {objective}s.",
                "s",
                _grid(12, 16, 12, 8),
                [
                    _prom(
                        "histogram_quantile(0.99, sum by (object, le) (rate("
                        f"crmsync_sync_latency_seconds_bucket{{{sel}}}[$__rate_interval])))",
                        "A",
                        "{{object}}",
                    )
                ],
                thresholds=((None, "green"), (float(objective), "red")),
                threshold_line=True,
                minimum=0,
            ),
        ]
        return _dashboard(
            UIDS["capacity"],
            "CRM sync / Capacity planning",
            "Arrival against sync rates, peak throughput, headroom, backlog forecast and the "
            "latency objective.",
            variables,
            panels,
        )


def build_dashboards(store: StoreConfig, options: Options = Options()) -> dict[str, Json]:
    """The four dashboards for ``store``, keyed by file name."""
    if options.latency_objective not in LATENCY_BUCKETS:
        raise ValueError(
            f"the latency objective must be a histogram bucket bound, one of {LATENCY_BUCKETS}"
        )
    builder = _Builder(store, options)
    return {
        f"{UIDS['status']}.json": builder.status(),
        f"{UIDS['object']}.json": builder.object(),
        f"{UIDS['errors']}.json": builder.errors(),
        f"{UIDS['capacity']}.json": builder.capacity(),
    }


def render(dashboard: Json) -> str:
    """The JSON text written to disk (stable, so the committed files can be compared)."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def dialect_of(store: StoreConfig) -> SqlDialect:
    """The SQL dialect of the store's database, as Grafana's datasources speak it."""
    backend = make_url(store.url).get_backend_name()
    if backend == "postgresql":
        return "postgresql"
    if backend in ("mysql", "mariadb"):
        return "mysql"
    raise ValueError(
        f"store {store.name!r} is on {backend}; Grafana's SQL panels need PostgreSQL, MySQL or "
        "MariaDB (pass --sql-dialect to generate for one of those anyway)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="crmsync-dashboards",
        description="Generate the crmsync Grafana dashboards for the configured store's mapping.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        type=Path,
        default=Path("crmsync-exporter.yml"),
        help="the exporter's configuration file (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write the JSON to")
    parser.add_argument(
        "--store",
        default=None,
        help="the store whose mapping the SQL panels use (default: the first one)",
    )
    parser.add_argument(
        "--sql-dialect",
        dest="sql_dialect",
        choices=["postgresql", "mysql"],
        default=None,
        help="SQL of the store panels (default: from the store's URL; mysql serves MariaDB too)",
    )
    parser.add_argument(
        "--latency-objective",
        dest="latency_objective",
        type=int,
        default=Options.latency_objective,
        help="latency objective in seconds, a histogram bucket bound (default: %(default)s)",
    )
    parser.add_argument(
        "--latency-target",
        dest="latency_target",
        type=float,
        default=Options.latency_target,
        help="share of changes to sync within the objective (default: %(default)s)",
    )
    parser.add_argument(
        "--page-size",
        dest="page_size",
        type=int,
        default=Options.page_size,
        help="rows the failed-records table shows at most (default: %(default)s)",
    )
    parser.add_argument(
        "--prometheus-uid",
        dest="prometheus_uid",
        default=PROMETHEUS_UID,
        help="default Prometheus datasource uid (default: %(default)s)",
    )
    parser.add_argument(
        "--store-uid",
        dest="store_uid",
        default=STORE_UID,
        help="default store datasource uid (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config_file)
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
        return 1
    stores = {store.name: store for store in config.stores}
    name = args.store or config.stores[0].name
    if name not in stores:
        print(f"crmsync-dashboards: no store named {name!r} in {args.config_file}", file=sys.stderr)
        return 1
    store = stores[name]
    try:
        dialect = args.sql_dialect or dialect_of(store)
        options = Options(
            dialect=dialect,
            page_size=args.page_size,
            latency_objective=args.latency_objective,
            latency_target=args.latency_target,
            prometheus_uid=args.prometheus_uid,
            store_uid=args.store_uid,
        )
        dashboards = build_dashboards(store, options)
    except ValueError as error:
        print(f"crmsync-dashboards: {error}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for file_name, dashboard in dashboards.items():
        (args.out / file_name).write_text(render(dashboard), encoding="utf-8")
        print(f"{args.out / file_name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
