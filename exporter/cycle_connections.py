"""Which database connections each store's running cycle holds, on engines stores share.

Stores that connect alike share one engine (see collection.store_engines), so an engine's
events cannot name a store. A cycle runs in one worker thread from start to end: the
events of that thread's connections belong to the store whose cycle the thread runs.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import NullPool


class CycleListener(Protocol):
    """What a store's reader is told about the connections of its running cycle."""

    def holding(self, dbapi_connection: Any) -> None:
        """A connection was opened or checked out for the cycle."""

    def released(self, dbapi_connection: Any) -> None:
        """A connection of the cycle went back to the pool or was closed."""

    def progressed(self) -> None:
        """The database answered a statement of the cycle."""


_FRESH = "crmsync.fresh"
"""In a connection record's info: opened for this checkout, so no ping needed."""
_current = threading.local()
_watched: weakref.WeakSet[Engine] = weakref.WeakSet()
_watching = threading.Lock()


def _listener() -> CycleListener | None:
    listener: CycleListener | None = getattr(_current, "listener", None)
    return listener


def _holding(dbapi_connection: Any, *_: Any) -> None:
    listener = _listener()
    if listener is not None:
        listener.holding(dbapi_connection)


def _released(dbapi_connection: Any, *_: Any) -> None:
    listener = _listener()
    if listener is not None:
        listener.released(dbapi_connection)


def _progressed(*_: Any) -> None:
    listener = _listener()
    if listener is not None:
        listener.progressed()


def _opened(dbapi_connection: Any, record: Any) -> None:
    record.info[_FRESH] = True
    _holding(dbapi_connection)


def _checked_out(engine: Engine) -> Callable[[Any, Any, Any], None]:
    ping = not isinstance(engine.pool, NullPool)

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        _holding(dbapi_connection)
        if record.info.pop(_FRESH, False) or not ping:
            return
        # SQLAlchemy's pre-ping runs before any event, where a ping that hangs on a silent
        # network could not be ended: pinged here instead, once the cycle holds it. The
        # pool replaces a connection that fails (DisconnectionError), as pre-ping does.
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise DisconnectionError(f"the kept connection failed a ping: {error}") from error
        if not alive:
            raise DisconnectionError("the kept connection failed a ping")

    return checked_out


def watch(engine: Engine) -> None:
    """Tell the cycles running in each thread about ``engine``'s connections, and ping a
    kept connection before a cycle uses it (once per engine)."""
    with _watching:
        if engine in _watched:
            return
        _watched.add(engine)
    event.listen(engine, "connect", _opened)
    event.listen(engine, "checkout", _checked_out(engine))
    event.listen(engine, "checkin", _released)
    event.listen(engine, "close", _released)
    event.listen(engine, "close_detached", _released)
    event.listen(engine, "after_cursor_execute", _progressed)


@contextmanager
def running_cycle(listener: CycleListener) -> Iterator[None]:
    """While the block runs, this thread's connection events go to ``listener``."""
    previous = _listener()
    _current.listener = listener
    try:
        yield
    finally:
        _current.listener = previous
