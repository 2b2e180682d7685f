"""Quota consumption, shared by every worker and instance through the database.

Called after `decide` allowed a request, so a denied request never consumes. Each window of the
decision's quotas is one counter row (subject, model, period, window start), and consuming is
one conditional upsert per window:

    INSERT ... VALUES (1, :rows) ON CONFLICT DO UPDATE
        SET request_count = request_count + 1, row_count = row_count + :rows
        WHERE request_count + 1 <= :max_requests AND row_count + :rows <= :max_rows
        RETURNING request_count

No row comes back when the limit would be passed; then the whole transaction (every window) is
rolled back, so a refused request consumes nothing. PostgreSQL serialises upserts of a row by
its lock; SQLite by the write lock taken at BEGIN IMMEDIATE. Windows are fixed and UTC-aligned
(a minute starts at :00), which keeps the counter a single row per window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from secure_maas.db.dialect import insert
from secure_maas.db.engine import DatabaseUnavailable, describe_error
from secure_maas.db.session import write_scope
from secure_maas.policy.models import QuotaCounter
from secure_maas.policy.rules import Quota, merge_quotas

#: Counter rows older than this are deleted now and then by `consume` itself.
KEEP_COUNTERS_S = 2 * 86400
PRUNE_EVERY_S = 600.0

_last_prune = float("-inf")


@dataclass(frozen=True, slots=True)
class QuotaResult:
    """Whether the request fits; if not, when to retry (seconds, for `Retry-After`)."""

    allowed: bool
    retry_after: int = 0
    reason: str = ""


class _OverQuota(Exception):
    def __init__(self, quota: Quota, window_end: int) -> None:
        self.quota = quota
        self.window_end = window_end


def window_start(now: datetime, quota: Quota) -> int:
    seconds = int(now.timestamp())
    return seconds - seconds % quota.per.seconds


def refused_until(quota: Quota, window_end: int, now: datetime) -> QuotaResult:
    """A refusal by `quota` whose caller may retry when its window ends (shared with the
    leases, which refuse the same way from their in-memory allowance)."""
    wait = max(1, math.ceil(window_end - now.timestamp()))
    return QuotaResult(False, wait, f"quota {quota} exhausted")


def consume(
    engine: Engine,
    subject: str,
    model: str,
    quotas: tuple[Quota, ...],
    rows: int,
    now: datetime,
) -> QuotaResult:
    """Count one request of `rows` rows against every quota in `quotas`, or refuse it whole.

    Raises `DatabaseUnavailable` when the counters cannot be updated: the request fails closed.
    """
    merged = merge_quotas(quotas)
    if not merged:
        return QuotaResult(True)
    for quota in merged:
        # A request bigger than a whole window's allowance can never fit: refuse it unwritten.
        if quota.rows is not None and rows > quota.rows:
            start = window_start(now, quota)
            return refused_until(quota, start + quota.per.seconds, now)
    try:
        with write_scope(engine) as session:
            for quota in merged:
                _count(session, subject, model, quota, rows, now)
            _maybe_prune(session, now)
    except _OverQuota as over:
        return refused_until(over.quota, over.window_end, now)
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"cannot count quota: {describe_error(exc)}") from exc
    return QuotaResult(True)


def _count(
    session: Session, subject: str, model: str, quota: Quota, rows: int, now: datetime
) -> None:
    start = window_start(now, quota)
    fits = []
    if quota.requests is not None:
        fits.append(QuotaCounter.request_count + 1 <= quota.requests)
    if quota.rows is not None:
        fits.append(QuotaCounter.row_count + rows <= quota.rows)
    upsert = (
        insert(session, QuotaCounter)
        .values(
            subject=subject,
            model=model,
            period=quota.per.value,
            window_start=start,
            request_count=1,
            row_count=rows,
        )
        .on_conflict_do_update(
            index_elements=[
                QuotaCounter.subject,
                QuotaCounter.model,
                QuotaCounter.period,
                QuotaCounter.window_start,
            ],
            set_={
                "request_count": QuotaCounter.request_count + 1,
                "row_count": QuotaCounter.row_count + rows,
            },
            where=sa.and_(*fits),
        )
        .returning(QuotaCounter.request_count)
    )
    if session.execute(upsert).scalar_one_or_none() is None:
        raise _OverQuota(quota, start + quota.per.seconds)


def _maybe_prune(session: Session, now: datetime) -> None:
    global _last_prune
    if time.monotonic() - _last_prune < PRUNE_EVERY_S:
        return
    _last_prune = time.monotonic()
    cutoff = int(now.timestamp()) - KEEP_COUNTERS_S
    session.execute(sa.delete(QuotaCounter).where(QuotaCounter.window_start < cutoff))


def usage(session: Session, subject: str, model: str, quota: Quota, now: datetime) -> int:
    """Requests counted so far in the current window of `quota` (for `explain` and tests)."""
    value = session.execute(
        sa.select(QuotaCounter.request_count).where(
            QuotaCounter.subject == subject,
            QuotaCounter.model == model,
            QuotaCounter.period == quota.per.value,
            QuotaCounter.window_start == window_start(now, quota),
        )
    ).scalar_one_or_none()
    return int(value or 0)
