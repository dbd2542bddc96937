"""What differs between databases: clock arithmetic, timeouts and read-only sessions."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    Float,
    Integer,
    String,
    and_,
    cast,
    event,
    func,
    literal,
    literal_column,
    not_,
    or_,
    type_coerce,
)
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

Comparison = Literal["<", "<=", ">", ">="]
_COMPARE: dict[Comparison, Callable[[ColumnElement[Any], Any], ColumnElement[bool]]] = {
    "<": lambda left, right: left < right,
    "<=": lambda left, right: left <= right,
    ">": lambda left, right: left > right,
    ">=": lambda left, right: left >= right,
}
# SQLite text may carry a UTC offset, and real zones lie within 14 hours of UTC: the text of
# a stamp is never further than that from the text of its instant in UTC.
_MAX_UTC_OFFSET = timedelta(hours=14)
# julianday() reads text to the nearest millisecond, and its double drifts by some
# microseconds more: nearer than this to a bound, only the exact reading can decide.
_JULIANDAY_ERROR_DAYS = 0.002 / 86400
_UNIX_EPOCH_JULIAN_DAY = 2440587.5
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


class Dialect(ABC):
    """One database's SQL and session settings; chosen once per store from its URL."""

    name: str

    def epoch_seconds(self, timestamp: ColumnElement[Any]) -> ColumnElement[float]:
        """Seconds since 1970 of a timestamp column, naive columns read as UTC."""
        # Coerced, not CAST: CAST(... AS FLOAT) is single precision on MySQL and MariaDB.
        return type_coerce(self._epoch_seconds(timestamp), Float)

    def now_epoch_seconds(self) -> ColumnElement[float]:
        """The database's own clock, in seconds since 1970."""
        return type_coerce(self._now_epoch_seconds(), Float)

    def oldest_epoch_seconds(self, timestamp: ColumnElement[Any]) -> ColumnElement[float]:
        """The earliest of a column's instants (an aggregate), in seconds since 1970."""
        return self.epoch_seconds(func.min(timestamp))

    def compare_instant(
        self, timestamp: ColumnElement[Any], comparison: Comparison, moment: datetime
    ) -> ColumnElement[bool]:
        """``timestamp <comparison> moment`` between instants, through an index on ``timestamp``.

        ``moment`` is aware or naive UTC. PostgreSQL, MySQL and MariaDB compare their timestamp
        types by instant already.
        """
        return _COMPARE[comparison](timestamp, _naive_utc(moment))

    @abstractmethod
    def _epoch_seconds(self, timestamp: ColumnElement[Any]) -> ColumnElement[Any]: ...

    @abstractmethod
    def _now_epoch_seconds(self) -> ColumnElement[Any]: ...

    @abstractmethod
    def configure(self, engine: Engine, query_timeout: float) -> None:
        """Make every connection of ``engine`` read-only, UTC, and bounded by ``query_timeout``."""

    @abstractmethod
    def connect_arguments(self, query_timeout: float) -> dict[str, Any]:
        """Client-side timeouts, so that a stalled network cannot hang a collection."""


