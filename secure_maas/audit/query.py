"""Reading the log for review: filters, keyset paging, single events, and streaming.

Everything here only SELECTs, so an auditor's read-only database user can run it. Paging is by
sequence number (`after`), which stays correct while writers append, unlike offsets.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement

from secure_maas.audit.events import LIMITS, AuditRecord
from secure_maas.audit.models import CANONICAL_COLUMNS, events_table
from secure_maas.audit.text import quote
from secure_maas.timeutil import as_utc, parse_duration

STREAM_ROWS = 1_000
#: A relative time: ASCII digits and a unit (`\d` would take Arabic-Indic digits too).
_RELATIVE = re.compile(r"[0-9]+[ \t]*[smhdw]")

#: The characters a text filter (actor, model, action) may not hold: Unicode's Cc (C0, DEL,
#: C1). One matches no event and PostgreSQL refuses NUL in a query; anything else (a no-break
#: space, a format character) is text like any other, a rule OpenAPI can state as a pattern.
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")


def text_filter_problem(name: str, text: str) -> str | None:
    """Why `text` cannot be the `name` filter (control characters, over the column's length),
    or None: the one rule of the API's and the console's audit filters."""
    if _CONTROL.search(text) or len(text) > LIMITS[name]:
        return (
            f"{name} must be text without control characters, of at most {LIMITS[name]} characters"
        )
    return None


#: Every column of an event, in `AuditRecord` field order.
RECORD_COLUMNS = (*CANONICAL_COLUMNS, "mac", "encoding")


def parse_time(text: str, *, now: datetime) -> datetime:
    """A point in time from `1h`, `30m`, `7d` (that long before `now`, at most 100 years) or an
    ISO 8601 date or time in the years 1 to 9999 once in UTC; a time without an offset is taken
    as UTC, a bare date as its midnight UTC. ASCII only; anything else is a `ValueError` whose
    message shows the accepted forms (never an `OverflowError`: callers answer it with 400)."""
    text = text.strip(string.whitespace)
    if _RELATIVE.fullmatch(text):
        try:
            return now - parse_duration(text)
        except OverflowError:
            raise ValueError(f"{quote(text, limit=40)} reaches before the year 1") from None
    try:
        if not text.isascii():
            raise ValueError("not ASCII")
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{quote(text, limit=40)} is neither a duration (1h, 30m, 7d) nor an ISO date "
            "(2026-11-28, 2026-11-28T10:00:00Z)"
        ) from None
    return as_utc(moment)


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that sees one consistent snapshot of the database.

    PostgreSQL: REPEATABLE READ, READ ONLY. SQLite: a deferred transaction, whose first read
    fixes the snapshot (WAL mode). Needs SELECT rights only.
    """
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        with connection.begin():
            yield connection


@dataclass(frozen=True)
class AuditFilter:
    """Which events to show: every given condition must hold (None means any)."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    model: str | None = None
    action: str | None = None
    decision: str | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        c = events_table.c
        clauses: list[ColumnElement[bool]] = []
        if self.since is not None:
            clauses.append(c.at >= self.since)
        if self.until is not None:
            clauses.append(c.at < self.until)
        for name in ("actor", "model", "action", "decision"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(c[name] == value)
        return clauses


def to_record(row: Sequence[Any]) -> AuditRecord:
    """An `AuditRecord` from a row selected with `RECORD_COLUMNS`."""
    values = dict(zip(RECORD_COLUMNS, row, strict=True))
    values["mac"] = bytes(values["mac"])
    return AuditRecord(**values)


def _select(audit_filter: AuditFilter) -> sa.Select[Any]:
    columns = [events_table.c[name] for name in RECORD_COLUMNS]
    return sa.select(*columns).where(*audit_filter.clauses())


def list_events(
    connection: Connection,
    audit_filter: AuditFilter,
    *,
    after: int | None = None,
    limit: int = 50,
) -> list[AuditRecord]:
    """Up to `limit` matching events with seq above `after`, oldest first (one page)."""
    query = _select(audit_filter)
    if after is not None:
        query = query.where(events_table.c.seq > after)
    query = query.order_by(events_table.c.seq).limit(limit)
    return [to_record(row) for row in connection.execute(query)]


def latest_events(
    connection: Connection, audit_filter: AuditFilter, *, count: int
) -> list[AuditRecord]:
    """The newest `count` matching events, oldest first (`audit tail`)."""
    query = _select(audit_filter).order_by(events_table.c.seq.desc()).limit(count)
    return [to_record(row) for row in connection.execute(query)][::-1]


def get_event(connection: Connection, seq: int) -> AuditRecord | None:
    row = connection.execute(_select(AuditFilter()).where(events_table.c.seq == seq)).first()
    return None if row is None else to_record(row)


def iter_events(
    connection: Connection, audit_filter: AuditFilter, *, after: int | None = None
) -> Iterator[AuditRecord]:
    """Every matching event, oldest first, fetched in chunks (memory stays flat at any size)."""
    query = _select(audit_filter)
    if after is not None:
        query = query.where(events_table.c.seq > after)
    result = connection.execute(
        query.order_by(events_table.c.seq).execution_options(yield_per=STREAM_ROWS)
    )
    try:
        for row in result:
            yield to_record(row)
    finally:
        result.close()


def bounds(connection: Connection) -> tuple[int | None, int | None, int]:
    """The lowest and highest seq present and the number of events."""
    c = events_table.c
    row = connection.execute(sa.select(sa.func.min(c.seq), sa.func.max(c.seq), sa.func.count()))
    low, high, count = row.one()
    return low, high, int(count)
