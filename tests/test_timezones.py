"""Ages and timestamps are right whether the store's columns carry a time zone or not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from tests.helpers import collect, runner_for, series_total

AGES = (30.0, 600.0, 7200.0)


def queue_table(column_type: sa.types.TypeEngine[Any]) -> sa.Table:
    return sa.Table(
        "sync_queue",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("object_type", sa.String(64)),
        sa.Column("record_id", sa.String(64)),
        sa.Column("operation", sa.String(16)),
        sa.Column("direction", sa.String(16)),
        sa.Column("enqueued_at", column_type),
    )


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
