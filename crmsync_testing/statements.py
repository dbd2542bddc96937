"""The statements an engine sends, captured as sent, timed as its client sees them, classified."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


def classify(sql: str) -> str:
    """What a statement of the exporter is for, from its text (as sent, or as logged)."""
    text = " ".join(sql.lower().split())
    if text in ("begin", "commit", "rollback", "select 1") or text.startswith(
        ("set ", "show ", "savepoint", "release", "select pg_catalog.version", "select current_")
    ):
        return "session"
    if "sync_queue" in text:
        return "backlog"
    table = "history" if "sync_history" in text else "errors" if "sync_error" in text else None
    if table is None:
        return "clock" if "clock_timestamp" in text or "julianday" in text else "other"
    if "max(" in text:
        return f"{table}: newest id"
    if "group by" in text and ">=" in text:
        return "last hour"
    if "where id = " in text or ".id = " in text:
        return f"{table}: last row read"
    if " between " in text:
        return f"{table}: newest ids or gap probe"
    if "order by" in text:
        return f"{table}: new rows"
    return f"{table}: other"


@dataclass(frozen=True)
class Statement:
    kind: str
    seconds: float
    sql: str
    parameters: Any


class StatementRecorder:
    """Times every statement an engine sends, as its client sees it."""

    def __init__(self, engine: Engine) -> None:
        self.statements: list[Statement] = []
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, connection: Any, *_args: Any) -> None:
        connection.info["benchmark_started"] = time.perf_counter()

    def _after(
        self,
        connection: Any,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        seconds = time.perf_counter() - connection.info.pop("benchmark_started")
        self.statements.append(Statement(classify(statement), seconds, statement, parameters))

    def take(self) -> list[Statement]:
        taken, self.statements = self.statements, []
        return taken
