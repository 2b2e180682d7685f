"""How the commands record what they change: as the OS user running them.

Every command that changes principals, rules or tokens runs its change inside `admin_change`
(`secure_maas.admin.changes`: the change and its audit event commit together or not at all),
with the OS user as the actor. This is the one place the commands touch the audit API.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.admin import changes
from secure_maas.admin.changes import AdminChange
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent, KeyringAuditKeys, append_now
from secure_maas.audit.chain import append_events
from secure_maas.cli.context import AppContext
from secure_maas.timeutil import utcnow


def os_user() -> str:
    """The operating-system user running the command: the actor of admin events."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@contextmanager
def admin_change(app: AppContext, action: AdminAction) -> Iterator[AdminChange]:
    """`admin.changes.admin_change` for this instance, as the OS user."""
    keys = KeyringAuditKeys(app.keyring())
    with changes.admin_change(app.engine(), keys, action, actor=os_user()) as change:
        yield change


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
        decision=AuditDecision.ALLOW,
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
