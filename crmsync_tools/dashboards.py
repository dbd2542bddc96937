"""Grafana dashboards generated from the configuration, built with Grafana's typed builders."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

try:
    import grafana_foundation_sdk  # noqa: F401
except ModuleNotFoundError:  # a tool, not part of the exporter's own dependencies
    raise SystemExit(
        "crmsync-dashboards needs Grafana's foundation SDK: "
        "pip install 'crmsync-exporter[dashboards]'"
    ) from None
from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    TableFooterOptions,
    TableSortByFieldState,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    GridPos,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableHide,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode
from sqlalchemy.engine import make_url

from crmsync_tools.dashboard_sql import REPORTED_ERROR_CODES, REPORTED_OBJECTS, SqlDialect, StoreSql
from crmsync_tools.generated_files import write_generated
from exporter.arguments import command_parser, setup_logging_from
from exporter.config import ConfigError, StoreConfig, load_config
from exporter.metric_specs import LATENCY_BUCKETS

Json = dict[str, Any]

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
AGE_STEPS = ((None, "green"), (900.0, "orange"), (3600.0, "red"))

_PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every exporter (job and instance) of the chosen store, and the view's filters on top.
# `store` is single-value and matched exactly: store names hold only letters, digits and
# _.:- (exporter.config), which the Prometheus datasource leaves as they are.
_SCOPE = 'store="$store", job=~"$job", instance=~"$instance"'


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


# --- SQL queries: the SDK has no builder for Grafana's SQL datasources ------------------------


class SqlQuery(cogvariants.Dataquery):
    """A raw SQL query of Grafana's PostgreSQL or MySQL datasource, as a table."""

    def __init__(self, raw_sql: str, plugin: str, ref_id: str = "A") -> None:
        self.raw_sql = raw_sql
        self.plugin = plugin
        self.ref_id = ref_id

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": {"type": self.plugin, "uid": "${store_datasource}"},
            "editorMode": "code",
            "format": "table",
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }


class SqlQueryBuilder(cogbuilder.Builder[SqlQuery]):
    def __init__(self, raw_sql: str, plugin: str, ref_id: str = "A") -> None:
        self._query = SqlQuery(raw_sql, plugin, ref_id)

    def build(self) -> SqlQuery:
        return self._query


# --- building blocks -------------------------------------------------------------------------


def _grid(x: int, y: int, w: int, h: int) -> GridPos:
    return GridPos(x=x, y=y, w=w, h=h)


def _prom(
    expr: str,
    ref: str = "A",
    legend: str = "",
    *,
    instant: bool = False,
    table_format: bool = False,
) -> prometheus.Dataquery:
    query = (
        prometheus.Dataquery()
        .datasource(_PROMETHEUS)
        .editor_mode(QueryEditorMode.CODE)
        .expr(expr)
        .ref_id(ref)
    )
    if legend:
        query = query.legend_format(legend)
    query = query.instant() if instant else query.range()
    if table_format:
        query = query.format(PromQueryFormat.TABLE)
    return query


