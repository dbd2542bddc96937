"""The dashboards' SQL: the store's own rows, labelled as the exporter labels them.

Nothing a person types or a URL carries reaches the SQL as SQL text. Every variable is
interpolated with Grafana's `queryparam` (or `percentencode`) format, whose output holds only
[A-Za-z0-9-_.~%=&] and, from @grafana/scenes 5.20 on, [@:$,;] (it is then the variable's URL
state, written by @grafana/data's urlUtil): all harmless inside a string literal, whatever the
server's settings. The query percent-decodes it itself (a `params` CTE) and compares the
decoded values as data. Grafana's `sqlstring` format is not used: it doubles single quotes but
leaves backslashes alone, so on MySQL and MariaDB (backslash escapes on by default) a value
such as \\' ends the string literal.

Labels follow exporter.labels: the same whitespace stripped, `unknown` for blank values, the
same length cut, objects lower-cased, operations and directions through the configured
mapping. Which objects and error codes the exporter folded into `other` (over their caps) only
the exporter knows: the dashboards pass the values it reports (hidden variables read from
Prometheus). Once it reports `other` (its cap is full), the SQL calls every value it does not
report `other`, as the exporter would. Until then a value it does not report keeps its name: a
value it has not seen since it started (it counts from its first read of the store, so a code
that failed only before then has no series), which it would report under that name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.dialects.mysql.base import MySQLDialect
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import Dialect

from exporter.config import RowFilter, StoreConfig
from exporter.labels import MAX_LENGTH, OTHER, UNKNOWN, WHITESPACE

SqlDialect = Literal["postgresql", "mysql"]

ALL_VALUES = ("All", "$__all")
""""All" as the SQL receives it: scenes before 5.20 write its text, later ones its URL value."""
REPORTED_OBJECTS = "reported_objects"
REPORTED_ERROR_CODES = "reported_error_codes"
"""Hidden variables: every object and error code value the exporter reports ("All" of them)."""
FILTERS = ("object", "operation", "direction", "error_code")
TOP_CODES = 20


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

    def binary(self, expression: str) -> str:
        """Compared byte by byte: MySQL's default collations ignore case and trailing spaces."""
        return expression if self.name == "postgresql" else f"CAST({expression} AS BINARY)"

    def same(self, left: str, right: str) -> str:
        return f"{self.binary(left)} = {self.binary(right)}"

    def one_of(self, expression: str, values: Iterable[str]) -> str:
        listed = ", ".join(self.binary(self.literal(value)) for value in values)
        return f"{self.binary(expression)} IN ({listed})"

    def contains(self, haystack: str, needle: str) -> str:
        """``needle`` occurs in ``haystack`` (both as given; the caller lower-cases)."""
        if self.name == "postgresql":
            return f"strpos({haystack}, {needle}) > 0"
        return f"LOCATE({self.binary(needle)}, {self.binary(haystack)}) > 0"

    def concat(self, *parts: str) -> str:
        if self.name == "postgresql":
            return "(" + " || ".join(parts) + ")"
        return f"CONCAT({', '.join(parts)})"

    def text(self, column: str) -> str:
        """The column as text, stripped of exporter.labels.WHITESPACE at both ends."""
        if self.name == "postgresql":
            characters = " || ".join(f"chr({ord(c)})" for c in WHITESPACE)
            return f"btrim(CAST({column} AS text), {characters})"
        characters = f"CHAR({', '.join(str(ord(c)) for c in WHITESPACE)} USING utf8mb4)"
        return (
            f"REGEXP_REPLACE(CAST({column} AS CHAR CHARACTER SET utf8mb4), "
            f"CONCAT('^[', {characters}, ']+|[', {characters}, ']+$'), '')"
        )

    def label_text(self, column: str, lower: bool) -> str:
        """exporter.labels.label_text in SQL."""
        stripped = self.text(column)
        cut = f"LEFT({stripped}, {MAX_LENGTH})"
        return (
            f"CASE WHEN coalesce({stripped}, '') = '' THEN {self.literal(UNKNOWN)}"
            f" ELSE {f'lower({cut})' if lower else cut} END"
        )

    def epoch(self, column: str, column_type: str) -> str:
        """Unix seconds of a stored UTC timestamp, whatever the session's time zone.

        ``column_type`` is an SQL expression naming the column's type on MySQL, where a
        TIMESTAMP column reaches queries in the session's zone and a DATETIME one as stored.
        """
        if self.name == "postgresql":
            # timestamp: its nominal value, read as UTC; timestamptz: the instant itself.
            return f"date_part('epoch', {column})"
        return (
            f"CASE WHEN {column_type} = 'timestamp' THEN UNIX_TIMESTAMP({column})"
            f" ELSE TIMESTAMPDIFF(MICROSECOND, '1970-01-01', {column}) / 1e6 END"
        )

    def now_epoch(self) -> str:
        if self.name == "postgresql":
            return "date_part('epoch', clock_timestamp())"
        return "UNIX_TIMESTAMP(NOW(6))"

    def first_group(self, text: str, pattern: str) -> str:
        """What ``pattern``'s first group matches in ``text`` (NULL when nothing)."""
        if self.name == "postgresql":
            # substring(... from pattern) gives the first parenthesized group.
            return f"substring({text} from {self.literal(pattern)})"
        # REGEXP_SUBSTR gives the whole match; replacing it by the group leaves the group.
        return (
            f"REGEXP_REPLACE(REGEXP_SUBSTR({text}, {self.literal(pattern)}),"
            f" {self.literal(pattern)}, '\\\\1')"
        )

    def with_(self, ctes: Sequence[str]) -> str:
        return "WITH\n" + ",\n".join(ctes)

    def select(self) -> str:
        """The main query's SELECT; on MySQL 8 it lifts the 1 KiB GROUP_CONCAT default."""
        if self.name == "postgresql":
            return "SELECT"
        # A comment to MariaDB (whose default is 1 MiB); a statement-level setting on MySQL.
        return "SELECT /*+ SET_VAR(group_concat_max_len = 16777216) */"


