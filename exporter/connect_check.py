"""``--config.connect-check``: each store read once, read-only, against what its mapping expects."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import yaml
from sqlalchemy import Connection, inspect, select

from exporter.collection import make_engine, previous_full_hour
from exporter.config import ConfigError, StoreConfig
from exporter.dialects import dialect_for
from exporter.feeds import PAGE_ROWS, utc_datetime
from exporter.queries import StoreQueries, build_queries
from exporter.runner import describe
from exporter.store_reads import ColumnRead, MappedValues, TableRead, store_reads
from exporter.store_values import WINDOW_ROWS, Window, meaning, read_window, unmapped

Severity = Literal["error", "warning"]
AHEAD_LIMIT = 600.0
"""Seconds a newest timestamp may lie ahead of the database clock before it means local time:
writers' clocks drift by seconds, not by the quarter hours that time zones differ by."""


@dataclass(frozen=True)
class Finding:
    """One thing the check found wrong: an error makes metrics wrong or absent."""

    severity: Severity
    key: str
    message: str


@dataclass
class StoreReport:
    """What the check found in one store, in the order it looked."""

    index: int
    store: StoreConfig
    lines: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def add(self, severity: Severity, key: str, message: str) -> None:
        self.findings.append(Finding(severity, f"stores[{self.index}].{key}", message))

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.findings)


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    pool = list(candidates)
    lowered = {candidate.lower(): candidate for candidate in pool}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.75)
    # A name cut short or with a prefix left out ("code" for "error_code") is close too.
    close += sorted(
        c
        for c in lowered
        if c not in close and len(name) >= 3 and (name.lower() in c or c in name.lower())
    )[: 3 - len(close)]
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(lowered[match]) for match in close) + "?"


def _type_text(connection: Connection, type_: Any) -> str:
    try:
        return str(type_.compile(dialect=connection.dialect))
    except Exception:  # a type the dialect reflects but cannot write back
        return type(type_).__name__.upper()


def timestamp_kind(dialect: str, type_: Any) -> tuple[str, bool] | None:
    """How a column keeps time (a description, and whether it is naive); None: it does not."""
    if isinstance(type_, sa.DateTime):
        if getattr(type_, "timezone", False):
            return "with time zone", False
        if dialect in ("mysql", "mariadb") and isinstance(type_, sa.TIMESTAMP):
            return "TIMESTAMP: kept as UTC, read in the session's UTC", False
        return "without time zone", True
    if dialect == "sqlite":
        return "text: an offset in the text is honoured, text without one is naive", True
    return None


def _seq_scans(plan: dict[str, Any]) -> Iterator[str]:
    """Relations a PostgreSQL JSON plan reads by a sequential scan."""
    if plan.get("Node Type") == "Seq Scan":
        yield str(plan.get("Relation Name"))
    for child in plan.get("Plans", []):
        yield from _seq_scans(child)


def steady_statements(
    queries: StoreQueries, connection: Connection, db_now: float, lookback: float
) -> list[tuple[str, Any]]:
    """The statements a collection runs, by name, as a steady cycle would send them now.

    ``lookback``: how far back (seconds) the status-table layout reads new rows.
    """
    statements: list[tuple[str, Any]] = [("backlog", queries.backlog(db_now))]
    future = queries.future_rows(db_now)
    if future is not None:
        statements.append(("rows stamped in the future", future))
    if queries.history is not None:
        hour_start, hour_end = previous_full_hour(db_now, UTC)
        last_hour = queries.synced_between(utc_datetime(hour_start), utc_datetime(hour_end))
        statements.append(("the last full hour", last_hour))
    failing = queries.failing()
    if failing is not None:
        statements.append(("failing changes", failing))
    for feed in queries.feeds:
        if feed.append_only:
            newest = int(connection.execute(feed.max_id()).scalar() or 0)
            statements += [
                (f"newest {feed.name} id", feed.max_id()),
                (f"new {feed.name} rows", feed.rows_after(newest, PAGE_ROWS)),
                (f"{feed.name} row lookup", feed.row_moment(newest)),
            ]
        else:
            since = utc_datetime(db_now - lookback)
            statements.append((f"new {feed.name} rows", feed.rows_since(since)))
    return statements


