"""Rotating the audit key: the old key stops at a rotation point no database writer can move.

`rotate_audit_key` holds the chain's lock (the write transaction every append takes) while it
1. appends the `keys:rotate` event, MAC'd with the new key: the first event of the new
   generation, at seq H + 1 where H is the head;
2. writes the keyring manifest (on the key host) with the new key active and the old key
   bounded: it may MAC events up to seq H and no further;
3. commits.
No append can slip in between, so every event after H is MAC'd with a newer key, and any
writer still holding the old key meets a head written with a newer one and reloads its keys
first (`chain.writing_key`). If the manifest cannot be written nothing is committed; if the
commit fails after the manifest was written, the new key is active and the old one bounded at
H all the same, and the next append simply is the new generation's first event.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from secure_maas.actions import AdminAction
from secure_maas.audit.chain import AuditUnavailable, append_events, read_head
from secure_maas.audit.events import ActorKind, AuditEvent, AuditRecord, Decision
from secure_maas.audit.keys import KeyringAuditKeys
from secure_maas.db.engine import begin_immediate, describe_error, serialised_writes
from secure_maas.timeutil import utcnow

if TYPE_CHECKING:
    from secure_maas.keys import KeyRecord, Keyring


def rotate_audit_key(
    engine: Engine, keyring: Keyring, *, actor: str, now: datetime | None = None
) -> tuple[KeyRecord, AuditRecord]:
    """Make a new active audit key and bound the old one at the current head.

    Returns the new key's record and the rotation's audit event (the new key's first event).
    Raises `AuditUnavailable` when the chain cannot be written; the keyring is then unchanged
    unless the failure was the commit itself (see the module docstring).
    """
    from secure_maas.keys import KeyKind

    moment = now or utcnow()
    written: list[AuditRecord] = []

    @contextmanager
    def rotation_point(previous: KeyRecord, created: KeyRecord) -> Iterator[int]:
        try:
            with serialised_writes(engine), engine.connect() as connection:
                begin_immediate(connection)
                with connection.begin():
                    head = read_head(connection, lock=True)
                    event = AuditEvent(
                        action=AdminAction.KEYS_ROTATE,
                        actor=actor,
                        actor_kind=ActorKind.OS,
                        decision=Decision.ALLOW,
                        reason=(
                            f"new active audit key {created.id}; {previous.id} verifies events "
                            f"up to seq {head.seq} only"
                        ),
                        detail={"previous": previous.id, "key": created.id, "last_seq": head.seq},
                    )
                    keys = KeyringAuditKeys(keyring)  # the new key active, not yet on disk
                    written.extend(append_events(connection, [event], keys, now=moment))
                    yield head.seq  # the keyring writes its manifest here
        except SQLAlchemyError as exc:
            raise AuditUnavailable(
                f"audit key rotation failed: {describe_error(exc)}; run it again"
            ) from exc

    created = keyring.rotate(KeyKind.AUDIT, now=moment, rotation_point=rotation_point)
    return created, written[0]
