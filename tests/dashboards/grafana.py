"""What Grafana does to a panel's query before a datasource runs it, re-implemented for tests.

Template variables are replaced the way Grafana's dashboard scenes do it (formats, "All", the
datasources' default escaping); SQL macros the way Grafana's PostgreSQL and MySQL backends
expand them. Only the parts the crmsync dashboards use are covered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

ALL_TEXT = "All"

# Grafana's variableRegex (public/app/features/variables/utils.ts).
_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}"
)
# The backends' macro pattern (pkg/tsdb/*/macros.go): any $name(args).
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")

Datasource = Literal["prometheus", "postgresql", "mysql"]


@dataclass(frozen=True)
class Selection:
    """The state of one dashboard variable."""

    values: tuple[str, ...]
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    is_all: bool = False
    options: tuple[str, ...] = ()
    name: str = ""

    @classmethod
    def one(cls, value: str) -> Selection:
        return cls((value,))


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime


@dataclass
class Context:
    """Everything a query is interpolated with.

    ``url_state``: from @grafana/scenes 5.20 on, `queryparam` writes the variable's URL state
    (@grafana/data's urlUtil.toUrlParams): "All" as `$__all`, and @ : $ , ; left unencoded.
    """

    variables: Mapping[str, Selection]
    builtins: Mapping[str, str] = field(default_factory=dict)
    url_state: bool = False


def encode_uri_component_strict(value: str) -> str:
    """JavaScript's encodeURIComponent plus escaping of !'()*, as Grafana's formats do."""
    return quote(value, safe="-_.~")


def _regex_escape(value: str) -> str:
    # lodash/kbn regexEscape: [-[\]/{}()*+?.\\^$|]
    return re.sub(r"([-\[\]/{}()*+?.\\^$|])", r"\\\1", value)


def _prometheus_regular_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def _prometheus_regex_escape(value: str) -> str:
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", value)


def sqlstring(values: tuple[str, ...] | str) -> str:
    """Grafana's `sqlstring` format: ' doubled, " backslash-escaped, backslash left alone."""

    def one(value: str) -> str:
        return "'" + value.replace("'", "''").replace('"', '\\"') + "'"

    if isinstance(values, str):
        return one(values)
    return ",".join(one(value) for value in values)


def _url_state(name: str, selection: Selection) -> str:
    """scenes >= 5.20: the URL parameters of the variable, as the address bar has them."""
    values = ("$__all",) if selection.is_all else selection.values
    if not values and selection.multi:
        values = ("",)
    return "&".join(f"var-{name}={quote(value, safe='-_.~@:$,;')}" for value in values)


def _format(
    name: str, selection: Selection, fmt: str | None, datasource: Datasource, url_state: bool
) -> str:
    if fmt == "queryparam" and url_state:
        return _url_state(name, selection)
    if selection.is_all and selection.all_value is not None:
        # scenes' CustomAllValue: not escaped, except for these three formats.
        if fmt == "text":
            return ALL_TEXT
        if fmt == "percentencode":
            return encode_uri_component_strict(selection.all_value)
        if fmt == "queryparam":
            return f"var-{name}={encode_uri_component_strict(ALL_TEXT)}"
        return selection.all_value
    values = selection.options if selection.is_all else selection.values
    single = len(values) == 1 and not (selection.multi or selection.include_all)
    if fmt == "queryparam":
        return "&".join(f"var-{name}={encode_uri_component_strict(v)}" for v in values)
    if fmt == "percentencode":
        if single or (len(values) == 1 and not selection.multi):
            return encode_uri_component_strict(values[0])
        return encode_uri_component_strict("{" + ",".join(values) + "}")
    if fmt == "text":
        return ALL_TEXT if selection.is_all else " + ".join(values)
    if fmt == "raw":
        return ",".join(values)
    if fmt == "regex":
        escaped = [_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "sqlstring":
        return sqlstring(values)
    if fmt is not None:
        raise ValueError(f"format {fmt!r} is not emulated")
    # The datasource's own interpolation.
    if datasource == "prometheus":
        if not (selection.multi or selection.include_all):
            return _prometheus_regular_escape(values[0])
        escaped = [_prometheus_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if not (selection.multi or selection.include_all):
        return values[0].replace("'", "''")
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def interpolate(text: str, context: Context, datasource: Datasource) -> str:
    """Replace template variables; unknown names stay as they are, as in Grafana."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        if name in context.builtins:
            return context.builtins[name]
        selection = context.variables.get(name)
        if selection is None:
            return match.group(0)
        return _format(name, selection, fmt, datasource, context.url_state)

    return _VARIABLE.sub(replace, text)


def _rfc3339nano(moment: datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def expand_macros(sql: str, time_range: TimeRange, dialect: Literal["postgresql", "mysql"]) -> str:
    """The SQL backends' macros, as pkg/tsdb/{grafana-postgresql-datasource,mysql} expand them."""
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


def render_sql(
    sql: str,
    context: Context,
    time_range: TimeRange,
    dialect: Literal["postgresql", "mysql"],
) -> str:
    """A panel's rawSql as the database receives it."""
    return expand_macros(interpolate(sql, context, dialect), time_range, dialect)
