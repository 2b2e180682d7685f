"""Group commit: many callers' events in one transaction, each caller waiting for the commit.

A request thread calls `AuditWriter.append(event)`; one background thread per writer takes every
event queued so far (up to `max_batch`), appends them in one transaction under the chain's lock,
commits, and only then wakes their callers with their records. While one batch commits the next
one gathers, so the cost of the lock and of the commit's fsync is paid once per batch rather
than once per event. If the transaction fails, every caller in the batch gets `AuditUnavailable`
and none of its events exists (one transaction): the request that wanted to record fails closed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Engine

from secure_maas.audit.chain import (
    CHECKPOINT_EVERY,
    AuditUnavailable,
    append_events,
    write_transaction,
)
from secure_maas.audit.events import AuditEvent, AuditRecord
from secure_maas.audit.keys import AuditKeys
from secure_maas.timeutil import utcnow

log = logging.getLogger(__name__)

MAX_BATCH = 256
MAX_PENDING = 10_000
APPEND_TIMEOUT_S = 60.0


class _Pending:
    """One caller's event and its outcome. `done` is a lock held until the outcome is set:
    cheaper than `threading.Event`, whose every wait allocates a lock."""

    __slots__ = ("done", "error", "event", "record")

    def __init__(self, event: AuditEvent) -> None:
        self.event = event
        self.done = threading.Lock()
        self.done.acquire()
        self.record: AuditRecord | None = None
        self.error: AuditUnavailable | None = None

    def finish(self, record: AuditRecord | None, error: AuditUnavailable | None) -> None:
        self.record, self.error = record, error
        self.done.release()


class AuditWriter:
    """A thread-safe, group-committing appender to the audit chain of `engine`'s database.

    `clock` stamps events that carry no time (once per batch); `max_pending` bounds the queue,
    so a stalled database makes callers wait and then fail rather than exhaust memory.
    """

    def __init__(
        self,
        engine: Engine,
        keys: AuditKeys,
        *,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
        checkpoint_every: int = CHECKPOINT_EVERY,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be at least 1")
        self._engine = engine
        self._keys = keys
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._checkpoint_every = checkpoint_every
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # committed transactions, for tests and benchmarks
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def append(self, event: AuditEvent, *, timeout: float = APPEND_TIMEOUT_S) -> AuditRecord:
        """Queue `event` and return its record once its transaction has committed.

        Raises `AuditUnavailable` when the write failed, the writer is closed, or no commit
        came within `timeout` seconds (the event may still be committed later: an event
        recorded for a request that failed is harmless, an unrecorded answer is not).
        """
        pending = _Pending(event)
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._closed or len(self._queue) < self._max_pending, timeout
            ):
                raise AuditUnavailable("audit queue is full: the database is not keeping up")
            if self._closed:
                raise AuditUnavailable("the audit writer is closed")
            self._queue.append(pending)
            self._cond.notify_all()
        if not pending.done.acquire(timeout=timeout):
            raise AuditUnavailable(f"audit write not committed within {timeout:g}s")
        if pending.error is not None:
            raise pending.error
        if pending.record is None:  # not reachable: done is set with a record or an error
            raise AuditUnavailable("audit write finished without a record")
        return pending.record

    def pending(self) -> int:
        """How many events wait for the background thread to take them (not those in the
        batch it is committing): what a test or a metric may watch, without the queue."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new events, write every queued one, and stop the background thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._queue))
                if not self._queue:
                    return
                count = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
                self._cond.notify_all()
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        events = [pending.event for pending in batch]
        try:
            now = self._clock()
            records = write_transaction(
                self._engine,
                lambda connection: append_events(
                    connection,
                    events,
                    self._keys,
                    now=now,
                    checkpoint_every=self._checkpoint_every,
                ),
            )
        except AuditUnavailable as exc:
            log.error("audit batch of %d events failed: %s", len(batch), exc)
            for pending in batch:
                pending.finish(None, exc)
            return
        except Exception as exc:  # the thread must outlive any bug, and its callers fail closed
            log.exception("audit batch of %d events failed unexpectedly", len(batch))
            error = AuditUnavailable(f"audit log write failed: {type(exc).__name__}")
            for pending in batch:
                pending.finish(None, error)
            return
        self.batches += 1
        for pending, record in zip(batch, records, strict=True):
            pending.finish(record, None)
