"""The last full hour follows the configured zone's clock: half-hour zones and DST days too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from crmsync_testing.helpers import (
    add_history,
    by_name,
    collect,
    runner_for,
    served_last_hour,
    synced_between,
)
from exporter.collection import previous_full_hour
from exporter.config import ConfigError, parse_config
from exporter.schema import create_reference_schema

ZONES = (
    "UTC",
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "Australia/Adelaide",  # +09:30 / +10:30
    "America/St_Johns",  # -03:30 / -02:30
    "Europe/Berlin",
    "Australia/Lord_Howe",  # a 30-minute DST shift
)


def hour_by_walking_back(now: float, zone: str) -> tuple[float, float]:
    """The last moment before ``now`` at which the zone's clock read HH:00:00, minus an hour.

    Independent of the exporter's arithmetic: it steps back a minute at a time and reads
    the wall clock at each step.
    """
    moment = now - now % 60
    while True:
        clock = datetime.fromtimestamp(moment, UTC).astimezone(ZoneInfo(zone))
        if clock.minute == 0 and clock.second == 0:
            return moment - 3600, moment
        moment -= 60


def instants() -> list[float]:
    """Every 7 minutes across the DST changes of 2026 in Europe, the Americas and Australia."""
    days = [
        datetime(2026, 3, 29, tzinfo=UTC),  # Europe: clocks go forward
        datetime(2026, 10, 25, tzinfo=UTC),  # Europe: clocks go back
        datetime(2026, 3, 8, tzinfo=UTC),  # North America forward
        datetime(2026, 11, 1, tzinfo=UTC),  # North America back
        datetime(2026, 4, 5, tzinfo=UTC) - timedelta(hours=18),  # Australia back
        datetime(2026, 10, 4, tzinfo=UTC) - timedelta(hours=18),  # Australia forward
        datetime(2026, 7, 1, tzinfo=UTC),
    ]
    return [
        (day + timedelta(minutes=7 * step, seconds=13.5)).timestamp()
        for day in days
        for step in range(-40, 400)
    ]


@pytest.mark.parametrize("zone", ZONES)
def test_the_hour_ends_where_the_zones_clock_last_read_a_full_hour(zone: str) -> None:
    for now in instants():
        assert previous_full_hour(now, ZoneInfo(zone)) == hour_by_walking_back(now, zone), (
            zone,
            datetime.fromtimestamp(now, UTC),
        )


def test_the_hour_after_clocks_go_back_is_the_repeated_one() -> None:
    # 2026-10-25, Berlin: 02:00-03:00 happens twice (CEST, then CET). At 02:30 CET the last
    # full hour ended at 02:00 CET (01:00 UTC) and began at 02:00 CEST (00:00 UTC).
    now = datetime(2026, 10, 25, 1, 30, tzinfo=UTC).timestamp()
    start, end = previous_full_hour(now, ZoneInfo("Europe/Berlin"))
    assert datetime.fromtimestamp(end, UTC) == datetime(2026, 10, 25, 1, 0, tzinfo=UTC)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 10, 25, 0, 0, tzinfo=UTC)


def test_a_zone_that_does_not_exist_is_named_with_its_key_path() -> None:
    text = (
        "stores:\n  - name: a\n    url: sqlite:///x.db\n    last_hour_time_zone: Europe/Atlantis\n"
    )
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    (problem,) = error.value.problems
    assert problem.startswith("stores[0].last_hour_time_zone: 'Europe/Atlantis' is not an IANA")
    default = parse_config("stores:\n  - name: a\n    url: sqlite:///x.db\n").stores[0]
    assert default.last_hour_time_zone == "UTC"


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/St_Johns"])
def test_the_gauge_counts_the_zones_last_full_hour(store_url: str, zone: str) -> None:
    """The exporter's count against a count of the same rows over the independently found hour."""
    engine = sa.create_engine(store_url)
    create_reference_schema(engine)
    add_history(engine, 2_000, hours=3)
    before = datetime.now(UTC).timestamp()
    result = collect(runner_for(store_url, last_hour_time_zone=zone))
    after = datetime.now(UTC).timestamp()
    start, end = hour_by_walking_back(after, zone)
    if hour_by_walking_back(before, zone) != (start, end):
        pytest.skip("the collection straddled the zone's full hour")
    expected = synced_between(
        engine,
        datetime.fromtimestamp(start, UTC).replace(tzinfo=None),
        datetime.fromtimestamp(end, UTC).replace(tzinfo=None),
    )
    engine.dispose()
    assert served_last_hour(result) == expected
    assert sum(expected.values()) > 0
    (served_start,) = by_name(
        result, "crmsync_records_synced_last_hour_start_timestamp_seconds"
    ).values()
    assert served_start == start
    # Neither zone's hours start on a full UTC hour.
    assert start % 3600 == 1800
