"""Quotas counted without a database transaction per request: leases of the remaining allowance.

`policy.quota.consume` writes every request to its window's counter row: exact, and one write
transaction per request. `QuotaLeases` keeps the same counter rows and the same guarantee (no
window ever serves more than its limit, across workers and instances) with far fewer writes: a
process that needs a unit takes a lease, a share (1/`share`) of what the window has left,
adding it to the counter row in one transaction, and then serves requests from it locally.

- The counter row holds what was served plus what is leased and not yet used, and the lease is
  taken with the row locked and only if it fits, so what is served never passes the limit.
- A lease lives `ttl` seconds; what is left of it then is given back (the counter lowered by
  it) by a background thread, or when the same process takes its next lease on that window.
  A process that dies keeps its unused units counted until the window ends: conservative.
- Near the limit a share is below two units and every request takes exactly what it needs,
  so one process alone is exact; with several, a request may be refused while another holds
  unused units, for at most `ttl` seconds, until they come back. Never served past the limit.
- Windows of a request (minute, day...) are taken together: a request refused by one window
  takes nothing from the others (its local units are put back).

The counters read by `usage` therefore include leased units not yet used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from secure_maas.db.dialect import insert
from secure_maas.db.engine import DatabaseUnavailable, describe_error
from secure_maas.db.session import write_scope
from secure_maas.policy.models import QuotaCounter
from secure_maas.policy.quota import QuotaResult, refused_until, window_start
from secure_maas.policy.rules import Quota, merge_quotas

log = logging.getLogger(__name__)

LEASE_TTL_S = 1.0
#: A lease is this fraction of what the window has left (1/16: 16 holders can share it).
LEASE_SHARE = 16
#: The largest lease, in requests.
LEASE_MAX = 1000

#: (subject, model, period, window start) of one counter row.
Key = tuple[str, str, str, int]


@dataclass
class _Lease:
    requests: int | None  # units left (None: this window counts no requests)
    rows: int | None
    expires: float
    window_end: int

    def covers(self, rows: int) -> bool:
        return (self.requests is None or self.requests >= 1) and (
            self.rows is None or self.rows >= rows
        )

    def take(self, rows: int) -> None:
        if self.requests is not None:
            self.requests -= 1
        if self.rows is not None:
            self.rows -= rows

    def give_back(self, rows: int) -> None:
        if self.requests is not None:
            self.requests += 1
        if self.rows is not None:
            self.rows += rows


class _Over(Exception):
    def __init__(self, quota: Quota, window_end: int) -> None:
        self.quota, self.window_end = quota, window_end


class QuotaLeases:
    """One process's leases on quota windows (thread-safe; `close` gives back what is left)."""

    def __init__(
        self,
        engine: Engine,
        *,
        ttl: float = LEASE_TTL_S,
        share: int = LEASE_SHARE,
        clock: Callable[[], float] = time.monotonic,
        reaper: bool = True,
    ) -> None:
        if ttl <= 0 or share < 1:
            raise ValueError("ttl must be positive and share at least 1")
        self._engine = engine
        self._ttl = ttl
        self._share = share
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[Key, _Lease] = {}
        self._stop = threading.Event()
        self.transactions = 0  # lease transactions, for tests and benchmarks
        self._thread: threading.Thread | None = None
        if reaper:
            self._thread = threading.Thread(
                target=self._reap_loop, name="quota-leases", daemon=True
            )
            self._thread.start()

    def consume(
        self, subject: str, model: str, quotas: tuple[Quota, ...], rows: int, now: datetime
    ) -> QuotaResult:
        """Count one request of `rows` rows against every quota, or refuse it whole.

        Raises `DatabaseUnavailable` when a lease cannot be taken: the request fails closed.
        """
        merged = merge_quotas(quotas)
        if not merged:
            return QuotaResult(True)
        windows: list[tuple[Quota, Key, int]] = []
        for quota in merged:
            start = window_start(now, quota)
            if quota.rows is not None and rows > quota.rows:
                return refused_until(quota, start + quota.per.seconds, now)
            key = (subject, model, quota.per.value, start)
            windows.append((quota, key, start + quota.per.seconds))
        moment = self._clock()
        taken: list[_Lease] = []
        missing: list[tuple[Quota, Key, int]] = []
        with self._lock:
            for quota, key, end in windows:
                lease = self._leases.get(key)
                if lease is not None and lease.expires > moment and lease.covers(rows):
                    lease.take(rows)
                    taken.append(lease)
                else:
                    missing.append((quota, key, end))
        if not missing:
            return QuotaResult(True)
        try:
            self._lease(missing, rows, moment)
        except _Over as over:
            self._put_back(taken, rows)
            return refused_until(over.quota, over.window_end, now)
        except SQLAlchemyError as exc:
            self._put_back(taken, rows)
            raise DatabaseUnavailable(f"cannot count quota: {describe_error(exc)}") from exc
        except BaseException:
            self._put_back(taken, rows)
            raise
        return QuotaResult(True)

    def close(self) -> None:
        """Stop the reaper and give back every lease's unused units (best effort)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            leases, self._leases = self._leases, {}
        try:
            self._give_back(leases)
        except (SQLAlchemyError, DatabaseUnavailable) as exc:
            log.warning("could not give back unused quota leases: %s", exc)

    # -- internals -----------------------------------------------------------------------------

    def _put_back(self, taken: list[_Lease], rows: int) -> None:
        with self._lock:
            for lease in taken:
                lease.give_back(rows)

    def _lease(self, missing: list[tuple[Quota, Key, int]], rows: int, moment: float) -> None:
        """Take a new lease on each window in `missing` (one transaction) and use one request
        of `rows` rows from each; give back what the leases they replace have left."""
        with self._lock:
            old = {key: self._leases.pop(key, None) for _, key, _ in missing}
        new: dict[Key, _Lease] = {}
        try:
            with write_scope(self._engine) as session:
                for quota, key, end in missing:
                    new[key] = self._take(session, quota, key, end, rows, old[key], moment)
            self.transactions += 1
        except BaseException:
            with self._lock:  # nothing was written: the old leases stand as they were
                for key, lease in old.items():
                    if lease is not None and key not in self._leases:
                        self._leases[key] = lease
            raise
        with self._lock:
            self._leases.update(new)

    def _take(
        self,
        session: Session,
        quota: Quota,
        key: Key,
        end: int,
        rows: int,
        old: _Lease | None,
        moment: float,
    ) -> _Lease:
        row = _locked_row(session, key)
        back_requests = (old.requests or 0) if old is not None else 0
        back_rows = (old.rows or 0) if old is not None else 0
        used_requests = int(row.request_count) - back_requests
        used_rows = int(row.row_count) - back_rows
        lease_requests: int | None = None
        lease_rows: int | None = None
        if quota.requests is not None:
            left = quota.requests - used_requests
            if left < 1:
                raise _Over(quota, end)
            lease_requests = min(LEASE_MAX, max(1, left // self._share))
        if quota.rows is not None:
            left_rows = quota.rows - used_rows
            if left_rows < rows:
                raise _Over(quota, end)
            lease_rows = max(rows, left_rows // self._share)
            if lease_requests is not None:
                lease_rows = min(left_rows, max(lease_rows, rows * lease_requests))
        session.execute(
            sa.update(QuotaCounter)
            .where(*_key_clauses(key))
            .values(
                request_count=used_requests + (lease_requests or 1),
                row_count=used_rows + (lease_rows if lease_rows is not None else rows),
            )
        )
        lease = _Lease(
            None if lease_requests is None else lease_requests - 1,
            None if lease_rows is None else lease_rows - rows,
            moment + self._ttl,
            end,
        )
        return lease

    def _reap_loop(self) -> None:
        while not self._stop.wait(self._ttl / 2):
            try:
                self.reap()
            except Exception as exc:  # kept for the next round: never counted twice
                log.warning("could not give back expired quota leases: %s", exc)

    def reap(self) -> None:
        """Give back the unused units of every expired lease (leases of ended windows are
        simply dropped: their counters no longer matter)."""
        moment, wall = self._clock(), time.time()
        with self._lock:
            expired = {k: v for k, v in self._leases.items() if v.expires <= moment}
            for key in expired:
                del self._leases[key]
        live = {k: v for k, v in expired.items() if v.window_end > wall}
        try:
            self._give_back(live)
        except BaseException:
            with self._lock:
                for key, lease in live.items():
                    self._leases.setdefault(key, lease)
            raise

    def _give_back(self, leases: dict[Key, _Lease]) -> None:
        unused = {k: v for k, v in leases.items() if (v.requests or 0) > 0 or (v.rows or 0) > 0}
        if not unused:
            return
        with write_scope(self._engine) as session:
            for key, lease in unused.items():
                session.execute(
                    sa.update(QuotaCounter)
                    .where(*_key_clauses(key))
                    .values(
                        request_count=QuotaCounter.request_count - (lease.requests or 0),
                        row_count=QuotaCounter.row_count - (lease.rows or 0),
                    )
                )
        self.transactions += 1


def _key_clauses(key: Key) -> list[sa.ColumnElement[bool]]:
    subject, model, period, start = key
    return [
        QuotaCounter.subject == subject,
        QuotaCounter.model == model,
        QuotaCounter.period == period,
        QuotaCounter.window_start == start,
    ]


def _locked_row(session: Session, key: Key) -> Any:
    """The counter row of `key`, created at zero if new, locked for the transaction."""
    subject, model, period, start = key
    session.execute(
        insert(session, QuotaCounter)
        .values(
            subject=subject,
            model=model,
            period=period,
            window_start=start,
            request_count=0,
            row_count=0,
        )
        .on_conflict_do_nothing()
    )
    query = sa.select(QuotaCounter.request_count, QuotaCounter.row_count).where(*_key_clauses(key))
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    return session.execute(query).one()
