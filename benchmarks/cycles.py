"""Collection cycles measured in-process: the first one, the steady ones, and the SQL floor.

The exporter's ``StoreReader`` runs here, in the benchmark's process, so that every
statement it sends can be timed (a SQLAlchemy event) and replayed, with the same parameters,
through the bare driver: that replay is the *floor*, the cost of the same aggregates with no
exporter around them. Between steady cycles the store receives a trickle of new rows, as a
live sync engine writes them.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import pglog
from crmsync_testing.filled_stores import Store, pg_connect
from crmsync_testing.statements import Statement, StatementRecorder, classify
from exporter.collection import StoreReader
from exporter.config import StoreConfig

GAUGE_KINDS = frozenset({"clock", "backlog"})


@dataclass
class Cycle:
    """One collection cycle of the exporter, and the same statements replayed bare."""

    wall: float
    cpu: float
    steps: dict[str, float]
    statements: list[Statement]
    db_ms: float | None = None
    db_kinds: dict[str, float] = field(default_factory=dict)
    floor_wall: float | None = None
    floor_gauges: float | None = None
    floor_db_ms: float | None = None

    @property
    def gauges(self) -> float:
        """The exporter's gauge step: the database clock and the backlog, rows mapped."""
        return self.steps.get("backlog", float("nan"))

    def client_kinds(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for statement in self.statements:
            totals[statement.kind] += statement.seconds
        return dict(totals)


class Floor:
    """The same statements through the bare driver, in one transaction, rows fetched."""

    def __init__(self, store: Store) -> None:
        self.dialect = store.dialect
        self.connection: Any
        if store.dialect == "postgresql":
            self.connection = pg_connect(store.url, autocommit=False, log_statements=True)
        else:
            path = store.url.removeprefix("sqlite:///")
            self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def replay(self, statements: Sequence[Statement]) -> tuple[float, float]:
        """Seconds for all statements, and for those behind the gauges."""
        gauges = 0.0
        started = time.perf_counter()
        for statement in statements:
            began = time.perf_counter()
            cursor = self.connection.execute(statement.sql, statement.parameters)
            cursor.fetchall()
            if statement.kind in GAUGE_KINDS:
                gauges += time.perf_counter() - began
        self.connection.commit()
        return time.perf_counter() - started, gauges

    def close(self) -> None:
        self.connection.close()


@dataclass
class Collection:
    """Everything measured in-process for one store."""

    first: list[Cycle] = field(default_factory=list)
    steady: list[Cycle] = field(default_factory=list)


@dataclass(frozen=True)
class Trickle:
    """Rows written between two steady cycles: one 15 s interval at ten million rows a month."""

    history: int = 60
    errors: int = 3
    pending: int = 60


class Marks:
    """Cuts the PostgreSQL server log into one segment per measured cycle (no-op elsewhere)."""

    def __init__(self, url: str | None, server_log: pglog.ServerLog | None) -> None:
        self.log = server_log
        self.connection: Any = None
        if server_log is not None and url is not None:
            self.connection = pg_connect(url, log_statements=True)
            server_log.start()

    def mark(self, label: str) -> None:
        if self.connection is not None:
            pglog.mark(self.connection, label)

    def segments(self) -> dict[str, pglog.Segment]:
        if self.connection is None or self.log is None:
            return {}
        self.mark("end")
        return self.log.segments()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def _run_cycle(reader: StoreReader, recorder: StatementRecorder) -> Cycle:
    recorder.take()
    cpu = time.process_time()
    started = time.perf_counter()
    reading = reader.read()
    wall = time.perf_counter() - started
    if reading.error is not None:
        raise reading.error
    return Cycle(
        wall=wall,
        cpu=time.process_time() - cpu,
        steps=reading.step_seconds,
        statements=recorder.take(),
    )


class Session:
    """The in-process measurements of one store; steady cycles of several stores interleave."""

    def __init__(self, name: str, store: Store, config: StoreConfig, marks: Marks) -> None:
        self.name = name
        self.store = store
        self.config = config
        self.marks = marks
        self.result = Collection()
        self.floor = Floor(store)
        self._floor_pid = (
            self.floor.connection.info.backend_pid if store.dialect == "postgresql" else -1
        )
        self._reader: StoreReader | None = None
        self._recorder: StatementRecorder | None = None
        self.error: str | None = None
        """Why a cycle of this store failed (the store is then left out)."""

    def first(self, runs: int, progress: Callable[[str], None]) -> None:
        """``runs`` first collections, each by a new reader (new connection, newest ids)."""
        for run in range(runs):
            if self._reader is not None:
                self._reader.close()
            self._reader = StoreReader(self.config)
            self._recorder = StatementRecorder(self._reader.engine)
            self.marks.mark(f"{self.name}.first.{run}")
            self.result.first.append(_run_cycle(self._reader, self._recorder))
            self.marks.mark("idle")
            progress(f"first collection {run + 1}/{runs}: {self.result.first[-1].wall:.3f}s")

    def steady(self, index: int, trickle: Trickle) -> None:
        """A trickle, one steady cycle, then the same statements through the bare driver."""
        assert self._reader is not None
        assert self._recorder is not None
        self.store.trickle(trickle.history, trickle.errors, trickle.pending)
        self.marks.mark(f"{self.name}.steady.{index}")
        cycle = _run_cycle(self._reader, self._recorder)
        self.marks.mark(f"{self.name}.floor.{index}")
        cycle.floor_wall, cycle.floor_gauges = self.floor.replay(cycle.statements)
        self.marks.mark("idle")
        self.result.steady.append(cycle)

    def finish(self, segments: dict[str, pglog.Segment]) -> Collection:
        """Close the connections; attach the server's times from the log ``segments``."""
        if self._reader is not None:
            self._reader.close()
        self.floor.close()
        for label, cycles in (("first", self.result.first), ("steady", self.result.steady)):
            for index, cycle in enumerate(cycles):
                segment = segments.get(f"{self.name}.{label}.{index}")
                if segment is None:
                    continue
                cycle.db_ms = segment.milliseconds()
                kinds: dict[str, float] = defaultdict(float)
                for entry in segment.entries:
                    kinds[classify(entry.text)] += entry.milliseconds
                cycle.db_kinds = dict(kinds)
                floor_segment = segments.get(f"{self.name}.floor.{index}")
                if label == "steady" and floor_segment is not None:
                    cycle.floor_db_ms = floor_segment.by_pid().get(self._floor_pid, 0.0)
        return self.result
