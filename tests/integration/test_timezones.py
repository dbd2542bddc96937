"""Ages and timestamps are right whether the store's columns carry a time zone or not."""

from __future__ import annotations

import operator
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from itertools import product
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from crmsync_testing.helpers import (
    CODES,
    DIRECTIONS,
    OBJECTS,
    OPERATIONS,
    collect,
    queue_table,
    runner_for,
    series_total,
    served_last_hour,
    store_config,
)
from exporter.dialects import Comparison, SQLite
from exporter.queries import StoreQueries, build_queries
from exporter.schema import create_reference_schema, sync_history

AGES = (30.0, 600.0, 7200.0)


def empty_history_tables(engine: sa.Engine) -> None:
    from exporter.schema import sync_error, sync_history

    sync_history.create(engine)
    sync_error.create(engine)


def check(url: str, instants: list[datetime]) -> None:
    result = collect(runner_for(url))
    expected_oldest = min(instants).timestamp()
    oldest = series_total(result, "crmsync_oldest_pending_timestamp_seconds")
    ages = series_total(result, "crmsync_oldest_pending_age_seconds")
    key = ("lead", "insert", "to_crm")
    assert oldest[key] == pytest.approx(expected_oldest, abs=0.01)
    assert ages[key] == pytest.approx(datetime.now(UTC).timestamp() - expected_oldest, abs=3.0)


def rows(instants: list[datetime | str]) -> list[dict[str, object]]:
    return [
        {
            "object_type": "lead",
            "record_id": str(index),
            "operation": "insert",
            "direction": "to_crm",
            "enqueued_at": value,
        }
        for index, value in enumerate(instants)
    ]


def instants() -> list[datetime]:
    now = datetime.now(UTC)
    return [now - timedelta(seconds=age) for age in AGES]


@pytest.mark.parametrize("aware", [False, True])
def test_postgresql_timestamp_and_timestamptz(postgres_url: str, aware: bool) -> None:
    # The writer's session is far from UTC: only the stored instant may matter.
    url = sa.make_url(postgres_url)
    options = f"{url.query['options']} -cTimeZone=Asia/Kolkata"
    writer = sa.create_engine(url.update_query_dict({"options": options}))
    table = queue_table(postgresql.TIMESTAMP(timezone=aware))
    table.create(writer)
    empty_history_tables(writer)
    moments = instants()
    values = moments if aware else [m.replace(tzinfo=None) for m in moments]
    with writer.begin() as connection:
        connection.execute(table.insert(), rows(list(values)))
    check(postgres_url, moments)
    writer.dispose()


@pytest.mark.parametrize("column", ["DATETIME", "TIMESTAMP"])
def test_mariadb_datetime_and_timestamp(mariadb_url: str, column: str) -> None:
    writer = sa.create_engine(mariadb_url)
    column_type = mysql.DATETIME(fsp=6) if column == "DATETIME" else mysql.TIMESTAMP(fsp=6)
    table = queue_table(column_type)
    table.create(writer)
    empty_history_tables(writer)
    moments = instants()
    with writer.begin() as connection:
        if column == "TIMESTAMP":
            # TIMESTAMP converts from the session's zone: write local times of +05:00.
            connection.execute(sa.text("SET time_zone = '+05:00'"))
            local = [
                m.astimezone(timezone(timedelta(hours=5))).replace(tzinfo=None) for m in moments
            ]
            connection.execute(table.insert(), rows(list(local)))
        else:
            connection.execute(table.insert(), rows([m.replace(tzinfo=None) for m in moments]))
    check(mariadb_url, moments)
    writer.dispose()


def test_sqlite_text_timestamps_with_offsets(sqlite_url: str) -> None:
    writer = sa.create_engine(sqlite_url)
    table = queue_table(sa.String(40))
    table.create(writer)
    empty_history_tables(writer)
    moments = instants()
    # The same instants written as ISO text in three different zones, as various writers do.
    zones = [timezone(timedelta(hours=9)), UTC, timezone(timedelta(hours=-7))]
    text = [m.astimezone(zone).isoformat() for m, zone in zip(moments, zones, strict=True)]
    with writer.begin() as connection:
        connection.execute(table.insert(), rows(list(text)))
    check(sqlite_url, moments)
    writer.dispose()


# --- Changes stamped on the boundaries of a window ---------------------------------------
#
# The last full hour is [HOUR_START, HOUR_END). Rows are stamped on both boundaries and just
# either side, to the finest step each way of writing a timestamp can express. On SQLite the
# timestamps are text, written in each form writers use; the expected counts are worked out
# here from the instants written, never by SQL.

HOUR_START = datetime(2026, 12, 2, 8, tzinfo=UTC)
HOUR_END = HOUR_START + timedelta(hours=1)
DB_NOW = HOUR_END + timedelta(minutes=30)
STEPS = (timedelta(seconds=1), timedelta(milliseconds=1), timedelta(microseconds=1))
INSTANTS = sorted(
    {
        boundary + sign * step
        for boundary in (HOUR_START, HOUR_END)
        for step in (timedelta(0), *STEPS)
        for sign in (-1, 1)
    }
)
OFFSETS = {"": 0, "Z": 0, "+01:00": 60, "-00:30": -30, "+05:45": 345, "-12:00": -720, "+14:00": 840}
"""Suffixes SQLite reads as UTC offsets, with their minutes east of UTC."""


