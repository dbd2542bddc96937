"""Writes the metrics after collections, once for however many ended meanwhile, and what
moves every second ahead of that second's scrapes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Writing the metrics of hundreds of stores takes a while; pausing this many times its CPU
# time after each write keeps it under a sixth of a CPU while collections end every few ms.
# CPU time, not wall time: while the workers keep the interpreter busy a write takes seconds
# of wall time for a fraction of that in CPU, and pausing for five times those seconds left
# /metrics that far behind the collections.
PAUSE_FACTOR = 5.0
# And at least this: each publication makes the next scrape write every store's ages again
# (12 ms for 500 stores), and a publication of a few stores costs little: publishing more
# often than twice a second is more work than news.
MIN_PAUSE = 0.5
# But no longer than this while a store never published yet waits: a write that encodes
# many stores for the first time (a fleet starting) costs seconds of CPU once, and five
# times that would keep the stores that came up meanwhile out of /metrics, and readiness,
# for half a minute.
MAX_PAUSE_FOR_NEW_STORES = 1.0


class Publisher:
    """Calls ``publish`` in a thread of its own after collections, never more than one at once.

    ``published`` names the stores whose latest collection (or failure) the last call
    included: readiness waits for every store to be there.
    """

    def __init__(self, publish: Callable[[], None]) -> None:
        self._publish = publish
        self._collected: set[str] = set()
        self._published: frozenset[str] = frozenset()
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="publish", daemon=True)

    @property
    def published(self) -> frozenset[str]:
        return self._published

    def start(self) -> None:
        self._thread.start()

    def collected(self, store: str) -> None:
        with self._changed:
            self._collected.add(store)
            self._changed.notify()

    def stop(self, timeout: float) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not self._collected and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return
                stores, self._collected = self._collected, set()
            started = time.thread_time()
            try:
                self._publish()
            except Exception:
                log.exception("writing the metrics failed")
            self._published = self._published | stores
            pause = max((time.thread_time() - started) * PAUSE_FACTOR, MIN_PAUSE)
            resume = time.monotonic() + pause
            with self._changed:
                self._changed.wait_for(lambda: self._stopping, min(pause, MAX_PAUSE_FOR_NEW_STORES))
                self._changed.wait_for(
                    lambda: self._stopping or not self._collected <= self._published,
                    max(0.0, resume - time.monotonic()),
                )


class EverySecond:
    """Calls ``tick`` just after each whole second of the clock, in a thread of its own, so
    that what moves every second (the ages) is written before the scrapes of that second."""

    def __init__(self, tick: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self._tick = tick
        self._clock = clock
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="every-second", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.wait(1.0 - self._clock() % 1.0 + 0.001):
            try:
                self._tick()
            except Exception:
                log.exception("writing the metrics of the second failed")
