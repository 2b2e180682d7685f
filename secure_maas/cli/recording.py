"""Admin changes and their audit events, committed together or not at all.

Every command that changes principals, rules or tokens runs its change inside `admin_change`:
one write transaction in which the change is made and then the audit event (actor: the OS
user) is appended to the chain. If the event cannot be written, the change is rolled back
(fail closed, invariant 8); if the change fails, nothing is recorded because nothing happened.
This is the one place the access-control commands touch the audit API.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.audit import ActorKind, AuditEvent, Decision, KeyringAuditKeys, append_now
from secure_maas.audit.chain import append_events
from secure_maas.cli.context import AppContext
from secure_maas.db.engine import begin_immediate, serialised_writes
from secure_maas.timeutil import utcnow


def os_user() -> str:
    """The operating-system user running the command: the actor of admin events."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass
class AdminChange:
    """The session to make the change with, and what the audit event will say about it."""

    session: Session
    action: AdminAction
    actor: str
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


@contextmanager
def admin_change(app: AppContext, action: AdminAction) -> Iterator[AdminChange]:
    """A write transaction for an admin change that ends by recording it in the audit log."""
    engine = app.engine()
    keys = KeyringAuditKeys(app.keyring())
    with serialised_writes(engine), engine.connect() as connection:
        begin_immediate(connection)
        with connection.begin(), Session(bind=connection, expire_on_commit=False) as session:
            change = AdminChange(session, action, os_user())
            yield change
            session.flush()
            event = AuditEvent(
                action=action,
                actor=change.actor,
                actor_kind=ActorKind.OS,
                decision=Decision.ALLOW,
                model=change.model,
                reason_code=change.reason_code,
                reason=change.reason,
                detail=change.detail or None,
            )
            append_events(connection, [event], keys, now=utcnow())


def os_event(
    action: AdminAction,
    reason: str,
    *,
    model: str | None = None,
    model_version: int | None = None,
    **detail: str | int | None,
) -> AuditEvent:
    """The audit event of an admin action taken by the OS user running this command."""
    return AuditEvent(
        action=action,
        actor=os_user(),
        actor_kind=ActorKind.OS,
        decision=Decision.ALLOW,
        model=model,
        model_version=model_version,
        reason=reason,
        detail=detail or None,
    )


def record_now(app: AppContext, event: AuditEvent) -> None:
    """Record an admin action that changes files, not rows (the keyring), in its own commit.

    The change cannot share a transaction with the event, so the keys commands call this just
    before the change takes effect (`Keyring`'s `before_save`): if the event cannot be written,
    the change does not happen and the command fails (fail closed); a crash in between leaves
    an event naming a key the manifest never took, which `keys list` shows is absent.
    `models rewrap` (re-encryption, no change of trust, safe to re-run) records once done.
    """
    append_now(app.engine(), event, KeyringAuditKeys(app.keyring()))


def record_in(session: Session, app: AppContext, event: AuditEvent) -> None:
    """Append `event` inside the caller's write transaction (e.g. a publish)."""
    append_events(session.connection(), [event], KeyringAuditKeys(app.keyring()), now=utcnow())
