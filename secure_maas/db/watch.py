"""Polling change counters from the request path: at most one cheap read per interval.

Caches of shared state (compiled rules, principals, revoked token ids) hold a `Watcher` on the
scopes they depend on and call `refresh(reload)` before each use. The first thread past the interval
reads the counters (one indexed query); every other call costs a clock read. A failed read
raises (the database is down: the request must fail closed) and is retried by the next call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from secure_maas.db.engine import DatabaseUnavailable, describe_error
from secure_maas.db.state import StateVersion

#: How often a worker looks at the counters; a change reaches it within this plus a reload.
POLL_INTERVAL_S = 0.25


class Watcher:
    """Reloads its owner's data when any counter of `scopes` has moved since the last load.

    The counters are read before `reload` runs, so a change racing the reload only causes one
    more reload later, never a missed one. If `reload` raises, nothing is marked as seen and
    the next call tries again.
    """

    def __init__(
        self,
        engine: Engine,
        scopes: Sequence[str],
        *,
        interval: float = POLL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._scopes = tuple(scopes)
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, int] | None = None
        self._next_poll = float("-inf")

    @property
    def versions(self) -> dict[str, int]:
        """The counters as of the last load (empty before the first)."""
        return dict(self._seen or {})

    def refresh(self, reload: Callable[[Mapping[str, int]], None], *, force: bool = False) -> bool:
        """Call `reload(counters)` if they moved; look only when the interval passed (or `force`).

        Returns whether it reloaded. Until the first load succeeds every caller waits for it;
        afterwards a caller that finds another thread polling goes on with the current data
        while that is less than two intervals old, and waits for the poll otherwise: the first
        concurrent requests of a worker that was idle must not act on data from before its
        idle spell (a revoked token, a rule changed seconds ago).
        A database error while looking or reloading raises `DatabaseUnavailable` (fail closed).
        """
        now = self._clock()
        if not force and now < self._next_poll:
            return False
        stale = now >= self._next_poll + self._interval
        if not self._lock.acquire(blocking=self._seen is None or force or stale):
            return False
        try:
            if not force and self._clock() < self._next_poll:
                return False
            try:
                versions = self._read()
                reloaded = versions != self._seen
                if reloaded:
                    reload(versions)
            except SQLAlchemyError as exc:
                raise DatabaseUnavailable(
                    f"cannot read shared state ({', '.join(self._scopes)}): {describe_error(exc)}"
                ) from exc
            if reloaded:
                self._seen = versions
            self._next_poll = self._clock() + self._interval
            return reloaded
        finally:
            self._lock.release()

    def _read(self) -> dict[str, int]:
        query = sa.select(StateVersion.scope, StateVersion.version).where(
            StateVersion.scope.in_(self._scopes)
        )
        with self._engine.connect() as connection:
            found = {scope: int(version) for scope, version in connection.execute(query)}
        return {scope: found.get(scope, 0) for scope in self._scopes}
