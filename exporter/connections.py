"""Database connections: engines, the per-server connection cap, URL display and error text."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from exporter.dialects import interrupt_connection

DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
SUPPORTED = "postgresql+psycopg, mysql+pymysql, mariadb+pymysql or sqlite"


def display_url(url: URL | str) -> str:
    """The URL for logs and messages, never with its password."""
    return (make_url(url) if isinstance(url, str) else url).render_as_string(hide_password=True)


def describe_error(error: BaseException, url: URL | None = None) -> str:
    """A one-line reason, without SQL parameters or the URL's password even if echoed.

    An error that names the step it failed in (``step`` with the cause chained, as a
    collection's) reads ``step: reason``.
    """
    step = getattr(error, "step", None)
    if isinstance(step, str) and error.__cause__ is not None:
        return f"{step}: {describe_error(error.__cause__, url)}"
    if isinstance(error, DBAPIError) and error.orig is not None:
        text = f"{error.orig.__class__.__name__}: {error.orig}"
    elif isinstance(error, SQLAlchemyError):
        # Without the SQL and parameters SQLAlchemy appends after the first line.
        text = f"{error.__class__.__name__}: {str(error).split(chr(10), 1)[0]}"
    else:
        text = f"{error.__class__.__name__}: {error}"
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return " ".join(text.split())[:500]


class DatabaseUrlError(ValueError):
    """A URL no engine can be built for: unknown dialect, missing driver, bad arguments."""


def open_engine(url: URL, **kwargs: Any) -> Engine:
    """``create_engine`` with a one-line DatabaseUrlError for what the URL gets wrong."""
    try:
        return create_engine(url, **kwargs)
    except NoSuchModuleError:
        raise DatabaseUrlError(
            f"unknown database dialect {url.drivername!r} (use {SUPPORTED})"
        ) from None
    except ModuleNotFoundError as error:
        raise DatabaseUrlError(f"the database driver {error.name!r} is not installed") from None
    except ArgumentError as error:
        raise DatabaseUrlError(str(error)) from None


def server_of(url: URL) -> tuple[str, int] | None:
    """The (host, port) a URL's connections go to; None for SQLite, which has no server."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return None
    return (url.host or "localhost", url.port or DEFAULT_PORTS.get(backend, 0))


class ServerBusyError(Exception):
    """No connection to the store's server could be opened within the cap in time."""


@dataclass(eq=False)
class _Open:
    """One open connection counted against its server's cap."""

    engine: Engine
    connection: Any
    opener: int
    """The thread that opened it: stores share engines, a cycle runs in one thread."""
    established: bool = False
    """Whether its session was set up: SQLAlchemy drops a connection whose setup failed
    without closing it, so the cap closes it (see ``_sweep``)."""
    idle: bool = False


# How long a closed connection keeps its place while the server has not yet hung up.
CLOSE_CONFIRMATION = 2.0


@dataclass(eq=False)
class ServerConnections:
    """At most ``cap`` connections open at once to one database server, for all its stores.

    Counted where SQLAlchemy opens (``do_connect``) and closes (``close`` events) the DBAPI
    connections, so that reconnects after a failure, a pre-ping that replaces a dead
    connection and a store that failed mid-cycle are all inside the count. A closed
    connection keeps its place until the server hangs up on it: PostgreSQL and MariaDB end
    a session a moment after the client says goodbye, and a new one opened meanwhile would
    put the server's own count over the cap. A connection kept between cycles holds its
    place while idle; a store that needs a place while none is free closes an idle one.
    """

    server: tuple[str, int]
    cap: int
    _open: dict[int, _Open] = field(default_factory=dict)
    _opening: int = 0
    _closing: list[tuple[socket.socket, float]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def _count(self) -> int:
        return len(self._open) + self._opening + len(self._closing)

    def attach(self, engine: Engine, wait: float) -> None:
        """Count ``engine``'s connections; a connection waits at most ``wait`` s for a place."""

        @event.listens_for(engine, "do_connect")
        def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            self._sweep(engine)
            self._reserve(wait)
            try:
                connection = dialect.connect(*cargs, **cparams)
            except BaseException:
                with self._changed:
                    self._opening -= 1
                    self._changed.notify_all()
                raise
            with self._changed:
                self._opening -= 1
                self._open[id(connection)] = _Open(engine, connection, threading.get_ident())
            return connection

        def established(dbapi_connection: Any, *_: Any) -> None:
            with self._changed:
                entry = self._open.get(id(dbapi_connection))
                if entry is not None:
                    entry.established = True

        def closing(dbapi_connection: Any, *_: Any) -> None:
            # Fired just before the driver closes the connection.
            with self._changed:
                if self._open.pop(id(dbapi_connection), None) is not None:
                    self._await_hang_up(dbapi_connection)

        def checked_in(dbapi_connection: Any, *_: Any) -> None:
            self._mark(dbapi_connection, idle=True)

        def checked_out(dbapi_connection: Any, *_: Any) -> None:
            self._mark(dbapi_connection, idle=False)

        event.listen(engine, "connect", established)
        event.listen(engine, "handle_error", lambda _context: self._sweep(engine))
        event.listen(engine, "close", closing)
        event.listen(engine, "close_detached", closing)
        event.listen(engine, "checkin", checked_in)
        event.listen(engine, "checkout", checked_out)

    def _await_hang_up(self, dbapi_connection: Any) -> None:
        """Keep the connection's place until its server closes the socket (lock held)."""
        duplicate = duplicate_socket(dbapi_connection)
        if duplicate is None:
            self._changed.notify_all()
        else:
            self._closing.append((duplicate, time.monotonic() + CLOSE_CONFIRMATION))

    def _hung_up(self) -> None:
        """Free the places of closed connections the servers have hung up on (lock held)."""
        if not self._closing:
            return
        now = time.monotonic()
        readable, _, _ = select.select([sock for sock, _ in self._closing], [], [], 0)
        still: list[tuple[socket.socket, float]] = []
        for sock, give_up in self._closing:
            if sock in readable or now > give_up:
                sock.close()
            else:
                still.append((sock, give_up))
        self._closing = still

    def _sweep(self, engine: Engine) -> None:
        """Close the connections of ``engine`` whose session setup failed in this thread.

        A cycle runs in one thread: when it connects again or reports an error, a
        connection it opened that never finished its setup was dropped.
        """
        opener = threading.get_ident()
        with self._changed:
            dropped = [
                (key, entry)
                for key, entry in self._open.items()
                if entry.engine is engine and entry.opener == opener and not entry.established
            ]
            for key, entry in dropped:
                del self._open[key]
                self._await_hang_up(entry.connection)
        for _, entry in dropped:
            with contextlib.suppress(Exception):
                entry.connection.close()

    def _mark(self, dbapi_connection: Any, idle: bool) -> None:
        with self._changed:
            entry = self._open.get(id(dbapi_connection))
            if entry is not None:
                entry.idle = idle
                if idle:
                    self._changed.notify_all()

    def _reserve(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                self._hung_up()
                if self._count() < self.cap:
                    break
                idle = next((entry for entry in self._open.values() if entry.idle), None)
                if idle is not None:
                    idle.idle = False  # one closer per idle connection
                    self._changed.release()
                    try:
                        # Closes the pool's idle connection (its close event frees the place);
                        # a connection checked out meanwhile stays open and is waited for.
                        idle.engine.pool.dispose()
                    finally:
                        self._changed.acquire()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    host, port = self.server
                    raise ServerBusyError(
                        f"all {self.cap} connections to {host}:{port} allowed by "
                        "connections.per_server are in use"
                    )
                # Hang-ups are seen by polling: a few milliseconds after the goodbye.
                self._changed.wait(min(remaining, 0.005) if self._closing else remaining)
            self._opening += 1


def duplicate_socket(dbapi_connection: Any) -> socket.socket | None:
    """A second descriptor of the connection's socket, to see the server hang up."""
    try:
        if getattr(dbapi_connection, "pgconn", None) is not None:  # psycopg
            fd = int(dbapi_connection.pgconn.socket)
        else:  # PyMySQL
            sock = getattr(dbapi_connection, "_sock", None)
            if sock is None:
                return None
            fd = sock.fileno()
    except Exception:  # closed already
        return None
    if fd < 0:
        return None
    try:
        return socket.socket(fileno=os.dup(fd))
    except OSError:
        return None


class ConnectionLimits:
    """The cap of every database server the stores use, created as stores name servers."""

    def __init__(self, per_server: int, keep_below: float) -> None:
        self.per_server = per_server
        self.keep_below = keep_below
        self._servers: dict[tuple[str, int], ServerConnections] = {}
        self._lock = threading.Lock()

    def server(self, key: tuple[str, int]) -> ServerConnections:
        with self._lock:
            if key not in self._servers:
                self._servers[key] = ServerConnections(key, self.per_server)
            return self._servers[key]

    def keeps(self, intervals: Sequence[float]) -> bool:
        """Whether an engine whose stores are collected every ``intervals`` seconds keeps
        its connections open between cycles.

        Connecting costs a few milliseconds (PostgreSQL forks a backend; TLS adds round trips):
        nothing next to an interval of 15 s, while a connection kept open holds one of the
        server's ``max_connections`` for the whole interval, taken from the engine that
        writes the store. Only an engine whose stores together start a cycle more often
        than every ``keep_below`` seconds (one store read every few seconds, or hundreds
        sharing one database) reconnects often enough for the saving to matter (see
        docs/BENCHMARKS.md, fleet).
        """
        return sum(1.0 / interval for interval in intervals if interval > 0) * self.keep_below > 1


def store_engine(
    url: URL,
    connect_args: dict[str, Any],
    query_timeout: float,
    configure: Callable[[Engine], None],
    intervals: Sequence[float],
    limits: ConnectionLimits | None,
) -> Engine:
    """The engine of the stores collected every ``intervals`` seconds, capped per server
    when limited (a kept connection is pinged before use: see cycle_connections).

    Kept open between cycles, it holds at most a connection per store and never more than
    the cap; without ``limits`` (a collector built on its own, as the tests and benchmark
    do) the connections always stay open.
    """
    server = server_of(url)
    options: dict[str, Any] = {
        "pool_recycle": 3600,
        "connect_args": connect_args,
        # The compiled statements would be kept per engine, and a store's queries differ in
        # their tables and parameters from any other's: about 0.7 MB a store, against 2-3 ms
        # of CPU a cycle to compile them anew (see docs/BENCHMARKS.md, fleet).
        "query_cache_size": 0,
    }
    if server is not None:
        if limits is None or limits.keeps(intervals):
            size = len(intervals) if limits is None else min(len(intervals), limits.per_server)
            options.update(pool_size=size, max_overflow=0, pool_timeout=query_timeout)
        else:
            # Closed when the cycle returns it.
            options.update(poolclass=NullPool)
            del options["pool_recycle"]
    engine = open_engine(url, **options)
    configure(engine)
    if server is not None and limits is not None:
        limits.server(server).attach(engine, wait=query_timeout)
    return engine


def cancel_statement(dbapi_connection: Any, timeout: float) -> None:
    """Ask the server to end the statement ``dbapi_connection`` is running, from another thread.

    PostgreSQL gets a cancel request (a separate, short-lived connection the server does not
    count as a session); PyMySQL has no cancel, and a KILL QUERY would need a second session,
    over the cap: its socket is shut instead (the server ends the statement when it notices);
    SQLite is interrupted in-process.
    """
    if getattr(dbapi_connection, "pgconn", None) is not None:  # psycopg
        with contextlib.suppress(Exception):
            if not dbapi_connection.closed:
                dbapi_connection.cancel_safe(timeout=timeout)
                return
    interrupt_connection(dbapi_connection)
