"""Reference stores filled like ones that have lived for weeks, for the benchmark and the tests.

Rows are generated inside the database (``generate_series`` on PostgreSQL, a recursive CTE on
SQLite) so that ten million history rows load in minutes. The secondary indexes are dropped
before a load and rebuilt after it, then the tables are vacuumed and analysed: what a store
that has lived for a month looks like, with the reference schema's recommended indexes.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex

from exporter.schema import create_reference_schema, metadata, sync_error, sync_history, sync_queue

# Forty kinds of object, a few large and a long tail, as in a CRM with custom objects: with two
# operations and two directions that is 160 series per metric and about 5,000 series in all.
OBJECTS: tuple[str, ...] = (
    "lead",
    "contact",
    "account",
    "opportunity",
    "campaign_member",
    "task",
    "event",
    "case",
    "opportunity_line_item",
    "campaign",
    "quote",
    "quote_line_item",
    "order",
    "order_item",
    "product",
    "pricebook_entry",
    "contract",
    "asset",
    "user",
    "note",
    "attachment",
    "opportunity_contact_role",
    "account_contact_relation",
    "entitlement",
    "work_order",
    "invoice",
    "payment",
    "subscription",
    "partner",
    "territory",
    *(f"custom_{index:02d}" for index in range(1, 11)),
)
ERROR_CODES: tuple[str, ...] = (
    "DUPLICATE_VALUE",
    "REQUEST_LIMIT_EXCEEDED",
    "UNABLE_TO_LOCK_ROW",
    "INVALID_EMAIL_ADDRESS",
    "REQUIRED_FIELD_MISSING",
    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
    "INVALID_CROSS_REFERENCE_KEY",
    "ENTITY_IS_DELETED",
    "STRING_TOO_LONG",
    "INSUFFICIENT_ACCESS_OR_READONLY",
    "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
    "INVALID_FIELD",
)
SLOTS = 1000
"""Values are drawn from a table of this many slots, filled in proportion to their weights."""
HISTORY_PER_SECOND = 10_000_000 / (30 * 86_400)
"""Ten million synced changes a month: history spans ``rows / HISTORY_PER_SECOND`` seconds."""
ERROR_SHARE = 0.05
"""Error rows per history row."""
PENDING_SPAN = 3600.0
"""The pending rows were enqueued within this many seconds before the load."""
CHUNK_ROWS = 1_000_000
POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]
SQLITE = sqlite.dialect()


@dataclass(frozen=True)
class Size:
    """How many rows a store holds."""

    pending: int
    history: int
    errors: int

    @classmethod
    def of(cls, pending: int, history: int) -> Size:
        return cls(pending, history, int(history * ERROR_SHARE))

    @property
    def key(self) -> str:
        return f"p{short(self.pending)}_h{short(self.history)}"

    @property
    def label(self) -> str:
        return f"{short(self.pending)} pending, {short(self.history)} history"


def short(count: int) -> str:
    """1000 -> 1k, 10000000 -> 10M."""
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if count >= scale and count % scale == 0:
            return f"{count // scale}{unit}"
    return str(count)


def weighted_slots(values: Sequence[str], exponent: float = 1.1) -> list[str]:
    """``SLOTS`` values in Zipf proportions, each value at least once."""
    weights = [1.0 / (rank + 1) ** exponent for rank in range(len(values))]
    total = sum(weights)
    counts = [max(1, round(SLOTS * weight / total)) for weight in weights]
    counts[0] += SLOTS - sum(counts)
    return [value for value, count in zip(values, counts, strict=True) for _ in range(count)]


def exporter_settings(interval: float = 15.0) -> dict[str, Any]:
    """The store settings the benchmark runs the exporter with (besides name and url)."""
    return {"interval": interval, "objects": list(OBJECTS), "max_error_codes": 50}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Store(Protocol):
    """A reference store the benchmark can fill and write a trickle into."""

    url: str
    dialect: str

    def fill(self, size: Size, progress: Callable[[str], None]) -> None:
        """Load ``size`` rows into the (empty) reference tables, with indexes and statistics."""

    def trickle(self, history: int, errors: int, pending: int) -> None:
        """Append new history and error rows; enqueue ``pending`` rows and sync as many."""

    def close(self) -> None:
        """Close the writer's connection."""


# --- PostgreSQL ---------------------------------------------------------------------------

