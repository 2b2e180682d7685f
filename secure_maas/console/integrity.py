"""The audit page's integrity banner: the last verification of the chain, and one running.

`Integrity.start` runs `audit verify`'s walk in a background thread (one at a time per process:
a second start while one runs is refused); `Integrity.state` tells the page how far it got
(events checked of those present when it began) or, once done, the result and the head. The
walk is the one `audit.verify` runs, assembled here from its public pieces so the number of
events checked can be read while it runs. No Flask here.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.engine import Engine

from secure_maas.audit.chain import read_head
from secure_maas.audit.keys import AuditKeys
from secure_maas.audit.query import bounds, read_snapshot
from secure_maas.audit.verify import ChainWalk, VerifyReport, find_anchor, finish, report
from secure_maas.errors import SecureMaasError
from secure_maas.timeutil import utcnow

log = logging.getLogger(__name__)

State = Literal["ok", "broken", "unknown", "running"]


@dataclass(frozen=True)
class Banner:
    """What the banner shows: `state`, progress while running, the last report when done."""

    state: State
    checked: int = 0
    total: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    report: VerifyReport | None = None
    error: str | None = None

    @property
    def percent(self) -> int:
        return min(100, self.checked * 100 // self.total) if self.total else 0


class Integrity:
    """One process's verification: at most one running, the last result kept."""

    def __init__(self, engine: Engine, keys: AuditKeys) -> None:
        self._engine = engine
        self._keys = keys
        self._lock = threading.Lock()
        self._walk: ChainWalk | None = None
        self._thread: threading.Thread | None = None
        self._total = 0
        self._started: datetime | None = None
        self._finished: datetime | None = None
        self._report: VerifyReport | None = None
        self._error: str | None = None

    def start(self) -> bool:
        """Begin a verification in the background; False if one is already running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._walk, self._total, self._started = None, 0, utcnow()
            self._thread = threading.Thread(
                target=self._run, name="console-audit-verify", daemon=True
            )
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running verification (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        try:
            with read_snapshot(self._engine) as connection:
                _low, _high, total = bounds(connection)
                try:
                    head = read_head(connection)
                except SecureMaasError:
                    head = None
                anchor, problem = find_anchor(connection)
                walk = ChainWalk(self._keys, anchor, None)
                with self._lock:
                    self._walk, self._total = walk, total
                notes: list[str] = []
                if problem is not None:
                    walk.problem = problem
                else:
                    walk.scan(connection)
                    if walk.problem is None:
                        notes = finish(walk, head)
                found = report(walk, head, notes)
            with self._lock:
                self._report, self._error = found, None
        except Exception as exc:  # the banner says it could not verify; never "ok"
            log.exception("console audit verification failed")
            with self._lock:
                self._report, self._error = None, f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._finished = utcnow()

    def state(self) -> Banner:
        """The banner now."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if running:
                checked = self._walk.checked if self._walk is not None else 0
                return Banner("running", checked, self._total, self._started)
            found = self._report
            if found is None:
                return Banner(
                    "unknown",
                    started_at=self._started,
                    finished_at=self._finished,
                    error=self._error,
                )
            return Banner(
                "ok" if found.intact else "broken",
                found.checked,
                found.checked,
                self._started,
                self._finished,
                found,
            )
