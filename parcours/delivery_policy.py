"""When a marketing message may go out: quiet hours and frequency caps, per channel.

Pure rules over times and counts; the ledger applies them at send time with the store's facts.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parcours.definitions import Zone
from parcours.durations import Duration, format_duration, parse_duration
from parcours.rules import Channel
from parcours.timing import next_local_time

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_CAP = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


class QuietHours(BaseModel):
    """A daily window, in the profile's own clock, when marketing messages wait."""

    model_config = ConfigDict(frozen=True)
    start: time
    end: time

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _WINDOW.match(value.strip())
            if match is None:
                raise ValueError(f"expected a window such as 21:00-08:00, got {value!r}")
            h1, m1, h2, m2 = map(int, match.groups())
            return {"start": time(h1, m1), "end": time(h2, m2)}
        return value

    def opens_at(self, now: datetime, zone: ZoneInfo) -> datetime | None:
        """When the window ends if `now` falls inside it, else None (the message may go)."""
        clock = now.astimezone(zone).time().replace(tzinfo=None)
        if self.start == self.end:
            return None
        inside = (
            self.start <= clock < self.end
            if self.start < self.end
            else clock >= self.start or clock < self.end  # the window spans midnight
        )
        return next_local_time(now, self.end, zone) if inside else None

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


class FrequencyCap(BaseModel):
    """At most `limit` marketing messages on a channel within `window`, across everything."""

    model_config = ConfigDict(frozen=True)
    limit: int
    window: Duration

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _CAP.match(value)
            if match is None:
                raise ValueError(f"expected a cap such as 3/7d, got {value!r}")
            return {"limit": int(match.group(1)), "window": parse_duration(match.group(2))}
        return value

    def __str__(self) -> str:
        return f"{self.limit}/{format_duration(self.window)}"


def _default_quiet_hours() -> dict[Channel, QuietHours | None]:
    night = QuietHours(start=time(21), end=time(8))
    return {"sms": night, "push": night}


class DeliveryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Per channel; `off` (or an absent channel) means no quiet hours.
    quiet_hours: dict[Channel, QuietHours | None] = Field(default_factory=_default_quiet_hours)
    frequency_caps: dict[Channel, FrequencyCap] = {}
    # A message held by quiet hours longer than this is dropped as `expired`.
    max_age: Duration = timedelta(hours=24)
    # The clock for profiles with no timezone of their own.
    default_timezone: Zone = "UTC"

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _merge_quiet_hours(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        merged: dict[Any, Any] = {**_default_quiet_hours(), **value}
        return {k: None if v in ("off", "", None) else v for k, v in merged.items()}

    def zone(self, timezone: str | None) -> ZoneInfo:
        return ZoneInfo(timezone or self.default_timezone)
