"""What Grafana's server does with the queries its frontend sends, re-implemented for the tests.

Grafana's frontend packages (crmsync_testing/frontend) replace the template variables and
POST each panel's queries to the server's /api/ds/query. The server, written in Go and not
available here, then does the rest; this module does those parts, each after the Go code named
in its docstring, and runs the queries for real:

- SQL: the macros ($__timeFilter ...), the query on the database, the rows as a data frame.
- Prometheus: $__interval, $__rate_interval and $__range, the step, the query on Prometheus,
  the result as data frames.

Data frames are written as Grafana's DataFrameJSON, which the frontend reads back.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa

from crmsync_testing.servers import mariadb_database, postgres_schema

Json = dict[str, Any]
SqlDialect = Literal["postgresql", "mysql"]

# The backends' macro pattern (pkg/tsdb/*/macros.go): any $name(args).
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @classmethod
    def of_request(cls, body: Mapping[str, Any]) -> TimeRange:
        """The range of a /api/ds/query body: "from" and "to" in epoch milliseconds."""
        return cls(_from_ms(int(body["from"])), _from_ms(int(body["to"])))


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def _rfc3339nano(moment: datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


# --- SQL -------------------------------------------------------------------------------------


def expand_macros(sql: str, time_range: TimeRange, dialect: SqlDialect) -> str:
    """The SQL backends' macros, as pkg/tsdb/{grafana-postgresql-datasource,mysql}/macros.go
    expand them."""
    start, end = time_range.start, time_range.end
    start_unix, end_unix = int(start.timestamp()), int(end.timestamp())

    def macro(match: re.Match[str]) -> str:
        name = match.group(1)
        args = [arg.strip(" ") for arg in match.group(2).split(",")]
        if dialect == "postgresql":
            if name == "__timeFilter":
                return f"{args[0]} BETWEEN '{_rfc3339nano(start)}' AND '{_rfc3339nano(end)}'"
            if name == "__timeFrom":
                return f"'{_rfc3339nano(start)}'"
            if name == "__timeTo":
                return f"'{_rfc3339nano(end)}'"
            if name == "__time":
                return f'{args[0]} AS "time"'
        else:
            if name == "__timeFilter":
                return (
                    f"{args[0]} BETWEEN FROM_UNIXTIME({start_unix}) AND FROM_UNIXTIME({end_unix})"
                )
            if name == "__timeFrom":
                return f"FROM_UNIXTIME({start_unix})"
            if name == "__timeTo":
                return f"FROM_UNIXTIME({end_unix})"
            if name in ("__time", "__timeEpoch"):
                return f"UNIX_TIMESTAMP({args[0]}) as time_sec"
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {start_unix} AND {args[0]} <= {end_unix}"
        if name == "__unixEpochFrom":
            return str(start_unix)
        if name == "__unixEpochTo":
            return str(end_unix)
        raise ValueError(f"unknown macro {name!r}")

    return _MACRO.sub(macro, sql)


def _field_type(values: Sequence[Any]) -> tuple[str, str]:
    """Grafana's field type and Go type of a column (sqlutil's converters), from its values."""
    for value in values:
        if value is None:
            continue
        if isinstance(value, datetime | date):
            return "time", "time.Time"
        if isinstance(value, bool):
            return "boolean", "bool"
        if isinstance(value, int):
            return "number", "int64"
        if isinstance(value, float | Decimal):
            return "number", "float64"
        return "string", "string"
    return "string", "string"


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _ms(value)
    if isinstance(value, date):
        return _ms(datetime(value.year, value.month, value.day, tzinfo=UTC))
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def rows_frame(
    ref_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], executed: str
) -> Json:
    """sqleng's frame of a table query: one field per column; no rows, no fields at all."""
    meta = {"executedQueryString": executed, "typeVersion": [0, 0]}
    if not rows:
        return {"schema": {"refId": ref_id, "meta": meta, "fields": []}, "data": {"values": []}}
    fields, values = [], []
    for index, name in enumerate(columns):
        column = [row[index] for row in rows]
        kind, go_type = _field_type(column)
        nullable = any(value is None for value in column)
        fields.append(
            {"name": name, "type": kind, "typeInfo": {"frame": go_type, "nullable": nullable}}
        )
        values.append([_json_value(value) for value in column])
    return {
        "schema": {"refId": ref_id, "meta": meta, "fields": fields},
        "data": {"values": values},
    }