def sql_for(dialect: SqlDialect) -> _Sql:
    if dialect == "postgresql":
        return _Sql("postgresql", PGDialect())  # type: ignore[no-untyped-call]
    return _Sql("mysql", MySQLDialect())


def query_string(variables: Sequence[str], lists: Sequence[str] = ()) -> str:
    """What the SQL decodes: ``variables`` as URL parameters, ``lists`` whole ("All" of them).

    A list goes through `percentencode`, which writes every option of a variable with "All"
    selected as ``{a,b,c}``; `queryparam` would write "All" itself.
    """
    parts = [f"${{{name}:queryparam}}" for name in variables]
    parts += [f"var-{name}=${{{name}:percentencode}}" for name in lists]
    return "&".join(parts)


def _params_cte(sql: _Sql, text: str, max_length: int) -> list[str]:
    """CTEs ending in ``params(variable, value)``: one row per decoded URL parameter.

    ``variable`` is ``var-<name>``; a multi-value variable gives one row per value.
    """
    if sql.name == "postgresql":
        return [
            "params (variable, value) AS (\n"
            "  SELECT split_part(item, '=', 1),\n"
            "    convert_from(coalesce((\n"
            "      SELECT string_agg(CASE WHEN left(m[1], 1) = '%'\n"
            "          THEN decode(substr(m[1], 2), 'hex') ELSE convert_to(m[1], 'UTF8') END,\n"
            "        ''::bytea ORDER BY n)\n"
            "      FROM regexp_matches(substr(item, strpos(item, '=') + 1),\n"
            "        '%[0-9A-Fa-f]{2}|[^%]', 'g') WITH ORDINALITY AS t (m, n)\n"
            "    ), ''::bytea), 'UTF8')\n"
            f"  FROM unnest(string_to_array('{text}', '&')) AS item\n"
            "  WHERE strpos(item, '=') > 0\n"
            ")"
        ]
    # MySQL and MariaDB: one row per character, numbered without recursion (MariaDB stops a
    # recursive CTE after 1000 rounds by default, silently), cut into items by running sums.
    # The text is binary: SUBSTRING on a multi-byte string would scan it from the start.
    digits = 5 if max_length <= 100_000 else 6
    numbers = " + ".join(f"{10**i} * d{i}.d" for i in range(digits))
    tables = ", ".join(f"digits AS d{i}" for i in range(digits))
    return [
        "digits (d) AS (\n  " + " UNION ALL ".join(f"SELECT {d}" for d in range(10)) + "\n)",
        f"query_string (qs) AS (SELECT CAST(CONCAT('&', '{text}') AS BINARY))",
        "query_char (p, c, item) AS (\n"
        "  SELECT n.p, SUBSTRING(qs, n.p, 1),\n"
        "    SUM(SUBSTRING(qs, n.p, 1) = '&') OVER (ORDER BY n.p ROWS UNBOUNDED PRECEDING)\n"
        f"  FROM (SELECT 1 + {numbers} AS p FROM {tables}) AS n\n"
        "  CROSS JOIN query_string\n"
        "  WHERE n.p <= LENGTH(qs)\n"
        ")",
        "query_part (p, c, item, part) AS (\n"
        "  SELECT p, c, item,\n"
        "    SUM(c = '=') OVER (PARTITION BY item ORDER BY p ROWS UNBOUNDED PRECEDING)"
        " - (c = '=')\n"
        "  FROM query_char\n"
        ")",
        "params (variable, value) AS (\n"
        "  SELECT GROUP_CONCAT(CASE WHEN part = 0 AND c NOT IN ('&', '=') THEN c END\n"
        "      ORDER BY p SEPARATOR ''),\n"
        "    CONVERT(UNHEX(COALESCE(GROUP_CONCAT(CASE WHEN part > 0 THEN CASE\n"
        "      WHEN c = '%' THEN SUBSTRING(qs, p + 1, 2)\n"
        "      WHEN SUBSTRING(qs, p - 1, 1) = '%' OR SUBSTRING(qs, p - 2, 1) = '%' THEN NULL\n"
        "      ELSE HEX(c) END END ORDER BY p SEPARATOR ''), '')) USING utf8mb4)\n"
        "  FROM query_part CROSS JOIN query_string\n"
        "  GROUP BY item HAVING SUM(c = '=') > 0\n"
        ")",
    ]