_PG_NORMAL = "sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())"
_PG_LATENCY = (
    "CASE WHEN g.u < 0.93 THEN least(86400, exp(ln(3) + 0.8 * g.z))"
    " WHEN g.u < 0.995 THEN least(86400, exp(ln(240) + g.z))"
    " ELSE least(259200, exp(ln(7200) + g.z)) END"
)
_PG_CHANGE = (
    "v.objects[1 + floor(random() * 1000)::int],"
    " (100000000 + floor(random() * 900000000)::bigint)::text,"
    " CASE WHEN random() < 0.35 THEN 'insert' ELSE 'update' END,"
    " CASE WHEN random() < 0.6 THEN 'to_crm' ELSE 'from_crm' END"
)
# %(end)s is the newest row's time; rows lo..hi of n are spread evenly over the span before it.
_PG_SERIES = (
    "(SELECT i, %(end)s::timestamp"
    " - make_interval(secs => (%(n)s::bigint - i) * %(step)s::float8) AS t,"
    f" random() AS u, {_PG_NORMAL} AS z"
    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i) AS g,"
    " (SELECT %(objects)s::text[] AS objects, %(codes)s::text[] AS codes) AS v"
)
PG_INSERT = {
    "sync_history": (
        "INSERT INTO sync_history"
        " (object_type, record_id, operation, direction, enqueued_at, synced_at)"
        f" SELECT {_PG_CHANGE}, g.t - make_interval(secs => {_PG_LATENCY}), g.t"
        f" FROM {_PG_SERIES}"
    ),
    "sync_error": (
        "INSERT INTO sync_error (object_type, record_id, operation, direction, record_name,"
        " error_code, error_message, failed_at)"
        f" SELECT {_PG_CHANGE}, 'Record ' || g.i, c.code,"
        " 'Simulated ' || lower(c.code) || ' failure', g.t"
        f" FROM {_PG_SERIES}, LATERAL (SELECT v.codes[1 + floor(random() * 1000)::int]"
        " || left(g.i::text, 0) AS code) AS c"
    ),
    "sync_queue": (
        "INSERT INTO sync_queue (object_type, record_id, operation, direction, enqueued_at)"
        f" SELECT {_PG_CHANGE}, g.t FROM {_PG_SERIES}"
    ),
}


def conninfo(url: str) -> dict[str, Any]:
    """psycopg.connect() arguments for a SQLAlchemy PostgreSQL URL (options included)."""
    parsed = sa.make_url(url)
    arguments: dict[str, Any] = {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": parsed.username or "postgres",
        "dbname": parsed.database or "postgres",
    }
    if parsed.password:
        arguments["password"] = parsed.password
    options = parsed.query.get("options")
    if options:
        arguments["options"] = options if isinstance(options, str) else " ".join(options)
    return arguments


def pg_connect(url: str, autocommit: bool = True, log_statements: bool = False) -> Any:
    """A bare psycopg connection; its statements stay out of the server log unless asked."""
    connection = psycopg.connect(**conninfo(url), autocommit=autocommit)
    if not log_statements:
        connection.execute("SET log_min_duration_statement = -1")
        if not autocommit:
            connection.commit()
    return connection


def _spans(size: Size, history_per_second: float) -> dict[str, tuple[int, float]]:
    """Rows and span in seconds per table."""
    history_span = max(size.history, 1) / history_per_second
    return {
        "sync_history": (size.history, history_span),
        "sync_error": (size.errors, history_span),
        "sync_queue": (size.pending, PENDING_SPAN),
    }