def run_sql(
    engine: sa.Engine, sql: str, ref_id: str, time_range: TimeRange, dialect: SqlDialect
) -> Json:
    """Expand the macros, run the query, and answer as the SQL backends do."""
    executed = expand_macros(sql, time_range, dialect)
    with engine.connect() as connection:
        # The DBAPI drivers read % as a parameter marker; Grafana's send the text as it is.
        result = connection.exec_driver_sql(executed.replace("%", "%%"))
        columns = list(result.keys())
        rows = [tuple(row) for row in result]
    return {"frames": [rows_frame(ref_id, columns, rows, executed)]}


# --- Prometheus ------------------------------------------------------------------------------

_MS = timedelta(milliseconds=1)
# pkg/promlib/intervalv2: an interval rounds down to one of these, below each bound.
_ROUNDING = [
    (10, 1),
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1500, 1000),
    (3500, 2000),
    (7500, 5000),
    (12500, 10000),
    (17500, 15000),
    (25000, 20000),
    (45000, 30000),
    (90000, 60000),
    (210000, 120000),
    (450000, 300000),
    (750000, 600000),
    (1050000, 900000),
    (1500000, 1200000),
    (2700000, 1800000),
    (5400000, 3600000),
    (9000000, 7200000),
    (16200000, 10800000),
    (32400000, 21600000),
    (86400000, 43200000),
    (172800000, 86400000),
    (604800000, 86400000),
    (1814400000, 604800000),
]
_SAFE_RESOLUTION = 11000


def round_interval(interval: timedelta) -> timedelta:
    """intervalv2.roundInterval."""
    ms = interval / _MS
    for bound, rounded in _ROUNDING:
        if ms <= bound:
            return rounded * _MS
    return (2592000000 if ms < 3628800000 else 31536000000) * _MS


def parse_interval(text: str) -> timedelta:
    """gtime.ParseIntervalStringToTimeDuration for the forms datasources use: 15s, 1m, 500ms."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", text.strip())
    if not match:
        raise ValueError(f"not an interval: {text!r}")
    unit = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000, "w": 604800000}
    factor = unit.get(match.group(2), 31536000000)
    return int(match.group(1)) * factor * _MS


def format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit."""
    ms = int(interval / _MS)
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    if ms >= 1000:
        return f"{ms // 1000}s"
    return f"{max(ms, 1)}ms"


