from datetime import timedelta

import pytest

from parcours.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(weeks=1)),
        ("1.5h", timedelta(minutes=90)),
        ("PT2H", timedelta(hours=2)),
        ("P1DT6H", timedelta(days=1, hours=6)),
        ("pt30m", timedelta(minutes=30)),
    ],
)
def test_durations_parse_in_short_and_iso_forms(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1x", "P", "PT", "-1h", "0s", "h", "1 day", 5, True, None])
def test_bad_durations_say_what_was_expected(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_durations_format_back_to_their_shortest_form() -> None:
    assert format_duration(timedelta(days=1)) == "1d"
    assert format_duration(timedelta(minutes=90)) == "90m"
    assert format_duration(timedelta(seconds=1.5)) == "1.5s"
    assert parse_duration(format_duration(timedelta(hours=36))) == timedelta(hours=36)
