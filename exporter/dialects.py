"""What differs between databases: clock arithmetic, timeouts and read-only sessions."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sqlite3
import time
from typing import Any

from sqlalchemy import Float, event, func, literal_column, type_coerce
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement


def epoch_seconds(dialect: str, timestamp: ColumnElement[Any]) -> ColumnElement[float]:
    """Seconds since 1970 of a timestamp column, naive columns read as UTC."""
    # Coerced, not CAST: CAST(... AS FLOAT) is single precision on MySQL and MariaDB.
    return type_coerce(_epoch_seconds(dialect, timestamp), Float)


def _epoch_seconds(dialect: str, timestamp: ColumnElement[Any]) -> ColumnElement[Any]:
    if dialect == "postgresql":
        # For "timestamp without time zone" the epoch reads the value as UTC, for
        # "timestamptz" it is the true epoch: both are what the contract means.
        # date_part gives double precision; EXTRACT's numeric is several times slower.
        return func.date_part("epoch", timestamp)
    if dialect in ("mysql", "mariadb"):
        # The session runs with time_zone '+00:00' (see configure_engine), so
        # UNIX_TIMESTAMP reads DATETIME columns as UTC too.
        return func.unix_timestamp(timestamp)
    if dialect == "sqlite":
        return (func.julianday(timestamp) - 2440587.5) * 86400.0
    raise UnsupportedDatabaseError(dialect)


def now_epoch_seconds(dialect: str) -> ColumnElement[float]:
    """The database's own clock, in seconds since 1970."""
    return type_coerce(_now_epoch_seconds(dialect), Float)


def _now_epoch_seconds(dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        # clock_timestamp(), not now(): the collection may run inside one transaction.
        return func.date_part("epoch", func.clock_timestamp())
    if dialect in ("mysql", "mariadb"):
        return func.unix_timestamp(literal_column("CURRENT_TIMESTAMP(6)"))
    if dialect == "sqlite":
        return (func.julianday("now") - 2440587.5) * 86400.0
    raise UnsupportedDatabaseError(dialect)


class UnsupportedDatabaseError(Exception):
    """The store's database is none of SQLite, PostgreSQL, MySQL or MariaDB."""

    def __init__(self, dialect: str) -> None:
        super().__init__(
            f"database {dialect!r} is not supported (use PostgreSQL, MySQL, MariaDB or SQLite)"
        )


def configure_engine(engine: Engine, query_timeout: float) -> None:
    """Make every connection of ``engine`` read-only, UTC, and bounded by ``query_timeout``."""
    name = engine.dialect.name
    milliseconds = max(1, int(query_timeout * 1000))

    if name == "postgresql":

        @event.listens_for(engine, "connect")
        def _postgresql(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET statement_timeout = {milliseconds}")
                cursor.execute(f"SET lock_timeout = {milliseconds}")
                cursor.execute("SET TIME ZONE 'UTC'")
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                cursor.execute("SET application_name = 'crmsync-exporter'")
            dbapi_connection.commit()

    elif name in ("mysql", "mariadb"):

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

    elif name == "sqlite":

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

    else:
        raise UnsupportedDatabaseError(name)


def connect_arguments(url_drivername: str, query_timeout: float) -> dict[str, Any]:
    """Client-side timeouts, so that a stalled network cannot hang a collection."""
    seconds = max(1, int(query_timeout + 0.999))
    if url_drivername.startswith("postgresql"):
        return {
            "connect_timeout": seconds,
            # Kernel-level bounds on a silent peer: keepalives and unacknowledged data.
            "keepalives": 1,
            "keepalives_idle": seconds,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": int(query_timeout * 2000) + 1000,
        }
    if url_drivername.startswith(("mysql", "mariadb")):
        return {
            "connect_timeout": seconds,
            "read_timeout": seconds * 2 + 1,
            "write_timeout": seconds * 2 + 1,
        }
    if url_drivername.startswith("sqlite"):
        return {"timeout": query_timeout, "check_same_thread": False}
    return {}


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