@dataclass(frozen=True)
class TextForm:
    """One way of writing a timestamp as text: separator, fraction digits, UTC offset."""

    separator: str
    digits: int
    suffix: str

    def expresses(self, instant: datetime) -> bool:
        return self.digits >= 6 or instant.microsecond % 10 ** (6 - self.digits) == 0

    def render(self, instant: datetime) -> str:
        local = instant.astimezone(timezone(timedelta(minutes=OFFSETS[self.suffix])))
        text = local.strftime(f"%Y-%m-%d{self.separator}%H:%M:%S")
        if self.digits:
            text += f".{local.microsecond:06d}000"[: self.digits + 1]
        return text + self.suffix


TEXT_FORMS = [TextForm(*form) for form in product((" ", "T"), (0, 3, 6, 9), OFFSETS)]


COMPARISONS: dict[Comparison, Callable[[datetime, datetime], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Stamp:
    """A change's instant and the value written for it (text on SQLite, else a datetime)."""

    instant: datetime
    value: str | datetime


def boundary_stamps(url: str) -> list[Stamp]:
    """Every instant near the hour's boundaries, in every form the database can hold."""
    if sa.make_url(url).get_backend_name() != "sqlite":
        return [Stamp(instant, instant.replace(tzinfo=None)) for instant in INSTANTS]
    return [
        Stamp(instant, form.render(instant))
        for form, instant in product(TEXT_FORMS, INSTANTS)
        if form.expresses(instant)
    ]


@pytest.fixture
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database clock the exporter reads stands still at ``DB_NOW``."""
    db_now = DB_NOW.timestamp()
    monkeypatch.setattr(
        StoreQueries, "now", lambda _self: sa.select(sa.literal(db_now, sa.Float).label("now"))
    )


def insert(engine: sa.Engine, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert without column types, so that SQLite keeps each text exactly as written."""
    columns: list[sa.ColumnClause[Any]] = [sa.column(name) for name in rows[0]]
    with engine.begin() as connection:
        connection.execute(sa.table(table, *columns).insert(), rows)


def in_last_hour(instant: datetime) -> bool:
    return HOUR_START <= instant < HOUR_END


@pytest.mark.usefixtures("pinned_clock")
def test_last_hour_counts_each_change_by_its_instant(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    stamps = boundary_stamps(store_url)
    rows = [
        {
            "object_type": OBJECTS[index % len(OBJECTS)],
            "record_id": str(index),
            "operation": "update",
            "direction": DIRECTIONS[index // len(OBJECTS) % len(DIRECTIONS)],
            "enqueued_at": stamp.value,
            "synced_at": stamp.value,
        }
        for index, stamp in enumerate(stamps)
    ]
    insert(engine, "sync_history", rows)
    expected = Counter(
        (row["object_type"], row["direction"])
        for row, stamp in zip(rows, stamps, strict=True)
        if in_last_hour(stamp.instant)
    )

    served = served_last_hour(collect(runner_for(store_url)))

    assert served == {(obj, d): float(expected[(obj, d)]) for obj in OBJECTS for d in DIRECTIONS}
    engine.dispose()


# Microseconds on MySQL and MariaDB too, whose DATETIME keeps whole seconds by default.
_TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
status_table = sa.Table(
    "sync_change",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("object_type", sa.String(64), nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("record_id", sa.String(64), nullable=False),
    sa.Column("record_name", sa.String(255)),
    sa.Column("enqueued_at", _TIMESTAMP, nullable=False),
    sa.Column("synced_at", _TIMESTAMP),
    sa.Column("failed_at", _TIMESTAMP),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
)
STATUS_TABLE = {
    # The status-table feed reads back two settle times: its window then starts exactly on the
    # hour, DB_NOW - 90m. New series count at once, so that the second collection shows them.
    "settle_time": "45m",
    "new_counter_hold": "0s",
    "mapping": {
        "single_table": {"table": "sync_change"},
        "status_values": {"pending": ["pending"], "synced": ["synced"], "failed": ["failed"]},
    },
}


def status_rows(stamps: list[Stamp]) -> Iterator[dict[str, Any]]:
    """A synced and a failed change at each stamp, spread over the label values."""
    for index, stamp in enumerate(stamps):
        labels = {
            "object_type": OBJECTS[index % len(OBJECTS)],
            "operation": OPERATIONS[index // len(OBJECTS) % len(OPERATIONS)],
            "direction": DIRECTIONS[index // 8 % len(DIRECTIONS)],
            "record_id": str(index),
            "enqueued_at": stamp.value,
        }
        yield {
            **labels,
            "status": "synced",
            "synced_at": stamp.value,
            "failed_at": None,
            "error_code": None,
        }
        yield {
            **labels,
            "status": "failed",
            "synced_at": None,
            "failed_at": stamp.value,
            "error_code": CODES[index % len(CODES)],
        }


def increase(
    before: dict[tuple[str, ...], float], after: dict[tuple[str, ...], float]
) -> dict[tuple[str, ...], float]:
    return {
        key: value - before.get(key, 0.0)
        for key, value in after.items()
        if value != before.get(key, 0.0)
    }


@pytest.mark.usefixtures("pinned_clock")
def test_status_table_counts_each_change_by_its_instant(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    status_table.create(engine)
    runner = runner_for(store_url, **STATUS_TABLE)
    first = collect(runner)  # the exporter is running before the changes become visible
    stamps = boundary_stamps(store_url)
    rows = list(status_rows(stamps))
    insert(engine, "sync_change", rows)
    instants = [stamp.instant for stamp in stamps for _ in ("synced", "failed")]

    collect(runner)  # series seen for the first time are served at 0 in this collection
    second = collect(runner)

    # The window the exporter reads starts at HOUR_START: what is stamped from then on is new.
    labels = ("object_type", "operation", "direction")
    synced = Counter(
        tuple(row[key] for key in labels)
        for row, instant in zip(rows, instants, strict=True)
        if row["status"] == "synced" and instant >= HOUR_START
    )
    failed = Counter(
        (*(row[key] for key in labels), row["error_code"])
        for row, instant in zip(rows, instants, strict=True)
        if row["status"] == "failed" and instant >= HOUR_START
    )
    last_hour = Counter(
        (row["object_type"], row["direction"])
        for row, instant in zip(rows, instants, strict=True)
        if row["status"] == "synced" and in_last_hour(instant)
    )
    name = "crmsync_records_synced_total"
    assert increase(series_total(first, name), series_total(second, name)) == synced
    name = "crmsync_sync_errors_total"
    assert increase(series_total(first, name), series_total(second, name)) == failed
    served = served_last_hour(second)
    assert {key: value for key, value in served.items() if value} == last_hour
    engine.dispose()


def test_sqlite_compares_text_stamps_as_instants(sqlite_url: str) -> None:
    """Every comparison of a stamp with a bound agrees with the instants, whatever the text."""
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    rng = random.Random(14)
    # Bounds on a second, a microsecond off it, and between two milliseconds (where julianday,
    # which rounds text to the millisecond, cannot tell); stamps just around each, and far.
    bounds = [HOUR_END + timedelta(microseconds=m) for m in (0, -1, 400)]
    near = [timedelta(microseconds=m) for m in (0, 1, 99, 100, 101, 499, 500, 501, 1000, 10**6)]
    instants = [bound + sign * step for bound in bounds for step in near for sign in (-1, 1)]
    instants += [HOUR_END + timedelta(seconds=rng.uniform(-20, 20) * 3600) for _ in range(300)]
    stamps = [
        Stamp(instant, form.render(instant))
        for form, instant in product(TEXT_FORMS, instants)
        if form.expresses(instant)
    ]
    history = sync_history.c
    insert(
        engine,
        "sync_history",
        [
            {
                "id": index + 1,
                "object_type": "lead",
                "record_id": "r",
                "operation": "insert",
                "direction": "to_crm",
                "enqueued_at": stamp.value,
                "synced_at": stamp.value,
            }
            for index, stamp in enumerate(stamps)
        ],
    )
    with engine.connect() as connection:
        for comparison, holds in COMPARISONS.items():
            for moment in (*bounds, HOUR_END.replace(tzinfo=None)):
                condition = SQLite().compare_instant(history.synced_at, comparison, moment)
                found = connection.execute(sa.select(history.id).where(condition)).scalars()
                expected = [
                    index + 1
                    for index, stamp in enumerate(stamps)
                    if holds(stamp.instant, moment.replace(tzinfo=UTC))
                ]
                assert sorted(found) == expected, (comparison, moment)
    engine.dispose()


def test_sqlite_windows_are_read_through_the_timestamp_index(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    create_reference_schema(engine)
    queries = build_queries(store_config(sqlite_url), SQLite())
    start, end = HOUR_START.replace(tzinfo=None), HOUR_END.replace(tzinfo=None)
    assert queries.history is not None
    future_rows = queries.future_rows(DB_NOW.timestamp())
    assert future_rows is not None
    expected: dict[Any, str] = {
        queries.synced_between(
            start, end
        ): "ix_sync_history_synced_at (synced_at>? AND synced_at<?)",
        queries.history.rows_since(start): "ix_sync_history_synced_at (synced_at>?)",
        future_rows: "ix_sync_error_failed_at (failed_at>?)",
    }
    with engine.connect() as connection:
        for statement, index_range in expected.items():
            sql = statement.compile(connection)
            parameters = tuple(sql.params[name] for name in sql.positiontup or ())
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters).all()
            details = [row[3] for row in plan]
            assert any(index_range in detail for detail in details), details
            assert not any(detail.startswith("SCAN sync_") for detail in details), details
    engine.dispose()
