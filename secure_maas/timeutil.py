"""Clock and duration helpers shared by tokens, keys and the audit log.

Every timestamp secure-maas stores is timezone-aware UTC; code that must be tested against a
fixed time takes `now` as an argument and only falls back to `utcnow()` at the edges.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (never naive)."""
    return datetime.now(UTC)


def parse_duration(text: str) -> timedelta:
    """Parse `90`, `90s`, `15m`, `1h`, `7d` or `2w` into a timedelta.

    Raises ValueError with a message that shows valid examples.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 3600, 90s, 15m, 1h, 7d)")
    amount, unit = match.groups()
    return timedelta(seconds=int(amount) * _UNIT_SECONDS[unit])


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
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.astimezone(UTC)
