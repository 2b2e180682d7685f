"""Counts for review: events per actor, model, action and decision, and per time bucket.

Grouping happens in the database (one GROUP BY per dimension), so stats over millions of events
move a few rows, not the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from secure_maas.audit.events import AuditDecision
from secure_maas.audit.models import events_table
from secure_maas.audit.query import AuditFilter
from secure_maas.timeutil import isoformat

DIMENSIONS = ("actor", "model", "action", "decision")


@dataclass(frozen=True)
class Bucket:
    start: datetime
    total: int
    decisions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditStats:
    total: int
    bucket: timedelta
    counts: dict[str, list[tuple[str | None, int]]]
    buckets: list[Bucket]

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "bucket_seconds": int(self.bucket.total_seconds()),
            **{
                f"by_{name}": [{name: value, "count": n} for value, n in rows]
                for name, rows in self.counts.items()
            },
            "buckets": [
                {"start": isoformat(b.start), "total": b.total, **b.decisions} for b in self.buckets
            ],
        }


def _epoch_bucket(connection: Connection, seconds: int) -> ColumnElement[Any]:
    at = sa.type_coerce(events_table.c.at, sa.String)  # the canonical time text
    if connection.dialect.name == "sqlite":
        return sa.cast(sa.func.strftime("%s", at), sa.BigInteger) // seconds
    moment = sa.cast(at, sa.DateTime(timezone=True))
    return sa.cast(sa.func.floor(sa.extract("epoch", moment) / seconds), sa.BigInteger)


def stats(
    connection: Connection,
    audit_filter: AuditFilter,
    *,
    bucket: timedelta = timedelta(hours=1),
    top: int = 20,
) -> AuditStats:
    """Counts of the events `audit_filter` matches: the `top` values of each dimension, and
    totals and decisions per `bucket` of time, oldest first."""
    seconds = int(bucket.total_seconds())
    if seconds < 1:
        raise ValueError("bucket must be at least one second")
    where = audit_filter.clauses()
    count = sa.func.count().label("n")
    total = connection.execute(
        sa.select(sa.func.count()).select_from(events_table).where(*where)
    ).scalar_one()
    counts: dict[str, list[tuple[str | None, int]]] = {}
    for name in DIMENSIONS:
        column = events_table.c[name]
        rows = connection.execute(
            sa.select(column, count)
            .where(*where)
            .group_by(column)
            .order_by(count.desc(), column)
            .limit(top)
        )
        counts[name] = [(value, int(n)) for value, n in rows]
    slot = _epoch_bucket(connection, seconds).label("slot")
    per_slot: dict[int, dict[str, int]] = {}
    rows = connection.execute(
        sa.select(slot, events_table.c.decision, count)
        .where(*where)
        .group_by(slot, events_table.c.decision)
        .order_by(slot)
    )
    for index, decision, n in rows:
        per_slot.setdefault(int(index), {d.value: 0 for d in AuditDecision})[decision] = int(n)
    buckets = [
        Bucket(
            start=datetime.fromtimestamp(index * seconds, UTC),
            total=sum(decisions.values()),
            decisions=decisions,
        )
        for index, decisions in sorted(per_slot.items())
    ]
    return AuditStats(total=int(total), bucket=bucket, counts=counts, buckets=buckets)