def _offset_text(seconds: float) -> str:
    quarter_hours = round(seconds / 900)
    sign = "+" if quarter_hours >= 0 else "-"
    minutes = abs(quarter_hours) * 15
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _server_time_zone(connection: Connection) -> str | None:
    """The zone the server's sessions use by default (this check's own session runs in UTC)."""
    dialect = connection.dialect.name
    try:
        if dialect == "postgresql":
            statement = "SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'"
            return str(connection.exec_driver_sql(statement).scalar_one())
        if dialect in ("mysql", "mariadb"):
            statement = "SELECT @@global.time_zone, @@system_time_zone"
            configured, system = connection.exec_driver_sql(statement).one()
            return str(system) if str(configured).upper() == "SYSTEM" else str(configured)
    except sa.exc.SQLAlchemyError:
        return None
    return None


def _is_utc(zone: str | None) -> bool:
    return zone is None or zone.upper() in {"UTC", "ETC/UTC", "GMT", "Z", "+00:00", "UCT", "ZULU"}


class _StoreCheck:
    """The checks of one store over one read-only connection."""

    def __init__(self, report: StoreReport, connection: Connection) -> None:
        self.report = report
        self.connection = connection
        self.dialect = connection.dialect.name
        self.inspector = inspect(connection)
        self.db_now = float(
            connection.execute(select(dialect_for(self.dialect).now_epoch_seconds())).scalar_one()
        )
        self.server_zone = _server_time_zone(connection)
        self.unindexed: set[str] = set()
        """Tables lacking an index a query needs (their scans are reported already)."""

    def run(self) -> None:
        zone = self.server_zone if self.server_zone is not None else "none (SQLite)"
        self.report.lines.append(
            f"  database clock {_instant(self.db_now)}, server time zone {zone}"
        )
        for read in store_reads(self.report.store):
            self.check_table(read)
        if self.report.errors == 0:
            self.check_plans()

    def check_plans(self) -> None:
        """The plans of the statements each collection runs: which of them read a whole table.

        Only where a plan says what indexes could do: PostgreSQL with sequential scans
        disabled for this transaction (a scan left is one no index can replace), SQLite.
        MySQL's and MariaDB's optimizers read small tables whole whatever their indexes.
        """
        lines = self.report.lines
        if self.dialect not in ("postgresql", "sqlite"):
            lines.append(
                "  plans: not read on MySQL and MariaDB (small tables are read whole whatever "
                "their indexes); the indexes above stand in"
            )
            return
        if self.dialect == "postgresql":
            self.connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        lines.append("  plans of the statements each collection runs:")
        queries = build_queries(self.report.store, dialect_for(self.dialect))
        lookback = 2 * self.report.store.settle_time  # as exporter.feeds.MomentFeed reads
        for name, statement in steady_statements(queries, self.connection, self.db_now, lookback):
            scanned = sorted(set(self._table_scans(statement)))
            lines.append(
                f"    {name}: " + (f"reads all of {', '.join(scanned)}" if scanned else "indexed")
            )
            for table_name in scanned:
                if table_name in self.unindexed:
                    continue  # its missing index is reported already
                self.report.add(
                    "warning",
                    "mapping",
                    f"{name} reads all of {table_name} on every collection although the indexes "
                    "it needs exist: do the column types match the values compared?",
                )

    def _table_scans(self, statement: Any) -> Iterator[str]:
        compiled = statement.compile(
            dialect=self.connection.dialect, compile_kwargs={"render_postcompile": True}
        )
        sql = str(compiled)
        if self.dialect == "postgresql":
            plan = self.connection.exec_driver_sql(
                f"EXPLAIN (FORMAT JSON) {sql}", dict(compiled.params)
            ).scalar_one()
            yield from _seq_scans(plan[0]["Plan"])
            return
        positions = compiled.positiontup or []
        parameters = tuple(compiled.params[name] for name in positions)
        for row in self.connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters):
            match = re.fullmatch(r"SCAN (?:TABLE )?(\S+)", str(row[-1]))
            if match:  # "SCAN t USING ... INDEX" reads an index, not the table
                yield match[1]

    def check_table(self, read: TableRead) -> None:
        report, lines = self.report, self.report.lines
        schema, _, bare = read.name.rpartition(".")
        schema_name = schema or None
        tables = set(self.inspector.get_table_names(schema_name))
        views = set(self.inspector.get_view_names(schema_name))
        found = self._match(bare, tables | views)
        if found is None:
            lines.append(f"  table {read.name} ({read.key}): not found")
            report.add(
                "error",
                read.key,
                f"no table {read.name!r} in the database{_did_you_mean(bare, tables | views)}",
            )
            return
        kind = "view" if found in views else "table"
        lines.append(f"  {kind} {read.name} ({read.key})")
        columns = {c["name"]: c["type"] for c in self.inspector.get_columns(found, schema_name)}
        present: dict[str, str] = {}
        width = max((len(name) for name in [*columns, *(c.name for c in read.columns)]), default=0)
        types = {name: _type_text(self.connection, type_) for name, type_ in columns.items()}
        type_width = max((len(text) for text in [*types.values(), "(missing)"]), default=0)
        used: dict[str | None, list[ColumnRead]] = {}
        for column in read.columns:
            used.setdefault(self._match(column.name, columns), []).append(column)
        for name, type_ in columns.items():
            roles = used.get(name)
            note = self._column_note(read, roles, type_) if roles else "not read"
            lines.append(f"    {name:<{width}}  {types[name]:<{type_width}}  {note}")
        for column in read.columns:
            actual = self._match(column.name, columns)
            if actual is None:
                severity: Severity = "error" if column.used_by == "exporter" else "warning"
                consequence = (
                    "the exporter's queries fail"
                    if column.used_by == "exporter"
                    else "only the dashboards read it: their SQL fails"
                    + (
                        "; write record_name: null where there is none"
                        if column.key.endswith(".record_name")
                        else ""
                    )
                )
                lines.append(
                    f"    {column.name:<{width}}  {'(missing)':<{type_width}}  {column.key}"
                )
                report.add(
                    severity,
                    column.key,
                    f"no column {column.name!r} in {read.name}{_did_you_mean(column.name, columns)}"
                    f" ({consequence})",
                )
                continue
            present[column.name] = actual
            if column.kind == "timestamp" and timestamp_kind(self.dialect, columns[actual]) is None:
                report.add(
                    "error",
                    column.key,
                    f"{read.name}.{actual} is {_type_text(self.connection, columns[actual])}, "
                    "not a timestamp",
                )
        if read.newest_first in present:
            self.check_values(read, present, columns)
        if kind == "table":
            self.check_indexes(read, found, schema_name, present)

    def _match(self, name: str, candidates: Iterable[str]) -> str | None:
        """``name`` as the database spells it: identifiers fold case except on PostgreSQL."""
        pool = list(candidates)
        if name in pool:
            return name
        if self.dialect != "postgresql":
            return next((c for c in pool if c.lower() == name.lower()), None)
        return None

    def _column_note(self, read: TableRead, roles: list[ColumnRead], type_: Any) -> str:
        note = ", ".join(role.key for role in roles)
        if all(role.used_by == "dashboards" for role in roles):
            note += " (dashboards only)"
        if not any(role.kind == "timestamp" for role in roles):
            return note
        kind = timestamp_kind(self.dialect, type_)
        if kind is None:
            return note
        description, naive = kind
        zone = f"read as {read.naive_time_zone}" if naive else "an instant"
        return f"{note}: timestamp {description}; {zone}"

    def check_values(
        self, read: TableRead, present: dict[str, str], columns: dict[str, Any]
    ) -> None:
        lines = self.report.lines
        mapped_values = [m for m in read.values if m.column in present]
        timestamps = [
            c.name
            for c in read.columns
            if c.kind == "timestamp"
            and c.name in present
            and timestamp_kind(self.dialect, columns[present[c.name]]) is not None
        ]
        window = read_window(
            self.connection,
            read,
            sorted({m.column for m in mapped_values}),
            sorted(set(timestamps)),
        )
        lines.append(f"    newest {window.rows} rows (of at most {WINDOW_ROWS}):")
        for mapped in mapped_values:
            self._check_mapped(read, mapped, window)
        for name in sorted(set(timestamps)):
            self._check_clock(read, name, window, columns[present[name]])

    def _check_mapped(self, read: TableRead, mapped: MappedValues, window: Window) -> None:
        report = self.report
        seen = sorted(window.values[mapped.column], key=lambda v: (-v.rows, v.text()))
        outside = unmapped(mapped, seen)
        outside_keys = {v.text() for v in outside}
        shown = []
        for value in seen[:20]:
            if value.text() in outside_keys:
                fate = {"other": "other", "uncounted": "not counted", "itself": "unlisted"}
                shown.append(f"{value.text()} {value.rows} -> {fate[mapped.unmapped]}")
            else:
                shown.append(f"{value.text()} {value.rows} -> {meaning(mapped, value.value)}")
        more = f", ... {len(seen) - 20} more" if len(seen) > 20 else ""
        self.report.lines.append(
            f"      {mapped.role} ({read.name}.{mapped.column}, {mapped.key}): "
            + (", ".join(shown) + more if shown else "no rows")
        )
        if mapped.unmapped == "itself":
            if len(seen) > report.store.max_objects:
                report.add(
                    "warning",
                    mapped.key,
                    f"{len(seen)} distinct objects in the newest rows of {read.name}, more than "
                    f'max_objects ({report.store.max_objects}): the rest read object="other"',
                )
            return
        if not outside:
            return
        listed = ", ".join(f"{v.text()} ({v.rows} rows)" for v in outside[:10])
        if mapped.role == "status" and not mapped.given:
            report.add(
                "error",
                mapped.key,
                f"not set, and the newest rows of {read.name} hold statuses the defaults "
                f"(pending, synced, failed) do not list: {listed}; set status_values to what "
                "they mean, e.g. status_values: {pending: [...], synced: [...], failed: [...]}",
            )
            return
        every = len(outside) == len(seen)
        if mapped.unmapped == "uncounted":
            consequence = (
                "rows with it are counted nowhere; list it under pending, synced or failed "
                "if it means one"
            )
        else:
            consequence = (
                f'reported as {mapped.role}="other"; map it, e.g. {mapped.key}: '
                f"{{<label>: [{outside[0].value}]}}"
            )
        report.add(
            "error" if every else "warning",
            mapped.key,
            f"{read.name}.{mapped.column} holds "
            + ("only values" if every else "values")
            + f" the configuration does not map: {listed}; {consequence}",
        )

    def _check_clock(self, read: TableRead, name: str, window: Window, type_: Any) -> None:
        newest = window.newest.get(name)
        kind = timestamp_kind(self.dialect, type_)
        if newest is None or kind is None:
            return
        naive = kind[1]
        if naive:
            # The value read as UTC is the wall-clock time of naive_time_zone: its instant.
            wall = datetime.fromtimestamp(newest, UTC).replace(tzinfo=None)
            newest = wall.replace(tzinfo=ZoneInfo(read.naive_time_zone)).timestamp()
        ahead = newest - self.db_now
        where = "ahead of" if ahead > 0 else "before"
        self.report.lines.append(
            f"      {name}: newest {_instant(newest)}, {_duration(abs(ahead))} {where} the "
            "database clock"
        )
        key = next(c.key for c in read.columns if c.name == name)
        if naive and not _is_utc(self.server_zone):
            self.report.add(
                "warning",
                key,
                f"{read.name}.{name} has no time zone and the server's sessions default to "
                f"{self.server_zone}: a writer storing its local time there would be read as "
                f"{read.naive_time_zone}, off by the zone's offset",
            )
        if ahead <= AHEAD_LIMIT:
            return
        guess = _offset_text(ahead)
        if naive:
            hint = (
                f"naive local time about {guess} read as {read.naive_time_zone}? (the "
                "exporter would see ages too small and rows in the future); set "
                "naive_time_zone to the zone the writer's clock shows"
            )
        else:
            hint = "a writer's clock runs ahead"
        self.report.add(
            "error",
            key,
            f"the newest {read.name}.{name} lies {_duration(ahead)} ahead of the database clock: "
            f"{hint}",
        )

    def check_indexes(
        self, read: TableRead, table_name: str, schema: str | None, present: dict[str, str]
    ) -> None:
        indexes: list[tuple[str, tuple[str, ...]]] = []
        primary = self.inspector.get_pk_constraint(table_name, schema)
        if primary and primary.get("constrained_columns"):
            indexes.append(("primary key", tuple(primary["constrained_columns"])))
        for index in self.inspector.get_indexes(table_name, schema):
            names = tuple(c for c in index.get("column_names", []) if c is not None)
            indexes.append((str(index.get("name")), names))
        spelt = {actual: name for name, actual in present.items()}
        for need in read.indexes:
            if not all(name in present for name in need.columns()):
                continue  # a missing column is reported already
            match = next(
                (
                    name
                    for name, columns in indexes
                    if need.met_by(tuple(spelt.get(c, c) for c in columns))
                ),
                None,
            )
            columns = ", ".join(need.columns())
            who = " (dashboards)" if need.used_by == "dashboards" else ""
            if match is not None:
                self.report.lines.append(f"    index ({columns}) for {need.why}{who}: {match}")
                continue
            self.report.lines.append(f"    index ({columns}) for {need.why}{who}: missing")
            self.unindexed.add(table_name)
            bare = read.name.rpartition(".")[2]
            self.report.add(
                "warning",
                read.key,
                f"no index on {read.name} starting with ({columns}) for {need.why}{who}: "
                f"each read scans the table; CREATE INDEX ix_{bare}_{need.name} "
                f"ON {read.name} ({columns})",
            )