@dataclass(frozen=True)
class _Source:
    """Where one kind of row lives: its tables, the rows of them that count, and its columns.

    ``columns`` are column names, or None where the store has none (``constants`` then give
    the label, or the value is NULL). Rows that move on to an archive are read from both.
    """

    tables: tuple[str, ...]
    where: RowFilter | None
    columns: Mapping[str, str | None]


class StoreSql:
    """The dashboards' SQL for one store's mapping, in one dialect."""

    def __init__(self, store: StoreConfig, dialect: SqlDialect) -> None:
        self.store = store
        self.sql = sql_for(dialect)
        # Generous: every reported object and code, each up to 64 characters written as
        # %XX triples, plus the filters and the search text.
        self.max_query_length = (store.max_objects + store.max_error_codes) * 200 + 20_000
        constants = store.mapping.constants
        self.constants = {
            "object": constants.object_type,
            "operation": constants.operation,
            "direction": constants.direction,
        }
        self.objects = store.objects if constants.object_type is None else (constants.object_type,)
        self.operations: Mapping[str, Sequence[str]] = (
            store.operations
            if constants.operation is None
            else {constants.operation: (constants.operation,)}
        )
        self.directions: Mapping[str, Sequence[str]] = (
            store.directions
            if constants.direction is None
            else {constants.direction: (constants.direction,)}
        )
        queue, _, errors = store.mapping.roles()
        if errors is None:
            raise ValueError(
                f"store {store.name!r} keeps no errors table: the dashboards' error views "
                "need one (mapping.errors)"
            )
        self.code_pattern = errors.error_code_pattern if errors.error_code is None else None
        self.errors = _Source(
            (errors.table,)
            if errors.archive_table is None
            else (errors.table, errors.archive_table),
            errors.filter,
            {
                "id": errors.id,
                "time": errors.failed_at,
                "object": errors.object_type,
                "record_id": errors.record_id,
                "record_name": errors.record_name,
                "operation": errors.operation,
                "direction": errors.direction,
                "error_code": errors.error_code or errors.error_message,
                "error_message": errors.error_message,
            },
        )
        self.queue = _Source(
            (queue.table,),
            queue.filter,
            {
                "time": queue.enqueued_at,
                "object": queue.object_type,
                "record_id": queue.record_id,
                "operation": queue.operation,
                "direction": queue.direction,
            },
        )

    def _columns(self, source: _Source) -> dict[str, str]:
        """Each column as SQL: quoted, a constant label, or NULL."""
        columns = {}
        for key, name in source.columns.items():
            constant = self.constants.get(key)
            if constant is not None:
                columns[key] = self.sql.literal(constant)
            elif name is None:
                columns[key] = "NULL"
            else:
                columns[key] = self.sql.ident(name)
        if self.code_pattern is not None and source is self.errors:
            columns["error_code"] = self.sql.first_group(columns["error_code"], self.code_pattern)
        return columns

    def _from(self, source: _Source) -> str:
        """The FROM of a source: its table, or its table and archive as one."""
        if len(source.tables) == 1:
            return self.sql.ident(source.tables[0])
        read = {
            name
            for key, name in source.columns.items()
            if name is not None and self.constants.get(key) is None
        }
        if source.where is not None:
            read.add(source.where.column)
        names = ", ".join(self.sql.ident(name) for name in sorted(read))
        branches = "\n    UNION ALL ".join(
            f"SELECT {names} FROM {self.sql.ident(table)}" for table in source.tables
        )
        return f"(\n    {branches}\n  ) AS source_rows"

    def _where(self, source: _Source) -> str | None:
        if source.where is None:
            return None
        return f"{self.sql.ident(source.where.column)} IN ({self._list(source.where.values)})"

    def _list(self, values: Iterable[str]) -> str:
        return ", ".join(self.sql.literal(value) for value in values)

    # --- labels ---------------------------------------------------------------------------

    def _mapped(self, text: str, mapping: Mapping[str, Sequence[str]]) -> str:
        """exporter.labels.MappedLabel: the label whose store values include ``text``."""
        branches = "".join(
            f"\n      WHEN {self.sql.one_of(text, sorted({v.lower() for v in values}))}"
            f" THEN {self.sql.literal(label)}"
            for label, values in mapping.items()
        )
        return f"CASE{branches}\n      ELSE {self.sql.literal(OTHER)} END"

    def _reported(self, text: str, reported: str) -> str:
        """``text`` is among the values of a reported list (``{a,b}``, ``a`` or nothing)."""
        sql = self.sql
        inner = (
            f"CASE WHEN {reported} LIKE '{{%}}' THEN "
            f"SUBSTRING({reported}, 2, CHAR_LENGTH({reported}) - 2) ELSE coalesce({reported}, '')"
            " END"
        )
        # Searched, not split: a value with a comma in it is found too.
        comma = "','"
        listed = sql.concat(comma, inner, comma)
        return sql.contains(listed, sql.concat(comma, text, comma))

    def _capped(self, text: str, reported: str, preset: Sequence[str] = ()) -> str:
        """exporter.labels.CappedLabel: the text itself, unless the exporter folds values into
        other (it reports other) and does not report this one."""
        folds = self._reported(self.sql.literal(OTHER), reported)
        kept = f"(NOT {folds} OR {self._reported(text, reported)})"
        if preset:
            kept = f"({self.sql.one_of(text, preset)} OR {kept})"
        return f"CASE WHEN {kept} THEN {text} ELSE {self.sql.literal(OTHER)} END"

    # --- the variables ---------------------------------------------------------------------

    def _choice_cte(self, extra: Sequence[str] = ()) -> str:
        """One row: the search text, the page and the reported lists, decoded."""
        sql = self.sql

        def value_of(variable: str) -> str:
            named = sql.same("variable", sql.literal(f"var-{variable}"))
            return f"max(CASE WHEN {named} THEN value END)"

        page = value_of("page")
        if sql.name == "postgresql":
            page_number = f"CASE WHEN {page} ~ '^[0-9]{{1,6}}$' THEN CAST({page} AS integer) END"
        else:
            page_number = (
                f"CASE WHEN {page} REGEXP '^[0-9]{{1,6}}$' THEN CAST({page} AS UNSIGNED) END"
            )
        fields = [
            f"lower(coalesce({value_of('search')}, '')) AS needle",
            f"greatest(coalesce({page_number}, 1), 1) AS page",
            f"{value_of(REPORTED_OBJECTS)} AS reported_objects",
            f"{value_of(REPORTED_ERROR_CODES)} AS reported_codes",
            *extra,
        ]
        return "choice AS (\n  SELECT\n    " + ",\n    ".join(fields) + "\n  FROM params\n)"

    def _selected(self, variable: str, label: str) -> str:
        """``label`` is among the values selected in ``variable``, or "All" is selected."""
        sql = self.sql
        named = sql.same("params.variable", sql.literal(f"var-{variable}"))
        # "$__all" is spelt in two pieces: as one, it would read as a variable to Grafana.
        listed = [sql.literal(ALL_VALUES[0]), sql.concat("'$'", sql.literal(ALL_VALUES[1][1:]))]
        every = f"{sql.binary('params.value')} IN ({', '.join(sql.binary(v) for v in listed)})"
        return (
            f"EXISTS (SELECT 1 FROM params WHERE {named}\n"
            f"    AND ({every} OR {sql.same('params.value', label)}))"
        )

    # --- the errors browser ------------------------------------------------------------------

    def _failures(self) -> list[str]:
        """CTEs up to ``failures``: failed attempts in the time range with label columns."""
        sql = self.sql
        source = self.errors
        c = self._columns(source)
        status = self._where(source)
        where = [f"$__timeFilter({c['time']})"] + ([status] if status else [])
        texts = (
            "failure_text AS (\n  SELECT\n    "
            + ",\n    ".join(
                [
                    f"{c['id']} AS id",
                    f"{c['time']} AS {sql.alias('time')}",
                    f"{sql.label_text(c['object'], lower=True)} AS object",
                    f"{c['record_id']} AS record_id",
                    f"{c['record_name']} AS record_name",
                    f"{sql.label_text(c['operation'], lower=True)} AS operation_text",
                    f"{sql.label_text(c['direction'], lower=True)} AS direction_text",
                    f"{sql.label_text(c['error_code'], lower=False)} AS error_code",
                    f"{c['error_message']} AS error_message",
                ]
            )
            + f"\n  FROM {self._from(source)}\n  WHERE {' AND '.join(where)}\n)"
        )
        labelled = (
            "failures AS (\n  SELECT t.*,\n    "
            + ",\n    ".join(
                [
                    f"{self._capped('t.object', 'choice.reported_objects', self.objects)}"
                    " AS object_label",
                    f"{self._mapped('t.operation_text', self.operations)} AS operation",
                    f"{self._mapped('t.direction_text', self.directions)} AS direction",
                    f"{self._capped('t.error_code', 'choice.reported_codes')} AS code_label",
                ]
            )
            + "\n  FROM failure_text AS t CROSS JOIN choice\n)"
        )
        return [texts, labelled]

    def _matching(self, with_code: bool) -> str:
        sql = self.sql
        search = "\n      OR ".join(
            sql.contains(f"lower(coalesce(f.{column}, ''))", "choice.needle")
            for column in ("record_id", "record_name", "error_code", "error_message")
        )
        filters = [
            self._selected("object", "f.object_label"),
            self._selected("operation", "f.operation"),
            self._selected("direction", "f.direction"),
        ]
        if with_code:
            filters.append(self._selected("error_code", "f.code_label"))
        filters.append(f"(choice.needle = ''\n      OR {search})")
        return (
            "matching AS (\n  SELECT f.*\n  FROM failures AS f CROSS JOIN choice\n  WHERE "
            + "\n    AND ".join(filters)
            + "\n)"
        )

    def _errors_ctes(self, with_code: bool = True) -> list[str]:
        sql = self.sql
        text = query_string([*FILTERS, "search", "page"], [REPORTED_OBJECTS, REPORTED_ERROR_CODES])
        return [
            *_params_cte(sql, text, self.max_query_length),
            self._choice_cte(),
            *self._failures(),
            self._matching(with_code),
        ]

    def failed_records(self, page_size: int) -> str:
        """The errors browser: one page of the matching failed attempts, newest first."""
        sql = self.sql
        size = int(page_size)
        return (
            sql.with_(self._errors_ctes())
            + f"\n{sql.select()} p.{sql.alias('time')}, p.object, p.record_id, p.record_name,"
            " p.operation, p.direction,\n  p.error_code, p.error_message"
            "\nFROM (\n  SELECT m.*,"
            f" row_number() OVER (ORDER BY m.{sql.alias('time')} DESC, m.id DESC) AS n"
            "\n  FROM matching AS m\n) AS p CROSS JOIN choice"
            f"\nWHERE p.n > (choice.page - 1) * {size} AND p.n <= choice.page * {size}"
            "\nORDER BY p.n"
        )

    def failed_count(self, page_size: int) -> str:
        """How many failed attempts match, and on how many pages the browser shows them."""
        sql = self.sql
        size = int(page_size)
        return (
            sql.with_(self._errors_ctes())
            + f"\n{sql.select()} count(*) AS {sql.alias('matching failed records')},"
            f" CEILING(count(*) / {float(size)}) AS {sql.alias('pages')}"
            "\nFROM matching"
        )

    def top_error_codes(self) -> str:
        """The codes of the matching failures (any code): count, share, last seen, an example."""
        sql = self.sql
        time = sql.alias("time")
        return (
            sql.with_(self._errors_ctes(with_code=False))
            + f"\n{sql.select()} t.code_label AS {sql.alias('error code')},"
            f" t.failures AS {sql.alias('failures')},"
            f"\n  t.failures / t.total AS {sql.alias('share')},"
            f" t.{time} AS {sql.alias('last seen')},"
            f" t.error_message AS {sql.alias('example message')}"
            "\nFROM (\n  SELECT m.code_label, m.error_message, m." + time + ","
            "\n    count(*) OVER (PARTITION BY m.code_label) AS failures,"
            "\n    1e0 * count(*) OVER () AS total,"
            f"\n    row_number() OVER (PARTITION BY m.code_label ORDER BY m.{time} DESC,"
            " m.id DESC) AS n"
            "\n  FROM matching AS m\n) AS t"
            f"\nWHERE t.n = 1\nORDER BY t.failures DESC, t.code_label\nLIMIT {TOP_CODES}"
        )

    # --- the object detail -------------------------------------------------------------------

    def oldest_pending(self, per_operation: int) -> str:
        """The oldest waiting changes of one object, the first few of each operation."""
        sql = self.sql
        source = self.queue
        c = self._columns(source)
        status = self._where(source)
        where = f"\n  WHERE {status}" if status else ""
        column_type = "'timestamp'"
        extra: list[str] = []
        if sql.name == "mysql":
            schema, _, table = source.tables[0].rpartition(".")
            queue_time = str(source.columns["time"])
            owner = sql.literal(schema) if schema else "DATABASE()"
            extra.append(
                "(SELECT lower(DATA_TYPE) FROM information_schema.COLUMNS"
                f" WHERE TABLE_SCHEMA = {owner} AND TABLE_NAME = {sql.literal(table)}"
                f" AND COLUMN_NAME = {sql.literal(queue_time)}) AS time_type"
            )
            column_type = "choice.time_type"
        text = query_string(["object", "direction"], [REPORTED_OBJECTS])
        queue = (
            "queue_text AS (\n  SELECT\n    "
            + ",\n    ".join(
                [
                    f"{c['time']} AS {sql.alias('time')}",
                    f"{sql.label_text(c['object'], lower=True)} AS object",
                    f"{c['record_id']} AS record_id",
                    f"{sql.label_text(c['operation'], lower=True)} AS operation_text",
                    f"{sql.label_text(c['direction'], lower=True)} AS direction_text",
                    f"greatest(0, {sql.now_epoch()} - {sql.epoch(c['time'], column_type)}) AS age",
                ]
            )
            + f"\n  FROM {self._from(source)} CROSS JOIN choice{where}\n)"
        )
        labelled = (
            "q AS (\n  SELECT t.*,\n    "
            + ",\n    ".join(
                [
                    f"{self._capped('t.object', 'choice.reported_objects', self.objects)}"
                    " AS object_label",
                    f"{self._mapped('t.operation_text', self.operations)} AS operation",
                    f"{self._mapped('t.direction_text', self.directions)} AS direction",
                ]
            )
            + "\n  FROM queue_text AS t CROSS JOIN choice\n)"
        )
        time = sql.alias("time")
        parts = []
        for operation in self.operations:
            parts.append(
                f"  (SELECT q.{time}, q.record_id, q.operation, q.direction, q.age\n"
                f"   FROM q\n   WHERE {sql.same('q.operation', sql.literal(operation))}\n"
                f"     AND {self._selected('object', 'q.object_label')}\n"
                f"     AND {self._selected('direction', 'q.direction')}\n"
                f"   ORDER BY q.{time}\n   LIMIT {int(per_operation)})"
            )
        ctes = [
            *_params_cte(sql, text, self.max_query_length),
            self._choice_cte(extra),
            queue,
            labelled,
        ]
        return (
            sql.with_(ctes)
            + f"\n{sql.select()} p.{time} AS enqueued_at, p.record_id, p.operation, p.direction,"
            f" p.age AS {sql.alias('age')}\nFROM (\n"
            + "\n  UNION ALL\n".join(parts)
            + f"\n) AS p\nORDER BY p.{time}"
        )
