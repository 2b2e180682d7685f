"""Admin changes and their audit events, committed together or not at all.

Every change to principals, rules or tokens runs inside `admin_change`: one write transaction
in which the change is made and then its audit event is appended to the chain. If the event
cannot be written, the change is rolled back (fail closed, invariant 8); if the change fails,
nothing is recorded because nothing happened. The actor is whoever the caller says made the
change: the OS user for the command line, a token's subject for an HTTP admin API.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent
from secure_maas.audit.chain import append_events
from secure_maas.audit.keys import AuditKeys
from secure_maas.db.engine import begin_immediate, serialised_writes
from secure_maas.timeutil import utcnow


@dataclass
class AdminChange:
    """The session to make the change with, and what the audit event will say about it."""

    session: Session
    action: AdminAction
    actor: str
    actor_kind: str = ActorKind.OS
    reason: str | None = None
    reason_code: str | None = None
    model: str | None = None
    detail: dict[str, str | int | None] = field(default_factory=dict)

    def note(
        self,
        reason: str,
        *,
        code: str | None = None,
        model: str | None = None,
        **detail: str | int | None,
    ) -> None:
        """Say what was done (never a token or a secret: this text is stored)."""
        self.reason = reason
        self.reason_code = code
        self.model = model
        self.detail.update(detail)

    def event(self) -> AuditEvent:
        """The audit event of the change as noted."""
        return AuditEvent(
            action=self.action,
            actor=self.actor,
            actor_kind=self.actor_kind,
            decision=AuditDecision.ALLOW,
            model=self.model,
            reason_code=self.reason_code,
            reason=self.reason,
            detail=self.detail or None,
        )


@contextmanager
def admin_change(
    engine: Engine,
    keys: AuditKeys,
    action: AdminAction,
    *,
    actor: str,
    actor_kind: str = ActorKind.OS,
) -> Iterator[AdminChange]:
    """A write transaction for an admin change that ends by recording it in the audit log."""
    with serialised_writes(engine), engine.connect() as connection:
        begin_immediate(connection)
        with connection.begin(), Session(bind=connection, expire_on_commit=False) as session:
            change = AdminChange(session, action, actor, actor_kind)
            yield change
            session.flush()
            append_events(connection, [change.event()], keys, now=utcnow())
