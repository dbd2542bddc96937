"""Runs each store's collection on its own schedule, so scrapes never query the database."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from exporter.collection import CollectionError, Gauges, Reading, StoreReader, Totals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreState:
    """What the last cycles of one store left for the scrapes to read."""

    store: str
    gauges: Gauges | None = None
    gauges_taken: float = 0.0
    """time.monotonic() when ``gauges`` were read."""
    fresh_until: float = 0.0
    """time.monotonic() after which ``gauges`` are too old to serve."""
    totals: Totals = field(default_factory=Totals)
    collections: int = 0
    failures: int = 0
    last_success: float | None = None
    """Unix time of the last successful collection."""
    last_duration: float | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    """Time spent in each step of the last successful collection."""
    folded: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None

    def up(self, now: float) -> bool:
        return self.gauges is not None and now <= self.fresh_until


class StoreRunner:
    """A daemon thread that collects one store every ``interval`` seconds."""

    def __init__(
        self,
        reader: StoreReader,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.name = reader.config.name
        self._interval = reader.config.interval
        # A cycle may take up to a query timeout past its interval before its gauges go stale.
        self._freshness = 2 * reader.config.interval + reader.config.query_timeout
        self._clock = clock
        self._state = StoreState(store=self.name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"collect-{self.name}", daemon=True)
        self.after_cycle: Callable[[], None] | None = None
        """Called in this thread after each cycle (the new metrics are encoded for scrapes)."""

    @property
    def state(self) -> StoreState:
        return self._state  # replaced whole, never mutated: safe to read from any thread

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.reader.close()

    def run_once(self) -> StoreState:
        """One cycle: read the store, then publish what it read (or the failure)."""
        started = self._clock()
        reading = self.reader.read()
        self._state = self._next_state(self._state, reading, started)
        return self._state

    def _next_state(self, state: StoreState, reading: Reading, started: float) -> StoreState:
        if reading.error is not None:
            message = describe(reading.error)
            if message != state.last_error:
                log.warning("collection failed", extra={"store": self.name, "error": message})
            else:
                log.debug("collection failed", extra={"store": self.name, "error": message})
            state = replace(
                state,
                gauges=None,
                failures=state.failures + 1,
                last_error=message,
            )
        else:
            finished = self._clock()
            if state.last_error is not None:
                log.info("collection recovered", extra={"store": self.name})
            state = replace(
                state,
                gauges=reading.gauges,
                gauges_taken=finished,
                fresh_until=finished + self._freshness,
                last_success=time.time(),
                last_duration=finished - started,
                step_seconds=reading.step_seconds,
                last_error=None,
            )
        return replace(
            state,
            collections=state.collections + 1,
            totals=reading.totals,
            folded=reading.folded,
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = self._clock()
            self.run_once()
            if self.after_cycle is not None:
                self.after_cycle()
            self._stop.wait(max(0.0, self._interval - (self._clock() - started)))


def describe(error: BaseException) -> str:
    """A one-line reason for a failed collection, without SQL parameters or secrets."""
    if isinstance(error, CollectionError) and error.__cause__ is not None:
        return f"{error.step}: {describe(error.__cause__)}"
    if isinstance(error, DBAPIError) and error.orig is not None:
        text = f"{error.orig.__class__.__name__}: {error.orig}"
    elif isinstance(error, SQLAlchemyError):
        # Without the SQL and parameters SQLAlchemy appends after the first line.
        text = f"{error.__class__.__name__}: {str(error).split(chr(10), 1)[0]}"
    else:
        text = f"{error.__class__.__name__}: {error}"
    return " ".join(text.split())[:500]
