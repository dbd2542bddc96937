"""Naive columns written in local time (naive_time_zone): ages, latencies and hours across
the daylight-saving changes of Europe/Berlin, against the instants the writer meant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from crmsync_testing.helpers import collect, collect_settled, runner_for, series_total, store_config
from exporter.collection import StoreReader
from exporter.schema import create_reference_schema, sync_history, sync_queue
from exporter.wall_clock import WallClock

BERLIN = ZoneInfo("Europe/Berlin")
# 2026: clocks go forward on 29 March at 01:00 UTC and back on 25 October at 01:00 UTC.
SPRING = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
AUTUMN = datetime(2026, 10, 25, 1, 0, tzinfo=UTC)
LOCAL = {"naive_time_zone": "Europe/Berlin"}


def wall(instant: datetime) -> datetime:
    """What a clock in Berlin read at ``instant``: what the store writes."""
    return instant.astimezone(BERLIN).replace(tzinfo=None)


def change(obj: str) -> dict[str, str]:
    return {"object_type": obj, "record_id": "1", "operation": "insert", "direction": "to_crm"}


def test_ages_and_latencies_across_both_changes(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    # The oldest waiting change of "lead" was queued in the first pass of the repeated
    # hour (its reading is ambiguous), of "contact" just after the spring jump.
    queued = {
        "lead": [AUTUMN - timedelta(minutes=30), AUTUMN + timedelta(hours=5)],
        "contact": [SPRING + timedelta(minutes=1), SPRING + timedelta(days=3)],
    }
    with engine.begin() as connection:
        connection.execute(
            sync_queue.insert(),
            [
                {**change(obj), "enqueued_at": wall(instant)}
                for obj, instants in queued.items()
                for instant in instants
            ],
        )
    runner = runner_for(store_url, **LOCAL)
    first = collect(runner)
    oldest = series_total(first, "crmsync_oldest_pending_timestamp_seconds")
    for obj, instants in queued.items():
        # (SQLite reads text through julianday(): some microseconds off.)
        assert oldest[(obj, "insert", "to_crm")] == pytest.approx(
            min(instants).timestamp(), abs=1e-3
        )
    ages = series_total(first, "crmsync_oldest_pending_age_seconds")
    now = datetime.now(UTC).timestamp()
    assert ages[("lead", "insert", "to_crm")] == pytest.approx(
        now - queued["lead"][0].timestamp(), abs=5
    )

    # Syncs that span a change: wall-clock differences are an hour off, true latencies not.
    spans = [
        (AUTUMN - timedelta(hours=1, minutes=30), AUTUMN + timedelta(hours=1, minutes=30)),
        (SPRING - timedelta(minutes=20), SPRING + timedelta(minutes=20)),
        (SPRING + timedelta(hours=2), SPRING + timedelta(hours=2, seconds=40)),
    ]
    with engine.begin() as connection:
        connection.execute(
            sync_history.insert(),
            [
                {**change("lead"), "enqueued_at": wall(start), "synced_at": wall(end)}
                for start, end in spans
            ],
        )
    result = collect_settled(runner)
    key = ("lead", "insert", "to_crm")
    assert series_total(result, "crmsync_sync_latency_seconds_count")[key] == len(spans)
    assert series_total(result, "crmsync_sync_latency_seconds_sum")[key] == pytest.approx(
        sum((end - start).total_seconds() for start, end in spans), abs=1e-3
    )
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in result.items()
        if name == "crmsync_sync_latency_seconds_bucket"
        and (dict(labels)["object"], dict(labels)["operation"], dict(labels)["direction"]) == key
    }
    # 40 s, 40 min and 3 h: not the 1 h 40 min and 2 h the readings differ by.
    assert (buckets["60"], buckets["3600"], buckets["7200"], buckets["14400"]) == (1, 2, 2, 3)
    engine.dispose()


def test_hours_across_both_changes_count_what_their_readings_mean(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    step = timedelta(minutes=10)
    instants = [AUTUMN - timedelta(hours=3) + step * i for i in range(36)]
    instants += [SPRING - timedelta(hours=3) + step * i for i in range(36)]
    with engine.begin() as connection:
        connection.execute(
            sync_history.insert(),
            [{**change("lead"), "enqueued_at": wall(t), "synced_at": wall(t)} for t in instants],
        )
    reader = StoreReader(store_config(store_url, **LOCAL))
    clock = WallClock(BERLIN)
    try:
        with reader.engine.connect() as connection:
            for change_at in (AUTUMN, SPRING):
                for hours in range(-2, 3):
                    start = change_at + timedelta(hours=hours)
                    end = start + timedelta(hours=1)
                    statement = reader.queries.synced_between(start, end)
                    served = sum(
                        reader.queries.hour_row(row).synced for row in connection.execute(statement)
                    )
                    expected = sum(
                        start.timestamp()
                        <= clock.instant(wall(t).replace(tzinfo=UTC).timestamp())
                        < end.timestamp()
                        for t in instants
                    )
                    # Each hour holds six rows, but the repeated hour's second pass (from the
                    # change on): its readings mean the first pass, which holds twelve.
                    repeated = change_at is AUTUMN
                    assert expected == ({-1: 12, 0: 0}.get(hours, 6) if repeated else 6)
                    assert served == expected, (start, served, expected)
    finally:
        reader.close()
        engine.dispose()