class PostgresStore:
    """A reference store in one PostgreSQL schema (the URL's search_path)."""

    dialect = "postgresql"

    def __init__(self, url: str, history_per_second: float = HISTORY_PER_SECOND) -> None:
        self.url = url
        self.history_per_second = history_per_second
        self._writer: Any = None
        self._objects = weighted_slots(OBJECTS)
        self._codes = weighted_slots(ERROR_CODES, exponent=1.3)

    def _connection(self) -> Any:
        if self._writer is None:
            self._writer = pg_connect(self.url, autocommit=False)
        return self._writer

    def fill(self, size: Size, progress: Callable[[str], None]) -> None:
        engine = sa.create_engine(self.url)
        try:
            create_reference_schema(engine)
        finally:
            engine.dispose()
        end = utcnow()
        with pg_connect(self.url, autocommit=False) as connection:
            connection.execute("SET maintenance_work_mem = '1GB'")
            connection.execute("SET synchronous_commit = off")
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    connection.execute(f"DROP INDEX IF EXISTS {index.name}")
            connection.commit()
            for name, (rows, span) in _spans(size, self.history_per_second).items():
                for lo in range(1, rows + 1, CHUNK_ROWS):
                    hi = min(rows, lo + CHUNK_ROWS - 1)
                    started = time.perf_counter()
                    connection.execute(
                        PG_INSERT[name],
                        self._parameters(end, rows, span / rows, lo, hi),
                    )
                    connection.commit()
                    progress(
                        f"{name}: rows {lo:,}-{hi:,} of {rows:,}"
                        f" in {time.perf_counter() - started:.1f}s"
                    )
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    started = time.perf_counter()
                    connection.execute(str(CreateIndex(index).compile(dialect=POSTGRESQL)))
                    connection.commit()
                    progress(f"index {index.name} in {time.perf_counter() - started:.1f}s")
        with pg_connect(self.url) as connection:
            for table in metadata.sorted_tables:
                started = time.perf_counter()
                connection.execute(f"VACUUM (ANALYZE) {table.name}")
                progress(f"vacuum {table.name} in {time.perf_counter() - started:.1f}s")

    def _parameters(self, end: datetime, n: int, step: float, lo: int, hi: int) -> dict[str, Any]:
        return {
            "end": end,
            "n": n,
            "step": step,
            "lo": lo,
            "hi": hi,
            "objects": self._objects,
            "codes": self._codes,
        }

    def trickle(self, history: int, errors: int, pending: int) -> None:
        connection = self._connection()
        end = utcnow()
        for table, rows in (("sync_history", history), ("sync_error", errors)):
            if rows:
                connection.execute(PG_INSERT[table], self._parameters(end, rows, 0.01, 1, rows))
        if pending:
            connection.execute(
                "DELETE FROM sync_queue WHERE id IN"
                " (SELECT id FROM sync_queue ORDER BY id LIMIT %(n)s::bigint)",
                {"n": pending},
            )
            connection.execute(
                PG_INSERT["sync_queue"], self._parameters(end, pending, 0.01, 1, pending)
            )
        connection.commit()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# --- SQLite -------------------------------------------------------------------------------

_SQLITE_UNIFORM = "(random() / 18446744073709551616.0 + 0.5)"
_SQLITE_SERIES = (
    "WITH RECURSIVE s(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM s WHERE i < :hi),"
    " g AS (SELECT i, :end_day - (:n - i) * :step_days AS day,"
    f" {_SQLITE_UNIFORM} AS u,"
    f" sqrt(-2 * ln(1 - {_SQLITE_UNIFORM})) * cos(2 * pi() * {_SQLITE_UNIFORM}) AS z,"
    # Slots come from a multiplicative hash of the row number: random() would be evaluated
    # once per join rather than once per row when SQLite flattens the CTE into the join.
    " (((i + :seed) * 2654435761) % 4294967291) % 1000 AS o,"
    " (((i + :seed) * 2246822519) % 4294967279) % 1000 AS c,"
    f" {_SQLITE_UNIFORM} AS op, {_SQLITE_UNIFORM} AS dir,"
    " 100000000 + abs(random()) % 900000000 AS record FROM s)"
)
_SQLITE_CHANGE = (
    "po.value, CAST(g.record AS TEXT),"
    " CASE WHEN g.op < 0.35 THEN 'insert' ELSE 'update' END,"
    " CASE WHEN g.dir < 0.6 THEN 'to_crm' ELSE 'from_crm' END"
)
_SQLITE_LATENCY_DAYS = (
    "(CASE WHEN g.u < 0.93 THEN min(86400, exp(ln(3) + 0.8 * g.z))"
    " WHEN g.u < 0.995 THEN min(86400, exp(ln(240) + g.z))"
    " ELSE min(259200, exp(ln(7200) + g.z)) END) / 86400.0"
)
_SQLITE_TIME = "strftime('%Y-%m-%d %H:%M:%f', {day})"
_SQLITE_FROM = " FROM g JOIN temp.bench_objects AS po ON po.slot = g.o"
SQLITE_INSERT = {
    "sync_history": (
        f"{_SQLITE_SERIES} INSERT INTO sync_history"
        " (object_type, record_id, operation, direction, enqueued_at, synced_at)"
        f" SELECT {_SQLITE_CHANGE},"
        f" {_SQLITE_TIME.format(day=f'g.day - {_SQLITE_LATENCY_DAYS}')},"
        f" {_SQLITE_TIME.format(day='g.day')}{_SQLITE_FROM}"
    ),
    "sync_error": (
        f"{_SQLITE_SERIES} INSERT INTO sync_error (object_type, record_id, operation, direction,"
        " record_name, error_code, error_message, failed_at)"
        f" SELECT {_SQLITE_CHANGE}, 'Record ' || g.i, pc.value,"
        " 'Simulated ' || lower(pc.value) || ' failure',"
        f" {_SQLITE_TIME.format(day='g.day')}{_SQLITE_FROM}"
        " JOIN temp.bench_codes AS pc ON pc.slot = g.c"
    ),
    "sync_queue": (
        f"{_SQLITE_SERIES} INSERT INTO sync_queue"
        " (object_type, record_id, operation, direction, enqueued_at)"
        f" SELECT {_SQLITE_CHANGE}, {_SQLITE_TIME.format(day='g.day')}{_SQLITE_FROM}"
    ),
}


