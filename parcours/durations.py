"""Durations as users write them: `30s`, `15m`, `2h`, `3d`, `1w`, or ISO 8601 (`PT2H`, `P1DT6H`)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_SHORT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ISO = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)

EXPECTED = "a duration such as 30s, 15m, 2h, 3d, 1w or ISO 8601 like PT2H"


def parse_duration(value: Any) -> timedelta:
    """Parse a duration; raise ValueError saying what was expected."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected {EXPECTED}, got {value!r}")
    text = value.strip()
    try:
        if m := _SHORT.match(text):
            delta = timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
        elif (m := _ISO.match(text.upper())) and text.upper() not in ("P", "PT"):
            parts = {k: float(v) for k, v in m.groupdict().items() if v}
            delta = timedelta(
                weeks=parts.get("w", 0),
                days=parts.get("d", 0),
                hours=parts.get("h", 0),
                minutes=parts.get("m", 0),
                seconds=parts.get("s", 0),
            )
        else:
            raise ValueError(f"expected {EXPECTED}, got {value!r}")
    except OverflowError:
        # Pydantic lets an OverflowError through as a crash, not a validation error.
        raise ValueError(
            f"expected a duration under {timedelta.max.days} days, got {value!r}"
        ) from None
    if delta <= timedelta(0):
        raise ValueError(f"expected a duration greater than zero, got {value!r}")
    return delta


def format_duration(delta: timedelta) -> str:
    """The shortest exact form in the user's notation: 90 minutes is `90m`, a day is `1d`."""
    seconds = delta.total_seconds()
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# Written as text in files and histories (`1d`), a timedelta in code.
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