def _instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    rounded = timedelta(seconds=round(seconds))
    hours, rest = divmod(int(rounded.total_seconds()), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def resolved_mapping(store: StoreConfig) -> str:
    """The store's configuration with every default filled in, as YAML, without secrets."""
    document = store.model_dump(
        mode="json", by_alias=True, exclude={"password_env", "password_file"}
    )
    document["url"] = store.display_url()
    if store.mapping.single_table is None:
        del document["mapping"]["single_table"], document["mapping"]["status_values"]
    else:
        for unused in ("queue", "history", "errors"):
            del document["mapping"][unused]
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def check_store(index: int, store: StoreConfig) -> StoreReport:
    """Connect to ``store`` read-only, bounded by its query_timeout, and check its mapping."""
    report = StoreReport(index, store)
    try:
        engine = make_engine(store)
    except ConfigError as error:
        report.add("error", "url", "; ".join(error.problems))
        return report
    except Exception as error:  # a driver not installed, a database not supported
        report.add("error", "url", describe(error))
        return report
    try:
        with engine.connect() as connection, connection.begin():
            _StoreCheck(report, connection).run()
    except Exception as error:
        report.add("error", "url", f"the check stopped: {describe(error)}")
    finally:
        engine.dispose()
    return report


def render(reports: Sequence[StoreReport], source: str) -> str:
    """The report as text: per store what was found, the resolved mapping, the findings."""
    out: list[str] = []
    for report in reports:
        store = report.store
        out.append(f"store {store.name} ({store.display_url()}):")
        out += report.lines
        out.append("  resolved mapping:")
        out += [f"    {line}" for line in resolved_mapping(store).splitlines()]
        # Errors first: what makes metrics wrong or absent, then what is worth a look.
        for finding in sorted(report.findings, key=lambda f: f.severity != "error"):
            out.append(f"  {finding.severity}: {finding.key}: {finding.message}")
        counts = f"{_count(report.errors, 'error')}, {_count(report.warnings, 'warning')}"
        out.append(f"  {store.name}: {counts}")
    errors = sum(r.errors for r in reports)
    warnings = sum(r.warnings for r in reports)
    verdict = "metrics would be wrong or absent" if errors else "usable"
    out.append(
        f"{source}: {_count(len(reports), 'store')} checked, {_count(errors, 'error')}, "
        f"{_count(warnings, 'warning')}: {verdict}"
    )
    return "\n".join(out)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def connect_check(stores: Sequence[tuple[int, StoreConfig]], source: str) -> tuple[int, str]:
    """Check each (index, store): the exit code (1 on any error) and the report."""
    reports = [check_store(index, store) for index, store in stores]
    return (1 if any(r.errors for r in reports) else 0), render(reports, source)
