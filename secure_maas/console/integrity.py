"""The audit page's integrity banner: the last verification of the chain, and one running.

`Integrity.start` runs `audit verify`'s walk in a background thread (one at a time per process:
a second start while one runs here is refused). The walk is the one `audit.verify` runs,
assembled from its public pieces so the number of events checked can be read while it runs.

Its start and its outcome are audit events (action `audit:read`, actor `console-verify`, the
service's, with who asked in `detail`), so the banner of every worker and instance shows the
same last result, read back from the log: `running` (with progress in the process that runs
it), `ok` or `broken` with the head and the first bad event, or `unknown` (never verified, the
walk failed, or it was interrupted). No Flask here.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.actions import Action
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent
from secure_maas.audit.keys import AuditKeys
from secure_maas.audit.models import events_table
from secure_maas.audit.query import bounds, read_snapshot
from secure_maas.audit.verify import ChainWalk, VerifyReport, verify
from secure_maas.timeutil import utcnow

log = logging.getLogger(__name__)

State = Literal["ok", "broken", "unknown", "running"]
VERIFY_ACTOR = "console-verify"
#: A verification whose start is logged but whose outcome is not after this long was cut
#: short (its process stopped): the banner says so instead of "running" forever.
ABANDONED_AFTER = timedelta(hours=6)


@dataclass(frozen=True)
class Banner:
    """What the banner shows."""

    state: State
    checked: int = 0
    total: int = 0
    at: datetime | None = None
    head: str | None = None
    summary: str | None = None
    requested_by: str | None = None

    @property
    def percent(self) -> int:
        return min(100, self.checked * 100 // self.total) if self.total else 0


def _event(outcome: str, reason: str, **detail: str | int | None) -> AuditEvent:
    return AuditEvent(
        action=Action.AUDIT_READ,
        actor=VERIFY_ACTOR,
        actor_kind=ActorKind.SERVICE,
        decision=AuditDecision.ALLOW if outcome != "failed" else AuditDecision.ERROR,
        reason_code=None if outcome != "failed" else "verify_failed",
        reason=reason,
        detail={"verify": outcome, **detail},
    )


class Integrity:
    """One process's verifications: at most one running here; outcomes go to the audit log
    through `record` (the process's audit sink)."""

    def __init__(
        self, engine: Engine, keys: AuditKeys, record: Callable[[AuditEvent], object]
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._record = record
        self._lock = threading.Lock()
        self._walk: ChainWalk | None = None
        self._thread: threading.Thread | None = None
        self._total = 0

    def start(self, requested_by: str) -> bool:
        """Begin a verification in the background; False if one is running in this process."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._walk, self._total = None, 0
            self._thread = threading.Thread(
                target=self._run, args=(requested_by,), name="console-audit-verify", daemon=True
            )
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the verification running here (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self, requested_by: str) -> None:
        try:
            found = self._walk_chain(requested_by)
        except Exception as exc:  # recorded as failed: the banner never says "ok" for it
            log.exception("console audit verification failed")
            self._record_quietly(
                _event(
                    "failed",
                    f"verification failed: {type(exc).__name__}: {exc}",
                    requested_by=requested_by,
                )
            )
            return
        if found.intact:
            head = found.head.text() if found.head is not None else None
            reason = f"chain intact: {found.checked} events checked, head {head}"
            outcome = _event("ok", reason, requested_by=requested_by, checked=found.checked,
                             head=head)  # fmt: skip
        else:
            problem = found.problem
            reason = f"chain broken: {problem.describe() if problem else 'unknown problem'}"
            outcome = _event(
                "broken",
                reason,
                requested_by=requested_by,
                checked=found.checked,
                bad_seq=problem.seq if problem else None,
            )
        self._record_quietly(outcome)

    def _walk_chain(self, requested_by: str) -> VerifyReport:
        with read_snapshot(self._engine) as connection:
            _low, _high, total = bounds(connection)
            self._record(_event("started", "verification started", requested_by=requested_by,
                                events=total))  # fmt: skip

            def follow(walk: ChainWalk) -> None:
                with self._lock:
                    self._walk, self._total = walk, total

            return verify(connection, self._keys, watch=follow)

    def _record_quietly(self, event: AuditEvent) -> None:
        try:
            self._record(event)
        except Exception as exc:  # the outcome is lost; the banner will say "interrupted"
            log.error("could not record the verification's outcome: %s", exc)

    def state(self, now: datetime | None = None) -> Banner:
        """The banner now: this process's running walk, else the last outcome in the log."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            walk, total = self._walk, self._total
        if running:
            return Banner("running", walk.checked if walk is not None else 0, total)
        return self._last(now or utcnow())

    def _last(self, now: datetime) -> Banner:
        c = events_table.c
        with self._engine.connect() as connection:
            row = connection.execute(
                sa.select(c.at, c.detail, c.reason)
                .where(c.actor == VERIFY_ACTOR)
                .order_by(c.seq.desc())
                .limit(1)
            ).first()
        if row is None:
            return Banner("unknown")
        detail = _details(row.detail)
        outcome, by = detail.get("verify"), detail.get("requested_by")
        if outcome == "started":
            if now - row.at > ABANDONED_AFTER:
                return Banner("unknown", at=row.at, summary="the last verification was cut short")
            return Banner("running", total=int(detail.get("events") or 0), at=row.at,
                          requested_by=by)  # fmt: skip
        if outcome in ("ok", "broken"):
            return Banner(
                outcome,
                checked=int(detail.get("checked") or 0),
                total=int(detail.get("checked") or 0),
                at=row.at,
                head=detail.get("head"),
                summary=row.reason,
                requested_by=by,
            )
        return Banner("unknown", at=row.at, summary=row.reason, requested_by=by)


def _details(text: str | None) -> dict[str, Any]:
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