class PostgreSQL(Dialect):
    name = "postgresql"

    def _epoch_seconds(self, timestamp: ColumnElement[Any]) -> ColumnElement[Any]:
        # For "timestamp without time zone" the epoch reads the value as UTC, for
        # "timestamptz" it is the true epoch: both are what the contract means.
        # date_part gives double precision; EXTRACT's numeric is several times slower.
        return func.date_part("epoch", timestamp)

    def _now_epoch_seconds(self) -> ColumnElement[Any]:
        # clock_timestamp(), not now(): the collection may run inside one transaction.
        return func.date_part("epoch", func.clock_timestamp())

    def configure(self, engine: Engine, query_timeout: float) -> None:
        milliseconds = _milliseconds(query_timeout)

        @event.listens_for(engine, "connect")
        def _postgresql(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET statement_timeout = {milliseconds}")
                cursor.execute(f"SET lock_timeout = {milliseconds}")
                cursor.execute("SET TIME ZONE 'UTC'")
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                cursor.execute("SET application_name = 'crmsync-exporter'")
            dbapi_connection.commit()

    def connect_arguments(self, query_timeout: float) -> dict[str, Any]:
        seconds = _whole_seconds(query_timeout)
        return {
            "connect_timeout": seconds,
            # Kernel-level bounds on a silent peer: keepalives and unacknowledged data.
            "keepalives": 1,
            "keepalives_idle": seconds,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": int(query_timeout * 2000) + 1000,
        }


class MySQL(Dialect):
    """MySQL and MariaDB."""

    name = "mysql"

    def _epoch_seconds(self, timestamp: ColumnElement[Any]) -> ColumnElement[Any]:
        # The session runs with time_zone '+00:00' (see configure), so UNIX_TIMESTAMP
        # reads DATETIME columns as UTC too.
        return func.unix_timestamp(timestamp)

    def _now_epoch_seconds(self) -> ColumnElement[Any]:
        return func.unix_timestamp(literal_column("CURRENT_TIMESTAMP(6)"))

    def configure(self, engine: Engine, query_timeout: float) -> None:
        milliseconds = _milliseconds(query_timeout)

        @event.listens_for(engine, "connect")
        def _mysql(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                # The dialect learns MariaDB from MySQL only after this event: ask the server.
                cursor.execute("SELECT VERSION()")
                is_mariadb = "mariadb" in str(cursor.fetchone()[0]).lower()
                cursor.execute("SET time_zone = '+00:00'")
                if is_mariadb:
                    cursor.execute(f"SET SESSION max_statement_time = {milliseconds / 1000:.3f}")
                else:
                    cursor.execute(f"SET SESSION max_execution_time = {milliseconds}")
                cursor.execute(f"SET SESSION lock_wait_timeout = {max(1, milliseconds // 1000)}")
                cursor.execute("SET SESSION TRANSACTION READ ONLY")
            dbapi_connection.commit()

    def connect_arguments(self, query_timeout: float) -> dict[str, Any]:
        seconds = _whole_seconds(query_timeout)
        return {
            "connect_timeout": seconds,
            "read_timeout": seconds * 2 + 1,
            "write_timeout": seconds * 2 + 1,
        }


class SQLite(Dialect):
    """SQLite, whose timestamps are ISO 8601 text, maybe with an offset."""

    name = "sqlite"

    def _epoch_seconds(self, timestamp: ColumnElement[Any]) -> ColumnElement[Any]:
        return (func.julianday(timestamp) - _UNIX_EPOCH_JULIAN_DAY) * 86400.0

    def _now_epoch_seconds(self) -> ColumnElement[Any]:
        # 'now' is kept to the millisecond: rounding drops julianday's drift, so that a row
        # stamped in the same millisecond compares equal to it, not later.
        return func.round((func.julianday("now") - _UNIX_EPOCH_JULIAN_DAY) * 86400.0, 3)

    def oldest_epoch_seconds(self, timestamp: ColumnElement[Any]) -> ColumnElement[float]:
        # Text with differing UTC offsets: the smallest string is not always the earliest.
        return func.min(self.epoch_seconds(timestamp))

    def compare_instant(
        self, timestamp: ColumnElement[Any], comparison: Comparison, moment: datetime
    ) -> ColumnElement[bool]:
        """Text compares with text, where `09:00:00` sorts before `09:00:00.000000`, `T` after
        a space, and an offset is just more characters: see below."""
        compare = _COMPARE[comparison]
        naive = _naive_utc(moment)
        after = comparison in (">", ">=")
        # The index narrows the rows down by text. The text bound lies beyond any offset and a
        # second further, with the separator that sorts first (a space) for a lower bound and
        # last (`T`) for an upper one: no text of a stamp on the right side falls outside it.
        if after:
            text_bound = (naive - _MAX_UTC_OFFSET - timedelta(seconds=1)).strftime(
                "%Y-%m-%d %H:%M:%S"
            )
            near = type_coerce(timestamp, String) > literal(text_bound, String)
        else:
            text_bound = (naive + _MAX_UTC_OFFSET + timedelta(seconds=1)).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
            near = type_coerce(timestamp, String) < literal(text_bound, String)
        # Then julianday() settles every stamp but those within its error of the bound, which
        # the exact reading decides. Most stamps read lie before the bound (the past): each of
        # those costs one julianday() call, whichever the comparison.
        micros = (naive.replace(tzinfo=UTC) - _UNIX_EPOCH) // timedelta(microseconds=1)
        julian_day = micros / 86_400_000_000 + _UNIX_EPOCH_JULIAN_DAY
        clearly_before = func.julianday(timestamp) < julian_day - _JULIANDAY_ERROR_DAYS
        clearly_after = func.julianday(timestamp) > julian_day + _JULIANDAY_ERROR_DAYS
        exact = compare(_sqlite_epoch_micros(timestamp), micros)
        if after:
            return and_(near, not_(clearly_before), or_(clearly_after, exact))
        return and_(near, or_(clearly_before, and_(not_(clearly_after), exact)))

    def configure(self, engine: Engine, query_timeout: float) -> None:
        milliseconds = _milliseconds(query_timeout)

        @event.listens_for(engine, "connect")
        def _sqlite(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA query_only = ON")
            dbapi_connection.execute(f"PRAGMA busy_timeout = {milliseconds}")
            # SQLite stores whatever bytes a writer gave it; one invalid UTF-8 value must
            # not fail every cycle (a C-level partial: no Python frame per value).
            dbapi_connection.text_factory = functools.partial(
                str, encoding="utf-8", errors="replace"
            )

        @event.listens_for(engine, "before_cursor_execute")
        def _deadline(conn: Any, _cursor: Any, *_args: Any) -> None:
            # SQLite runs inside this process: a progress handler is its statement timeout.
            deadline = time.monotonic() + query_timeout
            raw = conn.connection.driver_connection
            raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)

    def connect_arguments(self, query_timeout: float) -> dict[str, Any]:
        return {"timeout": query_timeout, "check_same_thread": False}


def _sqlite_epoch_micros(timestamp: ColumnElement[Any]) -> ColumnElement[int]:
    """Microseconds since 1970 of ISO 8601 text, as integers: exact where julianday rounds.

    The text is `YYYY-MM-DD?HH:MM:SS`, then maybe a fraction of any length, then maybe an
    offset (`Z`, `+HH:MM`): whole seconds are read with the offset and the fraction apart.
    """
    rest = func.substr(timestamp, 20)
    offset = func.ltrim(rest, ".0123456789")
    fraction = func.substr(func.substr(rest, 1, func.length(rest) - func.length(offset)), 2)
    whole_seconds = func.strftime("%s", func.substr(timestamp, 1, 19).concat(offset))
    return type_coerce(
        cast(whole_seconds, Integer) * 1_000_000
        + cast(func.substr(fraction.concat("000000"), 1, 6), Integer),
        Integer,
    )


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _whole_seconds(seconds: float) -> int:
    return max(1, int(seconds + 0.999))


_DIALECTS: dict[str, Dialect] = {
    "postgresql": PostgreSQL(),
    "mysql": MySQL(),
    "mariadb": MySQL(),
    "sqlite": SQLite(),
}


def dialect_for(backend: str) -> Dialect:
    """The dialect of a SQLAlchemy backend name (``url.get_backend_name()``)."""
    try:
        return _DIALECTS[backend]
    except KeyError:
        raise UnsupportedDatabaseError(backend) from None


class UnsupportedDatabaseError(Exception):
    """The store's database is none of SQLite, PostgreSQL, MySQL or MariaDB."""

    def __init__(self, dialect: str) -> None:
        super().__init__(
            f"database {dialect!r} is not supported (use PostgreSQL, MySQL, MariaDB or SQLite)"
        )


def interrupt_connection(dbapi_connection: Any) -> None:
    """End whatever ``dbapi_connection`` is waiting for, from another thread.

    psycopg has no read timeout: on a network that went silent it would wait forever.
    Shutting the socket down wakes it with an error, and the pool replaces the connection.
    """
    if isinstance(dbapi_connection, sqlite3.Connection):
        with contextlib.suppress(sqlite3.Error):
            dbapi_connection.interrupt()
        return
    try:
        if getattr(dbapi_connection, "pgconn", None) is not None:  # psycopg
            if dbapi_connection.closed:
                return
            fd = int(dbapi_connection.pgconn.socket)
        else:  # PyMySQL
            sock = getattr(dbapi_connection, "_sock", None)
            if sock is None:
                return
            fd = sock.fileno()
    except Exception:  # the driver already knows the connection is gone
        return
    if fd < 0:
        return
    # Through a duplicate descriptor: the shutdown ends the connection for both, and the
    # driver's own descriptor stays the driver's to close.
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as duplicate:
        duplicate.shutdown(socket.SHUT_RDWR)
