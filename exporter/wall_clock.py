"""Timestamp columns without a zone that hold a local wall-clock time: readings to instants.

A local clock shows some readings twice (the hour repeated when daylight-saving time ends)
and skips others (the hour that never shows when it begins). A store that writes such
readings cannot say which of two instants a repeated reading meant; the exporter settles it
one way, everywhere, so that every count agrees with every bound:

- a repeated reading is the *first* instant that showed it (the earlier one);
- a skipped reading (no correct clock shows it) is the instant the clock jumped over it.

Read this way, later readings never mean earlier instants, so a bound on instants is a
bound on readings and the databases' indexes on the columns still serve the queries. Changes
written during the second pass of a repeated hour are placed an hour early: their latency
may read an hour long or short, their age an hour older.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

_ONE_MICROSECOND = timedelta(microseconds=1)
_SEARCH = timedelta(hours=3)
"""Longer than any clock change: where a transition is searched for around a reading."""


class WallClock:
    """Readings of ``zone``'s clock (naive datetimes, or their seconds read as UTC)."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone

    def instant(self, reading: float) -> float:
        """The Unix time a reading means; ``reading`` is its seconds since 1970 read as UTC."""
        wall = datetime.fromtimestamp(reading, UTC).replace(tzinfo=None)
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        if first.astimezone(self.zone).replace(tzinfo=None) == wall:
            return first.timestamp()
        # Skipped: fold=0 read it with the offset from before the jump, which puts it after
        # the jump; the jump itself lies within the length of the skipped span before that.
        return self._transition(first - _SEARCH, first).timestamp()

    def reading(self, moment: datetime) -> datetime:
        """The earliest reading that means ``moment`` or later (aware, or naive UTC).

        ``column >= reading(b)`` holds exactly for readings meaning ``b`` or later, and
        ``column < reading(b)`` for those meaning earlier.
        """
        utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        local = utc.astimezone(self.zone)
        if local.fold == 1:
            # The second pass of a repeated hour: its readings mean the first pass, before
            # ``moment``. The first reading after it comes when the repetition ends.
            changed = self._transition(utc - _SEARCH, utc)
            repeated = _offset(changed - _ONE_MICROSECOND, self.zone) - _offset(changed, self.zone)
            return _wall(changed + repeated, self.zone)
        just_before = utc - _ONE_MICROSECOND
        if _offset(just_before, self.zone) < _offset(utc, self.zone):
            # The clock jumped forward at ``moment``: the skipped readings mean it too.
            return _wall(just_before, self.zone) + _ONE_MICROSECOND
        return local.replace(tzinfo=None)

    def _transition(self, low: datetime, high: datetime) -> datetime:
        """The first instant after ``low`` with ``high``'s UTC offset (to the microsecond)."""
        target = _offset(high, self.zone)
        while high - low > _ONE_MICROSECOND:
            middle = low + (high - low) / 2
            if _offset(middle, self.zone) == target:
                high = middle
            else:
                low = middle
        return high


def _offset(utc: datetime, zone: tzinfo) -> timedelta:
    offset = utc.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _wall(utc: datetime, zone: tzinfo) -> datetime:
    return utc.astimezone(zone).replace(tzinfo=None)
