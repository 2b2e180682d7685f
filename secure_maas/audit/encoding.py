"""The canonical encoding of an audit event: the exact bytes its MAC covers.

Version 1 is frozen. Once an event is written, its bytes must be reproducible forever, by this
code or by an auditor's own tool, so nothing here may change; a new layout gets a new version
number, stored per event in `audit_events.encoding`. `tests/unit/test_audit_encoding.py` pins it
with known-answer vectors.

Layout of version 1:

    b"secure-maas/audit/1\\n" followed by each field of `FIELDS`, in that order, as
      absent value:  b"~"
      integer:       b"i" + decimal digits (with "-" when negative) + b";"
      text:          b"s" + decimal length of its UTF-8 bytes + b":" + the UTF-8 bytes

Time is an integer: microseconds since 1970-01-01T00:00:00Z. Latency is an integer number of
microseconds. `detail` is the JSON text exactly as stored. Each field is self-delimiting, so no
two different events share an encoding.
"""

from __future__ import annotations

from collections.abc import Sequence

from secure_maas.errors import SecureMaasError

VERSION = 1
MEMO_ENTRIES = 4096
PREFIX_V1 = b"secure-maas/audit/1\n"

#: Field order of version 1: (name, kind) with kind "i" (integer) or "s" (text).
FIELDS = (
    ("seq", "i"),
    ("at_us", "i"),
    ("request_id", "s"),
    ("actor", "s"),
    ("actor_kind", "s"),
    ("action", "s"),
    ("model", "s"),
    ("model_version", "i"),
    ("decision", "s"),
    ("reason_code", "s"),
    ("reason", "s"),
    ("http_status", "i"),
    ("client", "s"),
    ("latency_us", "i"),
    ("rows", "i"),
    ("body_sha256", "s"),
    ("detail", "s"),
    ("key_id", "s"),
)
_IS_INT = tuple(kind == "i" for _name, kind in FIELDS)


class UnknownEncoding(SecureMaasError):
    """An event names an encoding version this code does not know."""


def canonical_v1(values: Sequence[int | str | None], memo: dict[str, str] | None = None) -> bytes:
    """Encode one event's values, given in the order of `FIELDS`, as version 1.

    Types are checked exactly: an integer field holding text (SQLite stores what it is given)
    could otherwise shift bytes between fields and keep the encoding, and so the MAC, unchanged.
    `memo` caches the encoding of text values across calls (actors, models and actions repeat
    from one event to the next); it changes nothing but speed.
    Raises `TypeError` for a value of the wrong type, `ValueError` for a wrong number of values.
    """
    if len(values) != len(FIELDS):
        raise ValueError(f"expected {len(FIELDS)} values, got {len(values)}")
    parts: list[str] = []
    append = parts.append
    for value, is_int in zip(values, _IS_INT, strict=True):
        if value is None:
            append("~")
        elif is_int:
            if type(value) is not int:
                raise TypeError(f"{type(value).__name__} value for an integer field")
            append(f"i{value};")
        elif type(value) is str:
            fragment = None if memo is None else memo.get(value)
            if fragment is None:
                size = len(value) if value.isascii() else len(value.encode("utf-8"))
                fragment = f"s{size}:{value}"
                if memo is not None and len(memo) < MEMO_ENTRIES:
                    memo[value] = fragment
            append(fragment)
        else:
            raise TypeError(f"{type(value).__name__} value for a text field")
    return PREFIX_V1 + "".join(parts).encode("utf-8")


def canonical(version: int, values: Sequence[int | str | None]) -> bytes:
    """Encode with the layout `version` names; raise `UnknownEncoding` for any other."""
    if version == VERSION:
        return canonical_v1(values)
    raise UnknownEncoding(f"unknown audit encoding version {version}")