def _thresholds(steps: Sequence[tuple[float | None, str]]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


# Grafana 12 and later pass every data link through @braintree/sanitize-url (7.0.2 on), which
# percent-decodes the whole URL unless that fails: a %, &, # or + in a value would then reach
# the dashboard as another value. A `%` that is no escape, in the fragment (which no dashboard
# reads), makes the decoding fail and keeps the values encoded. Grafana 11.3 changes no link.
KEEP_ENCODED = "#%"


def _link(title: str, uid: str, query: str) -> Json:
    """A data link to another dashboard that keeps the time range."""
    return {"title": title, "url": f"/d/{uid}?{query}&${{__url_time_range}}{KEEP_ENCODED}"}


def _links(links: Sequence[Json]) -> DynamicConfigValue:
    return DynamicConfigValue(id_val="links", value=list(links))


def _value_text(mapping: dict[str, str]) -> ValueMap:
    return ValueMap(
        options={
            value: ValueMappingResult(text=text, index=index)
            for index, (value, text) in enumerate(mapping.items())
        }
    )


_NOT_APPLICABLE = {
    "type": "special",
    "options": {"match": "nan", "result": {"text": "N/A", "index": 0}},
}


def _timeseries(
    title: str,
    description: str,
    unit: str,
    grid: GridPos,
    targets: Sequence[prometheus.Dataquery],
    *,
    stack: bool = False,
    minimum: float | None = 0,
    maximum: float | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .grid_pos(grid)
        .datasource(_PROMETHEUS)
        .targets(list(targets))
        .line_width(1)
        .fill_opacity(25 if stack else 10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            StackingConfig().mode(common.StackingMode.NORMAL if stack else common.StackingMode.NONE)
        )
        .legend(
            VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["lastNotNull"])
        )
        .tooltip(
            VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def _stat(
    title: str,
    description: str,
    unit: str,
    grid: GridPos,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    decimals: int | None = None,
    datasource: DataSourceRef = _PROMETHEUS,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .grid_pos(grid)
        .datasource(datasource)
        .targets(list(targets))
        .thresholds(_thresholds(steps))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA)
        .text_mode(common.BigValueTextMode.AUTO)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def _table(title: str, description: str, grid: GridPos, datasource: DataSourceRef) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .unit("short")
        .grid_pos(grid)
        .datasource(datasource)
        .show_header(True)
        .cell_height(common.TableCellHeight.SM)
        .align(common.FieldTextAlignment.AUTO)
    )


class _Dashboard:
    """Collects one dashboard's variables and panels; ``json()`` renders it."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self._builder = (
            dashboard.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG])
            .editable()
            .tooltip(DashboardCursorSync.CROSSHAIR)
            .refresh("30s")
            .time("now-6h", "now")
            # The viewer's own clock: hours and times read as on the wall where they sit.
            .timezone("browser")
            .version(1)
            .link(
                dashboard.DashboardLink("CRM sync")
                .type(DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(False)
                .include_vars(True)
                .keep_time(True)
                .target_blank(False)
                .icon("external link")
                .tooltip("")
                .url("")
            )
        )

    def variable(self, variable: cogbuilder.Builder[Any]) -> Self:
        self._builder = self._builder.with_variable(variable)
        return self

    def panel(self, panel: cogbuilder.Builder[Any]) -> Self:
        self._builder = self._builder.with_panel(panel)
        return self

    def row(self, row: dashboard.Row) -> Self:
        self._builder = self._builder.with_row(row)
        return self

    def json(self) -> Json:
        built: Json = json.loads(json.dumps(self._builder.build(), cls=JSONEncoder))
        next_id = 1
        for panel in built["panels"]:
            panel["id"] = next_id
            next_id += 1
        return built


# --- variables -------------------------------------------------------------------------------


def _datasource_variable(
    name: str, label: str, plugin: str, uid: str
) -> dashboard.DatasourceVariable:
    return (
        dashboard.DatasourceVariable(name)
        .label(label)
        .type(plugin)
        .current(VariableOption(text=uid, value=uid, selected=True))
    )


def _query_variable(
    name: str,
    label: str,
    query: str,
    description: str,
    *,
    multi: bool = False,
    include_all: bool | None = None,
    regex: str = "",
    hidden: bool = False,
) -> dashboard.QueryVariable:
    """``include_all`` defaults to ``multi``: "All" is the default of a multi-value variable."""
    include_all = multi if include_all is None else include_all
    variable = (
        dashboard.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(_PROMETHEUS)
        .query(
            {
                "qryType": 3 if query.startswith("query_result(") else 1,
                "query": query,
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
            }
        )
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(include_all)
    )
    if regex:
        variable = variable.regex(regex)
    if hidden:
        variable = variable.hide(VariableHide.HIDE_VARIABLE)
    if include_all:
        variable = variable.current(VariableOption(text="All", value="$__all"))
        if not hidden:
            # Matches every value in PromQL, including series newer than the option list.
            variable = variable.all_value(".*")
    return variable


def _custom_variable(
    name: str, label: str, options: Sequence[tuple[str, str]], description: str
) -> dashboard.CustomVariable:
    text, value = options[0]
    return (
        dashboard.CustomVariable(name)
        .label(label)
        .description(description)
        .values(",".join(f"{t} : {v}" for t, v in options))
        .current(VariableOption(text=text, value=value, selected=True))
    )


def _textbox_variable(
    name: str, label: str, description: str, default: str = ""
) -> dashboard.TextBoxVariable:
    return (
        dashboard.TextBoxVariable(name)
        .label(label)
        .description(description)
        .default_value(default)
        .current(VariableOption(text=default, value=default))
    )


# --- the dashboards ---------------------------------------------------------------------------


class _Builder:
    def __init__(self, store: StoreConfig, options: Options) -> None:
        self.store = store
        self.options = options
        self.sql = StoreSql(store, options.dialect)
        self.plugin = SQL_PLUGIN[options.dialect]
        self.store_ds = DataSourceRef(type_val=self.plugin, uid="${store_datasource}")
        self.operations = list(self.sql.operations)

    # variables shared by the dashboards

    def scope(self, board: _Dashboard, *, sql: bool = False) -> None:
        """Datasources, job, instance and store: which exporter's numbers of which store."""
        board.variable(
            _datasource_variable(
                "datasource", "Prometheus", "prometheus", self.options.prometheus_uid
            )
        )
        if sql:
            board.variable(
                _datasource_variable(
                    "store_datasource", "Sync store", self.plugin, self.options.store_uid
                )
            )
        board.variable(
            _query_variable(
                "job",
                "Job",
                "label_values(crmsync_up, job)",
                "Prometheus jobs scraping a crmsync exporter.",
                multi=True,
            )
        )
        board.variable(
            _query_variable(
                "instance",
                "Instance",
                'label_values(crmsync_up{job=~"$job"}, instance)',
                "Exporter instances of the selected jobs: two exporters reading one store, or "
                "one store name in two environments, are told apart here.",
                multi=True,
            )
        )
        board.variable(
            _query_variable(
                "store",
                "Store",
                'label_values(crmsync_up{job=~"$job", instance=~"$instance"}, store)',
                "The configured sync store (the exporter's store name).",
            )
        )

    def label_variable(
        self, name: str, label: str, metric: str, *, include_all: bool = True
    ) -> dashboard.QueryVariable:
        """A label's values to choose from, several at a time.

        Multi-value, so that Grafana's Prometheus datasource writes the chosen values as a
        regex for the `=~` matchers: it escapes a single-value variable for a quoted string
        only halfway (a quote becomes \\', which PromQL reads as a backslash and a quote).
        """
        return _query_variable(
            name,
            label,
            f"label_values({metric}{{{_SCOPE}}}, {name})",
            f"{label} values as the exporter reports them (lower-case, mapped).",
            multi=True,
            include_all=include_all,
        )

    def reported(self, name: str, label: str) -> dashboard.QueryVariable:
        """Hidden: every value of ``label`` the exporter reports, for the SQL's `other`."""
        metric = (
            "crmsync_sync_errors_total"
            if label == "error_code"
            else '{__name__=~"crmsync_(pending_records|records_synced_total|sync_errors_total)"'
        )
        selector = f"{metric}{{{_SCOPE}}}" if label == "error_code" else f"{metric}, {_SCOPE}}}"
        return _query_variable(
            name,
            f"Reported {label} values",
            f"label_values({selector}, {label})",
            f"Every {label} value the exporter reports: once it reports 'other' (over its "
            "cap), the SQL panels call every store value it does not report 'other' too.",
            multi=True,
            hidden=True,
        )

    @staticmethod
    def sel(*extra: str) -> str:
        return ", ".join([_SCOPE, *extra])

    # Sync Status

    def status(self) -> Json:
        board = _Dashboard(
            UIDS["status"],
            "CRM sync / Sync Status",
            "The Sync Status tab: backlog and oldest pending change per object, the last full "
            "hour's throughput, and the exporter's own health.",
        )
        self.scope(board)
        board.variable(self.label_variable("direction", "Direction", "crmsync_pending_records"))
        board.variable(
            _custom_variable(
                "view",
                "View",
                [("Backlog", "0"), ("Last hour", "1")],
                "Backlog: what waits now. Last hour: records synced in the previous full clock "
                "hour.",
            )
        )
        start = f"max(crmsync_records_synced_last_hour_start_timestamp_seconds{{{_SCOPE}}})"
        for name, expr, label in (
            ("last_hour_start", f"{start} * 1000", "Start of the last full hour"),
            ("last_hour_end", f"({start} + 3600) * 1000", "End of the last full hour"),
        ):
            board.variable(
                _query_variable(
                    name,
                    label,
                    f"query_result({expr})",
                    f"{label} the exporter counts, in milliseconds (shown in the viewer's "
                    "time zone).",
                    regex="/} ([0-9]+)/",
                    hidden=True,
                )
            )
        hour = "${last_hour_start:date:HH:mm}-${last_hour_end:date:HH:mm}"
        sel = self.sel('direction=~"$direction"')
        board.panel(
            _stat(
                "Pending changes",
                "Changes waiting in the sync queue now, all objects of the selected directions.",
                "short",
                _grid(0, 0, 6, 4),
                [_prom(f"sum (crmsync_pending_records{{{sel}}})")],
                steps=((None, "green"), (1000, "orange"), (10000, "red")),
                decimals=0,
            )
        )
        board.panel(
            _stat(
                "Oldest pending change",
                "How long the oldest waiting change has waited, by the store's clock.",
                "s",
                _grid(6, 0, 6, 4),
                [_prom(f"max (crmsync_oldest_pending_age_seconds{{{sel}}})")],
                steps=AGE_STEPS,
            )
        )
        board.panel(
            _stat(
                f"Synced {hour}",
                "Records synced in the previous full clock hour, all objects (the hour in your "
                "time zone; the exporter counts the clock hours of its last_hour_time_zone).",
                "short",
                _grid(12, 0, 6, 4),
                [_prom(f"sum (crmsync_records_synced_last_hour{{{sel}}})")],
                decimals=0,
            )
        )
        board.panel(
            _stat(
                "Store readable",
                "Whether the exporter's last collection from the store succeeded. DOWN too when "
                "no exporter answers at all: then every other number here is missing.",
                "none",
                _grid(18, 0, 6, 4),
                [_prom(f"min (crmsync_up{{{_SCOPE}}}) or on () vector(0)")],
                steps=((None, "red"), (1, "green")),
            ).mappings([_value_text({"0": "DOWN", "1": "UP"})])
        )
        board.panel(self.status_table(sel, hour))
        board.panel(
            _timeseries(
                "Backlog over time",
                "Changes waiting in the queue, per object (stacked).",
                "short",
                _grid(0, 13, 12, 8),
                [_prom(f"sum by (object) (crmsync_pending_records{{{sel}}})", legend="{{object}}")],
                stack=True,
            )
        )
        board.panel(
            _timeseries(
                "Throughput",
                "Changes synced per second, per object (stacked).",
                "ops",
                _grid(12, 13, 12, 8),
                [
                    _prom(
                        f"sum by (object) (rate(crmsync_records_synced_total{{{sel}}}"
                        "[$__rate_interval]))",
                        legend="{{object}}",
                    )
                ],
                stack=True,
            )
        )
        board.panel(
            _timeseries(
                "Oldest pending change over time",
                "How long the oldest waiting change of each object had waited.",
                "s",
                _grid(0, 21, 12, 8),
                [
                    _prom(
                        f"max by (object) (crmsync_oldest_pending_age_seconds{{{sel}}})",
                        legend="{{object}}",
                    )
                ],
            )
        )
        board.panel(
            _timeseries(
                "Time to drain the backlog",
                "How long the backlog of each object would take to reach zero at the rate it "
                "has shrunk over the last 15 minutes; 0 when nothing waits, no value while it "
                "does not shrink.",
                "s",
                _grid(12, 21, 12, 8),
                [
                    _prom(
                        f"(sum by (object) (crmsync_pending_records{{{sel}}}) > 0)"
                        f" / (-sum by (object) (deriv(crmsync_pending_records{{{sel}}}[15m])) > 0)"
                        f" or sum by (object) (crmsync_pending_records{{{sel}}}) == 0",
                        legend="{{object}}",
                    )
                ],
            )
        )
        self.exporter_row(board, 29)
        return board.json()

    def status_table(self, sel: str, hour: str) -> table.Panel:
        """The original table: one query, pivoted, so that neither view has an empty column.

        Every cell is a series labelled with its column; ``groupingToMatrix`` turns them into
        one column per label value present. Queries that return nothing (Grafana's Prometheus
        datasource still gives them a field) cannot leave empty columns behind.
        """

        def cell(expr: str, column: str) -> str:
            return f'label_replace({expr}, "column", "{column}", "", "")'

        backlog: list[str] = []
        hour_parts: list[str] = []
        overrides: list[tuple[str, list[DynamicConfigValue]]] = []
        last_hour = f"sum by (object) (crmsync_records_synced_last_hour{{{sel}}})"
        # The exporter serves every operation of a configured object, 0 when none waits; an
        # object outside the configuration has series only for what waits: 0 for the rest too.
        none_waits = f"0 * sum by (object) (crmsync_pending_records{{{sel}}})"
        for operation in self.operations:
            op_sel = f'{sel}, operation="{operation}"'
            plural = f"{operation}s".capitalize()
            oldest = f"Oldest pending {operation}"
            backlog.append(
                cell(
                    f"sum by (object) (crmsync_pending_records{{{op_sel}}}) or {none_waits}",
                    plural,
                )
            )
            backlog.append(
                cell(
                    f"max by (object) (crmsync_oldest_pending_age_seconds{{{op_sel}}})"
                    f" or {none_waits}",
                    oldest,
                )
            )
            # The store does not split the hour's count by operation: "not applicable".
            hour_parts.append(cell(f"{last_hour} * NaN", plural))
            overrides.append(
                (
                    plural,
                    [
                        DynamicConfigValue(id_val="decimals", value=0),
                        DynamicConfigValue(id_val="mappings", value=[_NOT_APPLICABLE]),
                    ],
                )
            )
            overrides.append(
                (
                    oldest,
                    [
                        DynamicConfigValue(id_val="unit", value="s"),
                        DynamicConfigValue(
                            id_val="custom.cellOptions", value={"type": "color-text"}
                        ),
                        DynamicConfigValue(
                            id_val="thresholds",
                            value={
                                "mode": "absolute",
                                "steps": [{"color": c, "value": v} for v, c in AGE_STEPS],
                            },
                        ),
                    ],
                )
            )
        synced = "Synced in the last full hour"
        hour_parts.append(cell(last_hour, synced))
        overrides.append(
            (
                synced,
                [
                    DynamicConfigValue(id_val="displayName", value=f"Synced {hour}"),
                    DynamicConfigValue(id_val="decimals", value=0),
                ],
            )
        )
        expr = (
            "(\n  "
            + "\n  or ".join(backlog)
            + "\n) and on () (vector($view) == 0)\nor (\n  "
            + "\n  or ".join(hour_parts)
            + "\n) and on () (vector($view) == 1)"
        )
        # organize orders fields before it renames them: the row field by its first name.
        row_field = "object\\column"
        order = [row_field]
        for operation in self.operations:
            order.append(f"{operation}s".capitalize())
        order += [f"Oldest pending {operation}" for operation in self.operations] + [synced]
        panel = (
            _table(
                "Sync Status",
                "One row per object. View Backlog: changes waiting to be synced, inserts and "
                "updates apart, and the age of the oldest waiting insert and update. View Last "
                f"hour: records synced in the previous full clock hour ({hour} in your time "
                "zone); the insert and update columns read N/A there, as the store does not "
                "split that count. Click an object to open its details.",
                _grid(0, 4, 24, 9),
                _PROMETHEUS,
            )
            .with_target(_prom(expr, instant=True, table_format=True))
            .with_transformation(
                DataTransformerConfig(
                    id_val="groupingToMatrix",
                    options={
                        "columnField": "column",
                        "rowField": "object",
                        "valueField": "Value",
                        "emptyValue": "null",
                    },
                )
            )
            .with_transformation(
                DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {},
                        "renameByName": {row_field: "Object"},
                        "indexByName": {name: index for index, name in enumerate(order)},
                    },
                )
            )
            .sort_by([TableSortByFieldState().display_name("Object")])
            .footer(TableFooterOptions().show(False).reducer([]))
            .override_by_name(
                "Object",
                [
                    _links(
                        [
                            _link(
                                "Open ${__value.raw}",
                                UIDS["object"],
                                "${datasource:queryparam}&${job:queryparam}"
                                "&${instance:queryparam}&${store:queryparam}"
                                "&${direction:queryparam}&var-object=${__value.raw:percentencode}",
                            )
                        ]
                    )
                ],
            )
        )
        for name, properties in overrides:
            panel = panel.override_by_name(name, properties)
        return panel

    def exporter_row(self, board: _Dashboard, top: int) -> None:
        """The exporter's own health: is it collecting, how fast, what it folds or skips."""
        scope = _SCOPE
        board.row(dashboard.Row("Exporter").grid_pos(_grid(0, top, 24, 1)))
        y = top + 1
        board.panel(
            _stat(
                "Last successful collection",
                "How long ago the exporter last read the store completely.",
                "s",
                _grid(0, y, 6, 4),
                [
                    _prom(
                        "time() - max (crmsync_last_successful_collection_timestamp_seconds"
                        f"{{{scope}}})"
                    )
                ],
                steps=((None, "green"), (120, "orange"), (600, "red")),
            )
        )
        board.panel(
            _stat(
                "Open id gaps",
                "Id ranges skipped by concurrent writers that the exporter still watches for "
                "late commits; they close within settle_time.",
                "short",
                _grid(6, y, 6, 4),
                [_prom(f"sum (crmsync_open_id_gaps{{{scope}}})")],
                steps=((None, "green"), (100, "orange")),
                decimals=0,
            )
        )
        for x, title, description, family, label in (
            (
                12,
                "Folded label values",
                "Distinct store values the exporter reports as 'other': objects and error codes "
                "over their caps, operations and directions outside the mapping.",
                "crmsync_folded_label_values",
                "label",
            ),
            (
                18,
                "Rows stamped in the future",
                "Rows later than the database's clock (a writer's clock runs ahead): their ages "
                "and latencies read 0.",
                "crmsync_future_timestamp_rows",
                "table",
            ),
        ):
            board.panel(
                _stat(
                    title,
                    description,
                    "short",
                    _grid(x, y, 6, 4),
                    [_prom(f"sum by ({label}) ({family}{{{scope}}})", legend=f"{{{{{label}}}}}")],
                    steps=((None, "green"), (1, "orange")),
                    decimals=0,
                ).text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            )
        board.panel(
            _timeseries(
                "Collection duration",
                "How long each exporter's last successful collection took.",
                "s",
                _grid(0, y + 4, 12, 7),
                [
                    _prom(
                        f"max by (instance) (crmsync_collection_duration_seconds{{{scope}}})",
                        legend="{{instance}}",
                    )
                ],
            )
        )
        board.panel(
            _timeseries(
                "Failed collections",
                "Collection cycles that failed (the store could not be read), per exporter.",
                "short",
                _grid(12, y + 4, 12, 7),
                [
                    _prom(
                        "sum by (instance) (increase(crmsync_collection_failures_total"
                        f"{{{scope}}}[$__rate_interval]))",
                        legend="{{instance}}",
                    )
                ],
            )
        )

    # Object detail

    def object(self) -> Json:
        board = _Dashboard(
            UIDS["object"],
            "CRM sync / Object detail",
            "One object: backlog by operation, the oldest waiting records, latency, throughput.",
        )
        self.scope(board, sql=True)
        # One object by default (the first), or those chosen; "All" is the Sync Status tab.
        board.variable(
            self.label_variable("object", "Object", "crmsync_pending_records", include_all=False)
        )
        board.variable(self.label_variable("direction", "Direction", "crmsync_pending_records"))
        board.variable(self.reported(REPORTED_OBJECTS, "object"))
        sel = self.sel('object=~"$object"', 'direction=~"$direction"')
        width = 24 // (2 * len(self.operations)) if len(self.operations) <= 6 else 4
        x = 0
        for operation in self.operations:
            op_sel = f'{sel}, operation="{operation}"'
            board.panel(
                _stat(
                    f"Pending {operation}s",
                    f"{operation.capitalize()} changes of this object waiting to be synced.",
                    "short",
                    _grid(x % 24, (x // 24) * 4, width, 4),
                    [_prom(f"sum (crmsync_pending_records{{{op_sel}}})")],
                    decimals=0,
                )
            )
            x += width
            board.panel(
                _stat(
                    f"Oldest pending {operation}",
                    f"Age of the oldest waiting {operation} of this object.",
                    "s",
                    _grid(x % 24, (x // 24) * 4, width, 4),
                    [_prom(f"max (crmsync_oldest_pending_age_seconds{{{op_sel}}})")],
                    steps=AGE_STEPS,
                )
            )
            x += width
        top = ((x + 23) // 24) * 4
        per = self.options.oldest_per_operation
        board.panel(
            _timeseries(
                "Backlog by operation",
                "Waiting changes of this object, inserts and updates stacked.",
                "short",
                _grid(0, top, 12, 8),
                [
                    _prom(
                        f"sum by (operation) (crmsync_pending_records{{{sel}}})",
                        legend="{{operation}}",
                    )
                ],
                stack=True,
            )
        )
        board.panel(
            _table(
                "Oldest pending records",
                f"The {per} oldest waiting changes of each operation, read from the store: "
                "record id, when it entered the queue and how long it has waited.",
                _grid(12, top, 12, 8),
                self.store_ds,
            )
            .with_target(SqlQueryBuilder(self.sql.oldest_pending(per), self.plugin))
            .override_by_name("age", [DynamicConfigValue(id_val="unit", value="s")])
            .override_by_name(
                "enqueued_at", [DynamicConfigValue(id_val="unit", value="dateTimeAsIso")]
            )
        )
        board.panel(
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
            )
        )
        board.panel(
            _timeseries(
                "Throughput by operation",
                "Changes of this object synced per second, by operation.",
                "ops",
                _grid(12, top + 8, 12, 8),
                [
                    _prom(
                        f"sum by (operation) (rate(crmsync_records_synced_total{{{sel}}}"
                        "[$__rate_interval]))",
                        legend="{{operation}}",
                    )
                ],
                stack=True,
            )
        )
        board.panel(
            _timeseries(
                "Failed attempts by error code",
                "Failed sync attempts of this object per second, by error code. Click a series "
                "to browse those failures ('other' and 'unknown' too).",
                "ops",
                _grid(0, top + 16, 24, 8),
                [
                    _prom(
                        f"sum by (error_code) (rate(crmsync_sync_errors_total{{{sel}}}"
                        "[$__rate_interval]))",
                        legend="{{error_code}}",
                    )
                ],
                stack=True,
            ).data_links(
                [
                    dashboard.DashboardLink("Browse these failures").url(
                        _link(
                            "",
                            UIDS["errors"],
                            "${datasource:queryparam}&${store_datasource:queryparam}"
                            "&${job:queryparam}&${instance:queryparam}&${store:queryparam}"
                            "&${object:queryparam}&${direction:queryparam}"
                            "&var-error_code=${__field.labels.error_code:percentencode}",
                        )["url"]
                    )
                ]
            )
        )
        return board.json()

    # Sync Errors

    def errors(self) -> Json:
        board = _Dashboard(
            UIDS["errors"],
            "CRM sync / Sync Errors",
            "The Sync Errors tab: error rates, the codes behind them, and the failed records to "
            "browse, search, page through and export.",
        )
        self.scope(board, sql=True)
        for name, label, metric in (
            ("object", "Object", "crmsync_pending_records"),
            ("operation", "Operation", "crmsync_pending_records"),
            ("direction", "Direction", "crmsync_pending_records"),
            ("error_code", "Error code", "crmsync_sync_errors_total"),
        ):
            board.variable(self.label_variable(name, label, metric))
        board.variable(
            _textbox_variable(
                "search",
                "Search",
                "Free text looked for in the record id, the record name, the error code and the "
                "error message (case-insensitive).",
            )
        )
        size = self.options.page_size
        board.variable(
            _textbox_variable(
                "page",
                "Page",
                f"Which {size} failed records the table shows: 1 is the newest.",
                "1",
            )
        )
        board.variable(
            _custom_variable(
                "group",
                "Failures by",
                [
                    ("error code", "error_code"),
                    ("object", "object"),
                    ("operation", "operation"),
                    ("direction", "direction"),
                ],
                "How the failed attempts over time are broken down.",
            )
        )
        board.variable(self.reported(REPORTED_OBJECTS, "object"))
        board.variable(self.reported(REPORTED_ERROR_CODES, "error_code"))
        sel = self.sel(
            'object=~"$object"',
            'operation=~"$operation"',
            'direction=~"$direction"',
            'error_code=~"$error_code"',
        )
        synced_sel = self.sel(
            'object=~"$object"', 'operation=~"$operation"', 'direction=~"$direction"'
        )
        errors_in_range = f"sum (increase(crmsync_sync_errors_total{{{sel}}}[$__range]))"
        board.panel(
            _stat(
                "Failed attempts",
                "Failed sync attempts in the selected time range, all selected filters.",
                "short",
                _grid(0, 0, 6, 4),
                [_prom(errors_in_range, instant=True)],
                decimals=0,
            )
        )
        board.panel(
            _stat(
                "Error ratio",
                "Failed attempts as a share of all attempts (failed + synced) in the selected "
                "time range.",
                "percentunit",
                _grid(6, 0, 6, 4),
                [
                    _prom(
                        f"{errors_in_range} / ({errors_in_range} + "
                        f"sum (increase(crmsync_records_synced_total{{{synced_sel}}}[$__range])))",
                        instant=True,
                    )
                ],
                steps=((None, "green"), (0.05, "orange"), (0.25, "red")),
            )
        )
        board.panel(
            _stat(
                "Matching failed records",
                "Failed attempts in the store matching the time range, the filters and the "
                f"search, and the pages of {size} the table below shows them on.",
                "short",
                _grid(12, 0, 6, 4),
                [SqlQueryBuilder(self.sql.failed_count(size), self.plugin)],
                decimals=0,
                datasource=self.store_ds,
            ).text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        )
        board.panel(
            _stat(
                "Error codes",
                "Distinct error codes seen in the selected time range.",
                "short",
                _grid(18, 0, 6, 4),
                [
                    _prom(
                        f"count (sum by (error_code) (increase(crmsync_sync_errors_total{{{sel}}}"
                        "[$__range])) > 0)",
                        instant=True,
                    )
                ],
                decimals=0,
            )
        )
        board.panel(
            _timeseries(
                "Failed attempts by ${group:text}",
                "Failed sync attempts per second, broken down as chosen in 'Failures by'.",
                "ops",
                _grid(0, 4, 12, 9),
                [
                    _prom(
                        f"sum by (${{group}}) (rate(crmsync_sync_errors_total{{{sel}}}"
                        "[$__rate_interval]))",
                        legend="{{${group}}}",
                    )
                ],
                stack=True,
            )
        )
        browse_code = _link(
            "Browse the failures with code ${__value.raw}",
            UIDS["errors"],
            "${datasource:queryparam}&${store_datasource:queryparam}&${job:queryparam}"
            "&${instance:queryparam}&${store:queryparam}&${object:queryparam}"
            "&${operation:queryparam}&${direction:queryparam}&${search:queryparam}"
            "&${group:queryparam}&var-error_code=${__value.raw:percentencode}&var-page=1",
        )
        board.panel(
            _table(
                "Top error codes",
                f"The {20} most frequent error codes among the matching failures (any code), "
                "with their share, when each last occurred and its newest message. Click a "
                "code to browse its failures.",
                _grid(12, 4, 12, 9),
                self.store_ds,
            )
            .with_target(SqlQueryBuilder(self.sql.top_error_codes(), self.plugin))
            .override_by_name("error code", [_links([browse_code])])
            .override_by_name(
                "share",
                [
                    DynamicConfigValue(id_val="unit", value="percentunit"),
                    DynamicConfigValue(
                        id_val="custom.cellOptions", value={"type": "gauge", "mode": "basic"}
                    ),
                    DynamicConfigValue(id_val="min", value=0),
                    DynamicConfigValue(id_val="max", value=1),
                ],
            )
            .override_by_name("failures", [DynamicConfigValue(id_val="decimals", value=0)])
            .override_by_name(
                "last seen", [DynamicConfigValue(id_val="unit", value="dateTimeAsLocal")]
            )
        )
        record_overrides = [DynamicConfigValue(id_val="unit", value="dateTimeAsLocal")]
        failed = (
            _table(
                "Failed records, page ${page}",
                "The failed sync attempts themselves, newest first, read from the store: time, "
                "object, record id and name, operation, direction, error code and message. "
                "Narrow them with the time range, the filters and Search; page back with Page "
                "(the total is above); export them with the panel menu (Inspect > Data > "
                f"Download CSV). {size} rows a page.",
                _grid(0, 13, 24, 14),
                self.store_ds,
            )
            .with_target(SqlQueryBuilder(self.sql.failed_records(size), self.plugin))
            .inspect(True)
            .override_by_name("time", record_overrides)
            .override_by_name(
                "error_message", [DynamicConfigValue(id_val="custom.width", value=480)]
            )
            # The number of rows of the page: Grafana's Table counts only number fields
            # otherwise, and these are text.
            .footer(
                TableFooterOptions()
                .show(True)
                .enable_pagination(True)
                .reducer(["count"])
                .count_rows(True)
                .fields([])
            )
        )
        template = self.store.crm_record_url
        if template is not None:
            url = template.replace("{object}", "${__data.fields.object:percentencode}").replace(
                "{record_id}", "${__value.raw:percentencode}"
            )
            failed = failed.override_by_name(
                "record_id",
                [
                    _links(
                        [
                            {
                                "title": "Open ${__value.raw} in the CRM",
                                "url": url,
                                "targetBlank": True,
                            }
                        ]
                    )
                ],
            )
        board.panel(failed)
        return board.json()

    # Capacity planning

    def capacity(self) -> Json:
        board = _Dashboard(
            UIDS["capacity"],
            "CRM sync / Capacity planning",
            "Arrival against sync rates, peak throughput, headroom, backlog forecast and the "
            "latency objective.",
        )
        self.scope(board)
        board.variable(self.label_variable("object", "Object", "crmsync_pending_records"))
        board.variable(self.label_variable("direction", "Direction", "crmsync_pending_records"))
        board.variable(
            _custom_variable(
                "horizon",
                "Forecast horizon",
                [("4h", "14400"), ("1h", "3600"), ("12h", "43200"), ("1d", "86400")],
                "How far ahead the backlog forecast looks.",
            )
        )
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
        board.panel(
            _timeseries(
                "Arrival rate against sync rate",
                "Per object, changes entering the queue per second (estimated: synced + failed "
                "attempts + growth of the backlog) against changes synced per second. While "
                "arrivals stay above the sync rate the backlog grows. Click a series to open "
                "that object.",
                "ops",
                _grid(0, 0, 24, 8),
                [
                    _prom(self.arrival_expr(sel, "object"), "A", "{{object}} arriving"),
                    _prom(sync_rate, "B", "{{object}} synced"),
                ],
            ).data_links(
                [
                    dashboard.DashboardLink("Open ${__field.labels.object}").url(
                        _link(
                            "",
                            UIDS["object"],
                            "${datasource:queryparam}&${job:queryparam}&${instance:queryparam}"
                            "&${store:queryparam}&var-object=${__field.labels.object:percentencode}",
                        )["url"]
                    )
                ]
            )
        )
        board.panel(
            bargauge.Panel()
            .title("Peak hourly throughput")
            .description(
                "The most records synced in one full clock hour within the selected time "
                "range, per object: what the sync has shown it can do."
            )
            .unit("short")
            .decimals(0)
            .grid_pos(_grid(0, 8, 8, 8))
            .datasource(_PROMETHEUS)
            .with_target(
                _prom(
                    "max_over_time((sum by (object) ("
                    f"crmsync_records_synced_last_hour{{{sel}}}))[$__range:])",
                    legend="{{object}}",
                    instant=True,
                )
            )
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .orientation(common.VizOrientation.HORIZONTAL)
            .display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .show_unfilled(True)
            .thresholds(_thresholds(((None, "green"),)))
        )
        board.panel(
            bargauge.Panel()
            .title("Headroom")
            .description(
                "1 - arrival rate / peak sync rate, per object: the share of the highest sync "
                "rate seen in the time range (a lower bound of the capacity) that current "
                "arrivals leave unused. Near or below 0 the backlog can only grow."
            )
            .unit("percentunit")
            .min(-1)
            .max(1)
            .grid_pos(_grid(8, 8, 8, 8))
            .datasource(_PROMETHEUS)
            .with_target(
                _prom(
                    f"1 - {self.arrival_expr(sel, 'object')} / max_over_time(({sync_rate})"
                    "[$__range:])",
                    legend="{{object}}",
                    instant=True,
                )
            )
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .orientation(common.VizOrientation.HORIZONTAL)
            .display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .show_unfilled(True)
            .thresholds(_thresholds(((None, "red"), (0.2, "orange"), (0.5, "green"))))
        )
        board.panel(
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
                        f"sum by (object) (crmsync_pending_records{{{sel}}})", "B", "{{object}} now"
                    ),
                ],
            )
        )
        board.panel(
            _timeseries(
                "Synced within the latency objective",
                f"Share of synced changes that took at most {objective}s from enqueue to sync, "
                f"against the objective of {target:.0%} (dashed line).",
                "percentunit",
                _grid(0, 16, 12, 8),
                [_prom(within, legend="{{object}}")],
                maximum=1,
            )
            .thresholds(_thresholds(((None, "red"), (target, "green"))))
            .thresholds_style(_dashed())
        )
        board.panel(
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
                        legend="{{object}}",
                    )
                ],
            )
            .thresholds(_thresholds(((None, "green"), (float(objective), "red"))))
            .thresholds_style(_dashed())
        )
        return board.json()

    def arrival_expr(self, sel: str, by: str) -> str:
        group = f"by ({by}) " if by else ""
        synced = f"sum {group}(rate(crmsync_records_synced_total{{{sel}}}[$__rate_interval]))"
        errors = f"sum {group}(rate(crmsync_sync_errors_total{{{sel}}}[$__rate_interval]))"
        growth = f"sum {group}(deriv(crmsync_pending_records{{{sel}}}[$__rate_interval]))"
        return f"clamp_min({synced} + ({errors} or 0 * {synced}) + {growth}, 0)"


def _dashed() -> GraphThresholdsStyleConfig:
    return GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)


def build_dashboards(store: StoreConfig, options: Options = Options()) -> dict[str, Json]:
    """The four dashboards for ``store``, keyed by file name."""
    if options.latency_objective not in LATENCY_BUCKETS:
        raise ValueError(
            "the latency objective must be a histogram bucket bound, one of "
            + ", ".join(f"{bound:g}" for bound in LATENCY_BUCKETS)
        )
    if options.page_size < 1:
        raise ValueError("the page size must be at least 1")
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
    parser = command_parser(
        "crmsync-dashboards",
        "Generate the crmsync Grafana dashboards for the configured store's mapping.",
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
        help="rows a page of the failed-records table shows (default: %(default)s)",
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
    setup_logging_from(args)
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
    files = {file_name: render(built) for file_name, built in dashboards.items()}
    for path in write_generated(args.out, files):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
