"""The one spelling of an event's time: what is MAC'd, stored and compared.

`2026-12-02T17:21:01.123456Z`: UTC, microseconds always written (6 digits), a trailing `Z`,
27 characters. The text is fixed-width and ordered like the instants it names, so the
database compares times as text, identically on SQLite and PostgreSQL, and a filter
(`audit list --since`, `/admin/audit?since=`) or a prune cut given as a `datetime` is turned
into this text before any comparison. Another spelling of the same instant (`...-07:00`, a
space for the `T`, fewer digits) is not an event's time: `verify` refuses it, naming the event.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

#: Length of every canonical time text.
TIME_TEXT_LENGTH = 27
#: The shape of a canonical time text (whether it names a real day is `is_canonical`'s part).
CANONICAL_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


class NaiveTime(ValueError):
    """A time without a UTC offset: which zone was meant is a guess, so it is refused."""


def canonical_time(moment: datetime) -> str:
    """`moment` (timezone-aware) as the canonical text; a naive datetime raises `NaiveTime`."""
    if moment.tzinfo is None:
        raise NaiveTime("naive datetime given for an audit time; use timeutil.utcnow()")
    utc = moment.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def is_canonical(value: object) -> bool:
    """Whether `value` is exactly a canonical time text naming a real instant."""
    if type(value) is not str or CANONICAL_SHAPE.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:  # 2026-13-45T...: the right shape, no such day
        return False
    return True


def parse_canonical(text: str) -> datetime:
    """The aware UTC datetime a canonical text names; ValueError for any other text."""
    if not is_canonical(text):
        raise ValueError(f"{text!r} is not a canonical audit time (YYYY-MM-DDTHH:MM:SS.ffffffZ)")
    return datetime.fromisoformat(text).astimezone(UTC)


def read_time(text: str) -> datetime:
    """The instant a stored time names, canonical or not (a naive text taken as UTC), for
    review commands that must still show a tampered event; ValueError when it names none."""
    if is_canonical(text):
        return datetime.fromisoformat(text).astimezone(UTC)
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
