"""Audit events of training, written inside the transaction of the change they record.

A dataset registration, a run's reservation or refusal, its publication and a membership check
each commit together with their audit event or not at all: if the event cannot be written, the
change rolls back (fail closed, invariant 8), so the ledger never holds a spend the log lacks.
Events recorded with no change of their own (a refusal because the data changed) use
`record_alone`. The actor is the operating-system user running the command.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent, AuditKeys, append_now
from secure_maas.audit.chain import append_events
from secure_maas.timeutil import utcnow


def event(
    action: AdminAction,
    actor: str,
    *,
    decision: AuditDecision = AuditDecision.ALLOW,
    reason_code: str,
    reason: str,
    model: str | None = None,
    model_version: int | None = None,
    detail: Mapping[str, str | int | None] | None = None,
) -> AuditEvent:
    """An event by an OS user (training runs from the CLI with the user's own access)."""
    return AuditEvent(
        action=action,
        actor=actor,
        actor_kind=ActorKind.OS,
        decision=decision,
        model=model,
        model_version=model_version,
        reason_code=reason_code,
        reason=reason,
        detail=dict(detail) if detail else None,
    )


def record(
    session: Session, keys: AuditKeys, *events: AuditEvent, now: datetime | None = None
) -> None:
    """Append `events` to the chain inside `session`'s write transaction (see `write_scope`)."""
    session.flush()
    append_events(session.connection(), list(events), keys, now=now or utcnow())


def record_alone(
    engine: Engine, keys: AuditKeys, item: AuditEvent, *, now: datetime | None = None
) -> None:
    """Append one event in its own transaction (nothing else changes with it)."""
    append_now(engine, item, keys, now=now)


def number(value: float | None) -> str | None:
    """A float as audit detail text (detail values are str or int only)."""
    return None if value is None else repr(float(value))
