"""The canonical time text: one spelling per instant, ordered as text like the instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from secure_maas.audit.times import (
    NaiveTime,
    canonical_time,
    is_canonical,
    parse_canonical,
    read_time,
)

MOMENT = datetime(2026, 12, 2, 17, 21, 1, 123456, tzinfo=UTC)


def test_one_text_per_instant_whatever_the_offset() -> None:
    assert canonical_time(MOMENT) == "2026-12-02T17:21:01.123456Z"
    seven_west = MOMENT.astimezone(timezone(timedelta(hours=-7)))
    assert canonical_time(seven_west) == "2026-12-02T17:21:01.123456Z"
    assert canonical_time(MOMENT.replace(microsecond=0)) == "2026-12-02T17:21:01.000000Z"
    assert canonical_time(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000Z"
    with pytest.raises(NaiveTime):
        canonical_time(datetime(2026, 12, 2))


def test_text_order_is_time_order() -> None:
    moments = [MOMENT + timedelta(microseconds=step) for step in (-(10**12), -1, 0, 1, 10**9)]
    texts = [canonical_time(m) for m in moments]
    assert texts == sorted(texts)


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-02T10:21:01.123456-07:00",  # the same instant, another offset
        "2026-12-02T17:21:01.123456+00:00",
        "2026-12-02 17:21:01.123456",  # SQLAlchemy's SQLite form
        "2026-12-02T17:21:01.123Z",  # other precision
        "2026-12-02T17:21:01Z",
        "2026-12-02t17:21:01.123456z",
        "2026-13-02T17:21:01.123456Z",  # the right shape, no such month
        " 2026-12-02T17:21:01.123456Z",
        "٢٠٢٦-12-02T17:21:01.123456Z",  # non-ASCII digits
    ],
)
def test_any_other_spelling_is_not_canonical(text: str) -> None:
    assert not is_canonical(text)
    with pytest.raises(ValueError, match="not a canonical audit time"):
        parse_canonical(text)


def test_reading_a_stored_time() -> None:
    assert is_canonical("2026-12-02T17:21:01.123456Z")
    assert parse_canonical("2026-12-02T17:21:01.123456Z") == MOMENT
    # Review commands still show a tampered spelling, at its instant (verify names it).
    assert read_time("2026-12-02T10:21:01.123456-07:00") == MOMENT
    assert read_time("2026-12-02 17:21:01.123456") == MOMENT
    assert not is_canonical(1795865425)
