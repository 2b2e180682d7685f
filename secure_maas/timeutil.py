"""Clock and duration helpers shared by tokens, keys and the audit log.

Every timestamp secure-maas stores is timezone-aware UTC; code that must be tested against a
fixed time takes `now` as an argument and only falls back to `utcnow()` at the edges.

Durations and moments often come from a caller (`/admin/audit?since=7d`), so the parsers here
read ASCII digits only (`str.isdigit()` takes `²`, and `\\d` takes Arabic-Indic digits) and keep
every result inside what a `datetime` holds: whatever the text, the answer is a value or a
`ValueError`, never an `OverflowError`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"[ \t]*([0-9]+)[ \t]*([smhdw]?)[ \t]*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The longest duration `parse_duration` reads: a hundred years is past any token lifetime,
#: retention or audit window, and far inside what `timedelta` and `datetime` arithmetic hold.
MAX_DURATION = timedelta(days=36525)
_MAX_DIGITS = len(str(int(MAX_DURATION.total_seconds())))
_SHOWN = 40


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (never naive)."""
    return datetime.now(UTC)


def parse_duration(text: str) -> timedelta:
    """Parse `90`, `90s`, `15m`, `1h`, `7d` or `2w` into a timedelta, at most `MAX_DURATION`.

    Raises ValueError with a message that shows valid examples.
    """
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"{_quoted(text)} is not a duration (examples: 3600, 90s, 15m, 1h, 7d)")
    amount, unit = match.groups()
    digits = amount.lstrip("0")
    # Counted before `int()`, which refuses more than 4300 digits with its own ValueError.
    seconds = int(digits or "0") * _UNIT_SECONDS[unit] if len(digits) <= _MAX_DIGITS else None
    if seconds is None or seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{_quoted(text)} is longer than {MAX_DURATION.days}d (100 years)")
    return timedelta(seconds=seconds)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC, a naive one taken as UTC already; ValueError when that falls outside
    the years 1 to 9999 (`0001-01-01T00:00:00+14:00` is still year 0 in UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{moment.isoformat()} is outside the years 1 to 9999 once in UTC"
        ) from None


def _quoted(text: str) -> str:
    """`text` quoted for an error message: cut short, every unprintable character escaped
    (`repr` spells them as `audit.text` does; that package imports this module)."""
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "...")


def format_duration(delta: timedelta) -> str:
    """The shortest exact form of `delta` that `parse_duration` reads back."""
    seconds = int(delta.total_seconds())
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def isoformat(moment: datetime) -> str:
    """RFC 3339 text in UTC with a `Z`, the one form secure-maas writes timestamps in."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_isoformat(text: str) -> datetime:
    """Read a timestamp written by `isoformat` (or any ISO 8601 form with an offset)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {_quoted(text)} has no UTC offset")
    return as_utc(moment)
