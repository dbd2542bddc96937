"""Runs every store on its interval with a bounded pool of workers, and stops them all at once."""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from exporter.runner import StoreRunner

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Entry:
    """One store's place in the timetable."""

    runner: StoreRunner
    server: Hashable | None
    phase: float
    """Where in each interval the store's cycles start, after the first (spreads the load)."""
    due: float = 0.0


@dataclass(eq=False)
class _Server:
    """Collections running against one database server, and the stores waiting for it."""

    cap: int
    running: int = 0
    waiting: deque[_Entry] = field(default_factory=deque)
    failing: bool = False
    """Whether its last collection failed: then waiting for it counts against freshness."""


class Scheduler:
    """Collects each store every ``interval`` seconds with ``workers`` threads in all.

    A due store first waits for its server (no more collections at once against one server
    than it may have connections, so that no worker sits waiting for a connection while
    stores of other servers are due), then for a worker. Both waits are queueing, not the
    store failing: freshness does not count them (see runner.QueueWait), except the wait for
    a server whose last collection failed, so that a server gone down takes its stores'
    gauges with it on time. Every store's first cycle runs at once; later ones start at a
    random phase of the store's interval, so that a fleet's stores do not all query at the
    same moments. A cycle that ends past its next start is not repeated to catch up: the
    next one follows its phase.
    """

    def __init__(
        self,
        runners: Sequence[StoreRunner],
        workers: int,
        per_server: int,
        server_of: Callable[[StoreRunner], Hashable | None],
        after_cycle: Callable[[StoreRunner], None] = lambda _runner: None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()
        self._entries = [
            _Entry(runner, server_of(runner), rng.uniform(0.0, runner.interval))
            for runner in runners
        ]
        self._servers: dict[Hashable, _Server] = {
            entry.server: _Server(per_server) for entry in self._entries if entry.server is not None
        }
        self._after_cycle = after_cycle
        self._clock = clock
        self._timetable: list[tuple[float, int, _Entry]] = []
        self._order = itertools.count()  # ties in the timetable go in configuration order
        self._changed = threading.Condition()
        self._ready: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self._running: set[_Entry] = set()
        self._stopping = False
        self._started = 0.0
        self._threads = [threading.Thread(target=self._dispatch, name="schedule", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"collect-{number}", daemon=True)
            for number in range(min(workers, max(1, len(runners))))
        ]

    def start(self) -> None:
        self._started = self._clock()
        with self._changed:
            for entry in self._entries:
                entry.due = self._started
                heapq.heappush(self._timetable, (entry.due, next(self._order), entry))
        for thread in self._threads:
            thread.start()

    def stop(self, deadline: float, cancel_timeout: float = 1.0) -> bool:
        """Stop every store at once; True when all collections ended before ``deadline``.

        Statements still running are cancelled (each store's in a thread of its own, so a
        server that does not answer delays none of the others); waiting stores never start.
        """
        with self._changed:
            self._stopping = True
            running = [entry.runner for entry in self._running]
            self._changed.notify_all()
        for _ in self._threads:
            self._ready.put(None)
        timeout = max(0.0, min(cancel_timeout, deadline - self._clock()))
        for runner in running:
            threading.Thread(
                target=runner.reader.cancel,
                args=(timeout,),
                name=f"cancel-{runner.name}",
                daemon=True,
            ).start()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - self._clock()))
        return not any(thread.is_alive() for thread in self._threads)

    def _dispatch(self) -> None:
        """Hand each store to a worker when it is due and its server has room."""
        with self._changed:
            while not self._stopping:
                now = self._clock()
                while self._timetable and self._timetable[0][0] <= now:
                    _, _, entry = heapq.heappop(self._timetable)
                    server = self._servers.get(entry.server)
                    if server is not None and server.running >= server.cap:
                        if not server.failing:
                            # Busy with other stores, not failing: queueing, like a worker.
                            entry.runner.queue_wait.waiting(now)
                        server.waiting.append(entry)
                    else:
                        self._hand_out(entry, server, now)
                wait = self._timetable[0][0] - now if self._timetable else None
                self._changed.wait(wait)

    def _hand_out(self, entry: _Entry, server: _Server | None, now: float) -> None:
        if server is not None:
            server.running += 1
        if not entry.runner.queue_wait.queued:
            entry.runner.queue_wait.waiting(now)
        self._ready.put(entry)

    def _work(self) -> None:
        while True:
            entry = self._ready.get()
            if entry is None:
                return
            runner = entry.runner
            with self._changed:
                if self._stopping:
                    return
                self._running.add(entry)
            runner.queue_wait.started(self._clock())
            try:
                runner.run_once(scheduled=entry.due)
                self._after_cycle(runner)
            except Exception:  # run_once reports a store's failures itself: this is a bug
                log.exception("collection cycle crashed", extra={"store": runner.name})
            finally:
                runner.queue_wait.finished()
                self._finished(entry)

    def _finished(self, entry: _Entry) -> None:
        with self._changed:
            self._running.discard(entry)
            now = self._clock()
            server = self._servers.get(entry.server)
            if server is not None:
                server.running -= 1
                server.failing = entry.runner.state.last_error is not None
                if server.waiting and not self._stopping:
                    self._hand_out(server.waiting.popleft(), server, now)
            entry.due = self._next_start(entry, now)
            heapq.heappush(self._timetable, (entry.due, next(self._order), entry))
            self._changed.notify_all()

    def _next_start(self, entry: _Entry, now: float) -> float:
        """The store's next phase point after ``now``, and at least half an interval on."""
        interval = entry.runner.interval
        earliest = max(now, entry.due + interval / 2)
        periods = (earliest - self._started - entry.phase) // interval + 1
        return self._started + entry.phase + periods * interval