def julian_day(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp() / 86_400.0 + 2_440_587.5


class SqliteStore:
    """A reference store in one SQLite file, in WAL mode so the exporter reads while it grows."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._writer: sqlite3.Connection | None = None
        self._trickles = 0

    def _connection(self) -> sqlite3.Connection:
        if self._writer is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA cache_size = -200000")
            for name, function in (("ln", math.log), ("exp", math.exp), ("sqrt", math.sqrt)):
                try:
                    connection.execute(f"SELECT {name}(1)")
                except sqlite3.OperationalError:  # built without the math functions
                    connection.create_function(name, 1, function, deterministic=True)
            for name, values in (
                ("bench_objects", weighted_slots(OBJECTS)),
                ("bench_codes", weighted_slots(ERROR_CODES, exponent=1.3)),
            ):
                connection.execute(
                    f"CREATE TEMP TABLE {name} (slot INTEGER PRIMARY KEY, value TEXT NOT NULL)"
                )
                connection.executemany(
                    f"INSERT INTO temp.{name} VALUES (?, ?)", list(enumerate(values))
                )
            self._writer = connection
        return self._writer

    def fill(self, size: Size, progress: Callable[[str], None]) -> None:
        engine = sa.create_engine(self.url)
        try:
            create_reference_schema(engine)
        finally:
            engine.dispose()
        connection = self._connection()
        for table in metadata.sorted_tables:
            for index in table.indexes:
                connection.execute(f"DROP INDEX IF EXISTS {index.name}")
        end = julian_day(utcnow())
        for name, (rows, span) in _spans(size, HISTORY_PER_SECOND).items():
            for lo in range(1, rows + 1, CHUNK_ROWS):
                hi = min(rows, lo + CHUNK_ROWS - 1)
                started = time.perf_counter()
                connection.execute("BEGIN")
                connection.execute(
                    SQLITE_INSERT[name],
                    {
                        "lo": lo,
                        "hi": hi,
                        "n": rows,
                        "end_day": end,
                        "step_days": span / rows / 86400,
                        "seed": 0,
                    },
                )
                connection.execute("COMMIT")
                progress(
                    f"{name}: rows {lo:,}-{hi:,} of {rows:,}"
                    f" in {time.perf_counter() - started:.1f}s"
                )
        for table in metadata.sorted_tables:
            for index in table.indexes:
                started = time.perf_counter()
                connection.execute(str(CreateIndex(index).compile(dialect=SQLITE)))
                progress(f"index {index.name} in {time.perf_counter() - started:.1f}s")
        connection.execute("ANALYZE")

    def trickle(self, history: int, errors: int, pending: int) -> None:
        connection = self._connection()
        self._trickles += 1
        arguments = {"lo": 1, "end_day": julian_day(utcnow()), "step_days": 1e-7}
        arguments["seed"] = self._trickles * 1_000_003
        connection.execute("BEGIN IMMEDIATE")
        for table, rows in (("sync_history", history), ("sync_error", errors)):
            if rows:
                connection.execute(
                    SQLITE_INSERT[table],
                    {**arguments, "hi": rows, "n": rows},
                )
        if pending:
            connection.execute(
                "DELETE FROM sync_queue"
                " WHERE id IN (SELECT id FROM sync_queue ORDER BY id LIMIT ?)",
                (pending,),
            )
            connection.execute(
                SQLITE_INSERT["sync_queue"],
                {**arguments, "hi": pending, "n": pending},
            )
        connection.execute("COMMIT")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


TABLES = (sync_queue, sync_history, sync_error)
