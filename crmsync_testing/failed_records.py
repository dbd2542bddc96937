"""The failed records the SQL panels' tests write, and what the panels must show of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from crmsync_testing.grafana_server import Json, TimeRange

OBJECTS = ("lead", "contact", "account", "opportunity")
OPERATIONS = ("insert", "update")
DIRECTIONS = ("to_crm", "from_crm")
# A code with every character that needs care on its way through a URL, PromQL and SQL.
AWKWARD_CODE = "Q'UOTE\\BACK%PCT%41$DOLLAR:COLON_ÜBER&AMP#HASH+PLUS SP"
CODES = (
    "DUPLICATE_VALUE",
    "REQUEST_LIMIT_EXCEEDED",
    "INVALID_EMAIL_ADDRESS",
    "FIELD_INTEGRITY",
    AWKWARD_CODE,
)
NAMES = (
    "O'Brien",
    'Anna "Nina" Berg',
    "back\\slash",
    "Müller",
    "100% sure",
    "under_score",
    None,
    "Plain Name",
)
LONG_TAIL = " and then ".join(f"step {n} went wrong (état {n})" for n in range(12))
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
ANCHOR = datetime(2026, 3, 2, 12, 0, 0)
RANGE = TimeRange(ANCHOR.replace(tzinfo=UTC) - timedelta(hours=2), ANCHOR.replace(tzinfo=UTC))
FAILED = "Failed records, page ${page}"
MATCHING = "Matching failed records"
TOP_CODES = "Top error codes"
LABELS = {
    "store": ["main"],
    "object": list(OBJECTS),
    "operation": list(OPERATIONS),
    "direction": list(DIRECTIONS),
    "error_code": list(CODES),
}


@dataclass(frozen=True)
class Failure:
    id: int
    failed_at: datetime
    object: str
    record_id: str
    record_name: str | None
    operation: str
    direction: str
    error_code: str
    error_message: str


def failures() -> list[Failure]:
    rows = []
    for index in range(160):
        message = f"attempt {index} failed: see record {index % 7}; it's 50% done"
        if index % 16 == 3:
            message += " " + LONG_TAIL
        rows.append(
            Failure(
                id=index + 1,
                # Every 37 seconds from 3 hours back: some rows fall outside the range.
                failed_at=ANCHOR - timedelta(hours=3) + timedelta(seconds=37 * index + 0.25),
                object=OBJECTS[index % 4],
                record_id=f"00Q{index:06d}",
                record_name=NAMES[index % len(NAMES)],
                operation=OPERATIONS[(index // 4) % 2],
                direction=DIRECTIONS[(index // 8) % 2],
                error_code=CODES[4 if index % 10 == 5 else index % 3 if index % 10 else 3],
                error_message=message,
            )
        )
    return rows


COLUMNS = (
    "time",
    "object",
    "record_id",
    "record_name",
    "operation",
    "direction",
    "error_code",
    "error_message",
)


def epoch_ms(moment: datetime) -> int:
    return round(moment.replace(tzinfo=UTC).timestamp() * 1000)


def expected_failures(
    rows: Sequence[Failure],
    *,
    objects: Sequence[str] = OBJECTS,
    operations: Sequence[str] = OPERATIONS,
    directions: Sequence[str] = DIRECTIONS,
    codes: Sequence[str] = CODES,
    search: str = "",
) -> list[tuple[Any, ...]]:
    """The failures in the range that match, newest first, as (column values...)."""
    needle = search.lower()
    hits = [
        row
        for row in rows
        if RANGE.start <= row.failed_at.replace(tzinfo=UTC) <= RANGE.end
        and row.object in objects
        and row.operation in operations
        and row.direction in directions
        and row.error_code in codes
        and (
            not needle
            or any(
                needle in (text or "").lower()
                for text in (row.record_id, row.record_name, row.error_code, row.error_message)
            )
        )
    ]
    hits.sort(key=lambda row: (row.failed_at, row.id), reverse=True)
    return [
        (
            epoch_ms(row.failed_at),
            row.object,
            row.record_id,
            row.record_name,
            row.operation,
            row.direction,
            row.error_code,
            row.error_message,
        )
        for row in hits
    ]


def url(*pairs: tuple[str, str]) -> str:
    """A dashboard URL's query string, encoded as Grafana's links encode it."""
    return "&".join(f"var-{name}={quote(value, safe='')}" for name, value in pairs)


MAPPED = """
stores:
  - name: crm
    url: 'postgresql+psycopg://u@h/db'
    operations: {insert: [I, INS], update: [U]}
    directions: {to_crm: [OUT], from_crm: [IN]}
    mapping:
      single_table:
        table: crm_change
        id: change_id
        status: state
        object_type: obj
        operation: op
        direction: dir
        record_id: rec
        record_name: rec_name
        enqueued_at: queued
        synced_at: done
        failed_at: failed
        error_code: code
        error_message: msg
      status_values: {pending: [NEW, RETRY], synced: [OK], failed: [ERR]}
"""


def time_unit(errors: Json) -> str:
    panel = next(p for p in errors["panels"] if p["title"] == FAILED)
    return str(
        next(
            prop["value"]
            for override in panel["fieldConfig"]["overrides"]
            if override["matcher"]["options"] == "time"
            for prop in override["properties"]
            if prop["id"] == "unit"
        )
    )
