"""One store's collection cycles and the state they leave for the scrapes (see scheduler)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from exporter.collection import Gauges, Reading, StoreReader, Totals
from exporter.connections import describe_error

log = logging.getLogger(__name__)


class QueueWait:
    """How long the store's next cycle has waited in the exporter's queue (the scheduler says).

    Freshness does not count that wait against the store: the exporter's own queue is not
    the store failing. It changes between cycles, while states are replaced only when a
    cycle ends, hence this one mutable part, replaced whole on each change.
    """

    def __init__(self) -> None:
        self._span: tuple[float, float | None] | None = None

    @property
    def queued(self) -> bool:
        span = self._span
        return span is not None and span[1] is None

    def waiting(self, since: float) -> None:
        self._span = (since, None)

    def started(self, at: float) -> None:
        span = self._span
        self._span = (at if span is None else span[0], at)

    def finished(self) -> None:
        self._span = None

    def seconds(self, now: float) -> float:
        """The wait of the cycle queued or running now; 0 between cycles."""
        span = self._span
        if span is None:
            return 0.0
        since, until = span
        return max(0.0, (now if until is None else until) - since)


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
    start_delay: float | None = None
    """How much later than scheduled the last cycle started."""
    queue_wait: QueueWait | None = field(default=None, compare=False, repr=False)

    def up(self, now: float) -> bool:
        if self.gauges is None:
            return False
        waited = 0.0 if self.queue_wait is None else self.queue_wait.seconds(now)
        return now <= self.fresh_until + waited


class StoreRunner:
    """Runs one store's cycles (when the scheduler says) and keeps what they found."""

    def __init__(
        self,
        reader: StoreReader,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.name = reader.config.name
        self.interval = reader.config.interval
        # A cycle may take up to a query timeout past its interval before its gauges go stale.
        self._freshness = 2 * reader.config.interval + reader.config.query_timeout
        self._clock = clock
        self.queue_wait = QueueWait()
        self._state = StoreState(store=self.name, queue_wait=self.queue_wait)

    @property
    def state(self) -> StoreState:
        return self._state  # replaced whole, never mutated: safe to read from any thread

    def close(self) -> None:
        self.reader.close()

    def run_once(self, scheduled: float | None = None) -> StoreState:
        """One cycle: read the store, then publish what it read (or the failure).

        ``scheduled`` is when the cycle should have started (clock time), for its delay.
        """
        started = self._clock()
        state = self._state
        if scheduled is not None:
            state = replace(state, start_delay=max(0.0, started - scheduled))
        reading = self.reader.read()
        self._state = self._next_state(state, reading, started)
        return self._state

    def _next_state(self, state: StoreState, reading: Reading, started: float) -> StoreState:
        if reading.error is not None:
            message = describe_error(reading.error)
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