def go_duration(interval: timedelta) -> str:
    """Go's time.Duration.String(): 20s, 1m0s, 1m30s, 1h0m0s, 1.5s, 500ms."""
    ms = round(interval / _MS)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3600000)
    minutes, rest = divmod(rest, 60000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def rate_interval(interval: timedelta, scrape_interval: str) -> timedelta:
    """models.calculateRateInterval: max(interval + scrape interval, 4 x scrape interval)."""
    scrape = parse_interval(scrape_interval or "15s")
    return max(interval + scrape, 4 * scrape)


def prometheus_step(query: Mapping[str, Any], time_range: TimeRange) -> timedelta:
    """models.calculatePrometheusInterval for a query without its own min step."""
    span = time_range.end - time_range.start
    min_interval = int(query.get("intervalMs") or 15000) * _MS
    points = int(query.get("maxDataPoints") or 1500)
    calculated = span / points
    calculated = min_interval if calculated < min_interval else round_interval(calculated)
    safe = round_interval(span / _SAFE_RESOLUTION)
    return max(calculated, safe)


def interpolate_prometheus(
    expr: str, query: Mapping[str, Any], time_range: TimeRange, scrape_interval: str
) -> tuple[str, timedelta]:
    """models.interpolateVariables: the built-in variables the frontend leaves to the server."""
    step = prometheus_step(query, time_range)
    range_ms = round((time_range.end - time_range.start) / _MS)
    range_s = round(range_ms / 1000)
    rate = rate_interval(int(query.get("intervalMs") or 0) * _MS, scrape_interval)
    for alias in ("", "alt"):

        def name(base: str, alias: str = alias) -> str:
            return "${" + base[1:] + "}" if alias else base

        expr = expr.replace(name("$__interval_ms"), str(int(step / _MS)))
        expr = expr.replace(name("$__interval"), format_interval(step))
        expr = expr.replace(name("$__range_ms"), str(range_ms))
        expr = expr.replace(name("$__range_s"), str(range_s))
        expr = expr.replace(name("$__range"), f"{range_s}s")
        expr = expr.replace(name("$__rate_interval_ms"), str(int(rate / _MS)))
        expr = expr.replace(name("$__rate_interval"), go_duration(rate))
    return expr, step


def _legend(query: Mapping[str, Any], labels: Mapping[str, str], expr: str) -> str:
    """querydata.getName: the legend template, else the series name."""
    legend_format = str(query.get("legendFormat") or "")
    if legend_format == "__auto":
        return "" if labels else expr
    if legend_format:
        return re.sub(r"\{\{\s*(.+?)\s*\}\}", lambda m: labels.get(m.group(1), ""), legend_format)
    name = labels.get("__name__", "")
    rest = sorted(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
    legend = f"{name}{{{', '.join(rest)}}}" if rest else (name or "{}")
    return expr if legend == "{}" else legend


def _number(text: str) -> float:
    return float(text)


def _values_json(values: Sequence[float]) -> tuple[list[Any], Json | None]:
    """DataFrameJSON writes NaN and infinities as entities beside null values."""
    out: list[Any] = []
    entities: dict[str, list[int]] = {}
    for index, value in enumerate(values):
        if math.isnan(value):
            entities.setdefault("NaN", []).append(index)
            out.append(None)
        elif math.isinf(value):
            entities.setdefault("Inf" if value > 0 else "NegInf", []).append(index)
            out.append(None)
        else:
            out.append(value)
    return out, entities or None


def prometheus_frames(
    ref_id: str, query: Mapping[str, Any], data: Mapping[str, Any], expr: str, step: timedelta
) -> list[Json]:
    """converter.ReadPrometheusStyleResult with the dataplane format, and querydata's metadata:
    one frame per series (Time, Value with the series' labels); no series, one empty frame."""
    result_type = data["resultType"]
    executed = f"Expr: {expr}\nStep: {go_duration(step)}"
    frames: list[Json] = []
    series = data["result"] if result_type in ("vector", "matrix") else []
    for item in series:
        labels = item.get("metric", {})
        points = [item["value"]] if "value" in item else item.get("values", [])
        times = [round(float(point[0]) * 1000) for point in points]
        values, entities = _values_json([_number(point[1]) for point in points])
        value_field: Json = {
            "name": labels.get("__name__", "Value"),
            "type": "number",
            "typeInfo": {"frame": "float64"},
            "labels": labels,
            "config": {"displayNameFromDS": _legend(query, labels, expr)},
        }
        frames.append(
            {
                "schema": {
                    "refId": ref_id,
                    "meta": {
                        "type": "numeric-multi" if result_type == "vector" else "timeseries-multi",
                        "typeVersion": [0, 1],
                        "custom": {"resultType": result_type},
                    },
                    "fields": [
                        {
                            "name": "Time",
                            "type": "time",
                            "typeInfo": {"frame": "time.Time"},
                            "config": {"interval": int(step / _MS)},
                        },
                        value_field,
                    ],
                },
                "data": {"values": [times, values], "entities": [None, entities]},
            }
        )
    if not frames:
        frames.append(
            {"schema": {"refId": ref_id, "meta": {}, "fields": []}, "data": {"values": []}}
        )
    frames[0]["schema"]["meta"]["executedQueryString"] = executed
    return frames


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read() or b"{}")


def run_prometheus(
    prometheus: str,
    query: Mapping[str, Any],
    time_range: TimeRange,
    scrape_interval: str,
) -> Json:
    """Run one panel query on Prometheus as the Prometheus backend does: instant queries at the
    range's end, range queries over the range aligned to the step."""
    expr, step = interpolate_prometheus(str(query["expr"]), query, time_range, scrape_interval)
    if query.get("instant") and not query.get("range"):
        params = {"query": expr, "time": f"{time_range.end.timestamp():.3f}"}
        url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode(params)}"
    else:
        step_s = step.total_seconds()
        offset = int(query.get("utcOffsetSec") or 0)

        def align(moment: datetime) -> float:
            return math.floor((moment.timestamp() + offset) / step_s) * step_s - offset

        params = {
            "query": expr,
            "start": f"{align(time_range.start):.3f}",
            "end": f"{align(time_range.end):.3f}",
            "step": f"{step_s:g}",
        }
        url = f"{prometheus}/api/v1/query_range?{urllib.parse.urlencode(params)}"
    status, answer = _get(url)
    if status != 200 or answer.get("status") != "success":
        return {"error": f"{answer.get('errorType')}: {answer.get('error')}", "status": status}
    return {"frames": prometheus_frames(str(query["refId"]), query, answer["data"], expr, step)}


