"""Readings of a local clock (naive_time_zone) to instants, and bounds to readings, across
the daylight-saving changes of Europe/Berlin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from exporter.wall_clock import WallClock

BERLIN = ZoneInfo("Europe/Berlin")
# 2026: clocks go forward on 29 March at 01:00 UTC and back on 25 October at 01:00 UTC.
SPRING = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
AUTUMN = datetime(2026, 10, 25, 1, 0, tzinfo=UTC)


def wall(instant: datetime) -> datetime:
    """What a clock in Berlin read at ``instant``."""
    return instant.astimezone(BERLIN).replace(tzinfo=None)


def test_readings_mean_one_instant_each_and_bounds_agree_with_them() -> None:
    clock = WallClock(BERLIN)
    step = timedelta(minutes=5)
    instants = [AUTUMN - timedelta(hours=3) + step * i for i in range(72)]
    instants += [SPRING - timedelta(hours=3) + step * i for i in range(72)]
    for instant in instants:
        reading = wall(instant)
        meant = clock.instant(reading.replace(tzinfo=UTC).timestamp())
        second_pass = AUTUMN <= instant < AUTUMN + timedelta(hours=1)
        # A repeated reading means the first instant that showed it: an hour early.
        expected = instant - timedelta(hours=1) if second_pass else instant
        assert meant == expected.timestamp(), instant
        # The bound for an instant splits the readings exactly as their meanings.
        for bound in instants:
            below = reading < clock.reading(bound)
            assert below == (meant < bound.timestamp()), (instant, bound)
    # A reading the clock skipped means the jump; none after it means anything earlier.
    skipped = datetime(2026, 3, 29, 2, 30).replace(tzinfo=UTC).timestamp()
    assert clock.instant(skipped) == SPRING.timestamp()
