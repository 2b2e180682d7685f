"""Counts for review: events per actor, model, action and decision, and per time bucket.

Grouping happens in the database (one GROUP BY per dimension), so stats over millions of events
move a few rows, not the log.
"""

from __future__ import annotations

import math
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


#: Percentiles the console's latency chart draws.
PERCENTILES = (50, 95, 99)
#: The most latencies one `latency_percentiles` call reads (the newest matching ones): a wide
#: filter over a large log costs one bounded read, not the log.
LATENCY_ROWS = 100_000
#: Dimensions `denials` groups by.
DENIAL_DIMENSIONS = ("actor", "model")
#: Decisions whose reasons `top_reasons` counts: the requests that did not go through.
REFUSALS = (AuditDecision.DENY.value, AuditDecision.ERROR.value)


def _top(
    connection: Connection, where: list[ColumnElement[bool]], column: Any, top: int
) -> list[tuple[str | None, int]]:
    count = sa.func.count().label("n")
    # NULL sorts first on SQLite and last on PostgreSQL: NULLS LAST breaks ties alike on both.
    rows = connection.execute(
        sa.select(column, count)
        .where(*where)
        .group_by(column)
        .order_by(count.desc(), column.asc().nulls_last())
        .limit(top)
    )
    return [(value, int(n)) for value, n in rows]


def _check_top(top: int) -> None:
    if top < 1:
        raise ValueError("top must be at least 1")


def denials(
    connection: Connection, audit_filter: AuditFilter, *, by: str, top: int = 10
) -> list[tuple[str | None, int]]:
    """The `top` actors (`by="actor"`) or models (`by="model"`) with the most denied events
    among those `audit_filter` matches, most first (ties by name), with their counts. Events
    without a model (sign-in failures, listings) count under None when grouping by model."""
    if by not in DENIAL_DIMENSIONS:
        raise ValueError(f"denials are grouped by {' or '.join(DENIAL_DIMENSIONS)}, not {by!r}")
    _check_top(top)
    c = events_table.c
    where = [*audit_filter.clauses(), c.decision == AuditDecision.DENY.value]
    return _top(connection, where, c[by], top)


def top_reasons(
    connection: Connection, audit_filter: AuditFilter, *, top: int = 10
) -> list[tuple[str | None, int]]:
    """The `top` reason codes of the refused events (denied or failed) `audit_filter` matches,
    most first, with their counts: the codes, not the free-text reasons, so requests refused
    for the same cause count together whatever their details."""
    _check_top(top)
    c = events_table.c
    where = [*audit_filter.clauses(), c.decision.in_(REFUSALS)]
    return _top(connection, where, c.reason_code, top)


@dataclass(frozen=True)
class LatencyBucket:
    """One model's latencies in one time bucket: how many, and each percentile in ms."""

    start: datetime
    count: int
    percentiles: dict[int, float]


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles per model per bucket, oldest bucket first.

    `truncated` says the row cap was reached: only the newest `rows` latencies were read, so
    the oldest buckets shown may be partial and older ones missing.
    """

    bucket: timedelta
    percentiles: tuple[int, ...]
    models: dict[str, list[LatencyBucket]]
    rows: int
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket_seconds": int(self.bucket.total_seconds()),
            "rows": self.rows,
            "truncated": self.truncated,
            "models": {
                model: [
                    {
                        "start": isoformat(b.start),
                        "count": b.count,
                        **{f"p{p}_ms": v for p, v in b.percentiles.items()},
                    }
                    for b in buckets
                ]
                for model, buckets in self.models.items()
            },
        }


def nearest_rank(ordered: list[int], percentile: float) -> int:
    """The nearest-rank percentile of a sorted, non-empty list: always an observed value, so
    p99 of a handful of requests is the slowest one rather than an interpolation."""
    rank = math.ceil(percentile / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def latency_percentiles(
    connection: Connection,
    audit_filter: AuditFilter,
    *,
    bucket: timedelta = timedelta(hours=1),
    percentiles: tuple[int, ...] = PERCENTILES,
    models: int = 5,
    max_rows: int = LATENCY_ROWS,
) -> LatencyStats:
    """Latency percentiles (ms) of the events `audit_filter` matches that name a model and
    record a latency, for the `models` models with the most such events, per `bucket` (the
    same buckets as `stats`).

    SQLite has no percentile function and PostgreSQL's would differ in method, so the database
    groups rows into buckets and Python takes the nearest-rank percentiles over at most
    `max_rows` latencies, the newest first.
    """
    seconds = int(bucket.total_seconds())
    if seconds < 1:
        raise ValueError("bucket must be at least one second")
    if models < 1 or max_rows < 1:
        raise ValueError("models and max_rows must be at least 1")
    for p in percentiles:
        if not 0 < p <= 100:
            raise ValueError(f"percentile {p} is not in (0, 100]")
    c = events_table.c
    slot = _epoch_bucket(connection, seconds).label("slot")
    where = [*audit_filter.clauses(), c.model.is_not(None), c.latency_us.is_not(None)]
    result = connection.execute(
        sa.select(slot, c.model, c.latency_us)
        .where(*where)
        .order_by(c.seq.desc())
        .limit(max_rows + 1)
    )
    samples: dict[str, dict[int, list[int]]] = {}
    rows = 0
    truncated = False
    for index, model, latency_us in result:
        if rows == max_rows:
            truncated = True
            break
        rows += 1
        samples.setdefault(model, {}).setdefault(int(index), []).append(int(latency_us))
    result.close()
    busiest = sorted(samples, key=lambda m: (-sum(map(len, samples[m].values())), m))[:models]
    per_model: dict[str, list[LatencyBucket]] = {}
    for model in busiest:
        per_model[model] = []
        for index, values in sorted(samples[model].items()):
            values.sort()
            per_model[model].append(
                LatencyBucket(
                    start=datetime.fromtimestamp(index * seconds, UTC),
                    count=len(values),
                    percentiles={p: nearest_rank(values, p) / 1000 for p in percentiles},
                )
            )
    return LatencyStats(
        bucket=bucket,
        percentiles=tuple(percentiles),
        models=per_model,
        rows=rows,
        truncated=truncated,
    )
