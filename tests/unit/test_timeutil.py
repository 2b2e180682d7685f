from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_maas.timeutil import (
    MAX_DURATION,
    format_duration,
    isoformat,
    parse_duration,
    parse_isoformat,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("2w", 1209600)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "1.5h", "-1h", "1 hour", "1y"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


def test_isoformat_round_trips_in_utc() -> None:
    moment = datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)
    assert isoformat(moment) == "2026-11-28T10:00:05Z"
    assert parse_isoformat(isoformat(moment)) == moment
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_isoformat("2026-11-28T10:00:05")


@given(st.text(max_size=30))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        delta = parse_duration(text)
    except ValueError:
        return
    assert timedelta(0) <= delta <= MAX_DURATION
    assert text.strip(" \t").rstrip("smhdw").strip(" \t").isascii()


def test_a_stored_timestamp_past_the_calendar_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="years 1 to 9999"):
        parse_isoformat("0001-01-01T00:00:00+14:00")
