"""The database's own account of its time: statement durations from PostgreSQL's server log.

The benchmark database is set to ``log_min_duration_statement = 0``, so the server logs how long
it spent on every statement (parse, bind and execute are logged apart; all three are its
time). Whoever sends the statements, the exporter, query-exporter or a bare driver call, is
measured the same way. Marker statements (``SELECT 'crmsync-bench-mark <label>'``) cut the log
into segments, one per measured cycle; connections that only set up or write (the loader, the
trickle) switch the logging off for themselves.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(?P<pid>\d+)\] \S*@(?P<db>\S+) "
    r"LOG:  duration: (?P<ms>[0-9.]+) ms  (?P<what>[^:]*): ?(?P<text>.*)$"
)
_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_MARK = re.compile(r"crmsync-bench-mark ([\w.:-]+)")


@dataclass
class Entry:
    """One logged duration: a statement, or one phase (parse, bind, execute) of one."""

    pid: int
    milliseconds: float
    text: str


@dataclass
class Segment:
    """What the server logged between one mark and the next."""

    label: str
    entries: list[Entry] = field(default_factory=list)

    def milliseconds(self, exclude: frozenset[int] = frozenset()) -> float:
        return sum(entry.milliseconds for entry in self.entries if entry.pid not in exclude)

    def by_pid(self) -> dict[int, float]:
        totals: dict[int, float] = defaultdict(float)
        for entry in self.entries:
            totals[entry.pid] += entry.milliseconds
        return dict(totals)


def default_log_path(server_version: str) -> Path | None:
    """Debian's log file of the ``main`` cluster, when this process may read it."""
    major = server_version.split(".")[0]
    path = Path(f"/var/log/postgresql/postgresql-{major}-main.log")
    return path if path.is_file() and os.access(path, os.R_OK) else None


class ServerLog:
    """Reads what the server logged for one database since ``start()``."""

    def __init__(self, path: Path, database: str) -> None:
        self.path = path
        self.database = database
        self._offset = 0

    def start(self) -> None:
        self._offset = self.path.stat().st_size

    def segments(self) -> dict[str, Segment]:
        """Segments by label since ``start()``; entries before the first mark are dropped."""
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        result: dict[str, Segment] = {}
        current: Segment | None = None
        last: Entry | None = None
        for raw in data.decode("utf-8", "replace").splitlines():
            match = _LINE.match(raw)
            if match is None:
                if last is not None and not _PREFIX.match(raw):
                    last.text += " " + raw.strip()  # a statement's continuation line
                else:
                    last = None
                continue
            if match["db"] != self.database:
                last = None
                continue
            mark = _MARK.search(match["text"])
            if mark is not None:
                current = result.setdefault(mark[1], Segment(mark[1]))
                last = None
                continue
            last = Entry(int(match["pid"]), float(match["ms"]), match["text"])
            if current is not None:
                current.entries.append(last)
        return result


def mark(connection: Any, label: str) -> None:
    """Log a mark from ``connection`` (a psycopg connection with logging on, autocommit)."""
    connection.execute(f"SELECT 'crmsync-bench-mark {label}'")