# --- the endpoint ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backends:
    """Where the server sends each datasource's queries."""

    sql: Callable[[str, str, TimeRange], Json] | None = None
    prometheus: str | None = None
    scrape_interval: str = "15s"


def answer(
    requests: Sequence[Mapping[str, Any]], dashboard: str, panel: int, backends: Backends
) -> dict[str, Json]:
    """POST /api/ds/query for one panel's requests: each query's answer, keyed for the frontend.

    Queries of a datasource without a backend here get no answer (the frontend then sees no
    frames): the SQL tests need no Prometheus.
    """
    answers: dict[str, Json] = {}
    for body in requests:
        time_range = TimeRange.of_request(body)
        for query in body["queries"]:
            ref_id = str(query["refId"])
            kind = query["datasource"]["type"]
            if kind == "prometheus":
                if backends.prometheus is None:
                    continue
                result = run_prometheus(
                    backends.prometheus, query, time_range, backends.scrape_interval
                )
                text = query["expr"]
            else:
                if backends.sql is None:
                    continue
                result = backends.sql(str(query["rawSql"]), ref_id, time_range)
                text = query["rawSql"]
            answers[f"{dashboard}/{panel}/{ref_id}"] = {"query": text, **result}
    return answers


def store_engine(url: str, dialect: SqlDialect, time_zone: str | None = None) -> sa.Engine:
    """An engine whose sessions run as Grafana's datasource runs them.

    MySQL/MariaDB: in UTC, as the MySQL datasource's "Session timezone" setting makes it (the
    store keeps UTC); PostgreSQL: in the server's zone, Grafana sets none. ``time_zone``
    overrides either."""
    engine = sa.create_engine(url)
    zone = time_zone or ("+00:00" if dialect == "mysql" else None)
    if zone is not None:

        @sa.event.listens_for(engine, "connect")
        def _session_zone(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(
                    f"SET time_zone = '{zone}'" if dialect == "mysql" else f"SET TIME ZONE '{zone}'"
                )

    return engine


@contextmanager
def empty_database(dialect: SqlDialect) -> Iterator[str]:
    """A database of its own on the dialect's server, dropped afterwards."""
    with postgres_schema() if dialect == "postgresql" else mariadb_database() as url:
        yield url
