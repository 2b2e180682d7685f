"""The canonical encoding of an audit event: the exact bytes its MAC covers.

Versions 1 and 2 are frozen. Once an event is written, its bytes must be reproducible forever,
by this code or by an auditor's own tool, so nothing here may change; a new layout gets a new
version number, stored per event in `audit_events.encoding`. `tests/unit/test_audit_encoding.py`
pins both with known-answer vectors.

Layout of version 1:

    b"secure-maas/audit/1\\n" followed by each field of `FIELDS`, in that order, as
      absent value:  b"~"
      integer:       b"i" + decimal digits (with "-" when negative) + b";"
      text:          b"s" + decimal length of its UTF-8 bytes + b":" + the UTF-8 bytes

Time is an integer: microseconds since 1970-01-01T00:00:00Z. Latency is an integer number of
microseconds. `detail` is the JSON text exactly as stored. Each field is self-delimiting, so no
two different events share an encoding.

Version 2 (written since release 0008 of the schema) is version 1 with the prefix
b"secure-maas/audit/2\n" and the time as text: the canonical time text
(`audit.times.canonical_time`, e.g. `2026-12-02T17:21:01.123456Z`), which is also exactly what
the `at` column stores and what filters and prune compare. The MAC then covers the stored text
itself, so no other spelling of the same instant verifies. Version 1 events keep verifying
under version 1 (their stored time must still be the canonical text; see `verify`).
"""

from __future__ import annotations

from collections.abc import Sequence

from secure_maas.errors import SecureMaasError

VERSION_1 = 1
VERSION_2 = 2
#: The version new events are written with.
VERSION = VERSION_2
MEMO_ENTRIES = 4096
PREFIX_V1 = b"secure-maas/audit/1\n"
PREFIX_V2 = b"secure-maas/audit/2\n"

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

#: Field order of version 2: that of version 1, the time as its canonical text.
FIELDS_V2 = (("seq", "i"), ("at", "s"), *FIELDS[2:])
_IS_INT_V2 = tuple(kind == "i" for _name, kind in FIELDS_V2)


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
    return PREFIX_V1 + _fields(values, _IS_INT, memo)


def canonical_v2(values: Sequence[int | str | None], memo: dict[str, str] | None = None) -> bytes:
    """Encode one event's values, given in the order of `FIELDS_V2`, as version 2: the time is
    the canonical time text. The caller checks that text is canonical; this only encodes.
    Raises as `canonical_v1` does."""
    return PREFIX_V2 + _fields(values, _IS_INT_V2, memo)


def _fields(
    values: Sequence[int | str | None], is_ints: tuple[bool, ...], memo: dict[str, str] | None
) -> bytes:
    if len(values) != len(is_ints):
        raise ValueError(f"expected {len(is_ints)} values, got {len(values)}")
    parts: list[str] = []
    append = parts.append
    for value, is_int in zip(values, is_ints, strict=True):
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
    return "".join(parts).encode("utf-8")


def canonical(version: int, values: Sequence[int | str | None]) -> bytes:
    """Encode with the layout `version` names (its own field order, see `FIELDS` and
    `FIELDS_V2`); raise `UnknownEncoding` for any other."""
    if version == VERSION_1:
        return canonical_v1(values)
    if version == VERSION_2:
        return canonical_v2(values)
    raise UnknownEncoding(f"unknown audit encoding version {version}")
