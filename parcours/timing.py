"""When a `wait ... until` ends: the next time of day in a zone, daylight saving included."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


def next_local_time(now: datetime, at: time, zone: ZoneInfo) -> datetime:
    """The first moment after `now` when the clock in `zone` reads `at`, in UTC.

    Across a daylight-saving change the wall-clock time is kept (09:00 stays 09:00 local, so
    the UTC instant moves by an hour); a time that does not exist that day (02:30 when clocks
    jump from 02:00 to 03:00) moves forward by the gap (03:30); a time that happens twice
    (02:30 when clocks fall back) is its first occurrence.
    """
    local_now = now.astimezone(zone)
    day = local_now.date()
    for _ in range(3):
        candidate = _existing(datetime.combine(day, at, tzinfo=zone))
        if candidate > local_now:
            return candidate.astimezone(UTC)
        day += timedelta(days=1)
    raise AssertionError("unreachable: a later day always has the time")


def _existing(moment: datetime) -> datetime:
    # A local time in the spring-forward gap does not round-trip through UTC; the round trip
    # is the same time moved forward by the gap.
    round_trip = moment.astimezone(UTC).astimezone(moment.tzinfo)
    if round_trip.replace(tzinfo=None) != moment.replace(tzinfo=None):
        return round_trip
    return moment
