"""Rotating the audit key: the old key stops at a rotation point no database writer can move.

`rotate_audit_key` runs in two steps.
1. It records the `keys:rotate` event, MAC'd with the key still active, in its own commit: as
   for every key change, the event is written before the change can take effect, so a crash
   leaves at worst an event for a rotation that did not happen, never a rotation unrecorded.
2. Once the new key's files are written, it holds the chain's lock (the write transaction
   every append takes) while it appends a checkpoint MAC'd with the new key (reason code
   `key-rotation`: the new generation's first event, at seq H + 1 where H is the head), has the
   keyring write its manifest (on the key host) with the new key active and the old key
   bounded at H, and commits.
No append slips in between, so every event after H is MAC'd with a newer key, and a writer
still holding the old key meets a head written with a newer one and reloads its keys first
(`chain.writing_key`), or fails closed if its keyring copy lacks the new key. If the manifest
cannot be written nothing of step 2 is committed. If step 2's commit is lost after the
manifest was written (a crash in between), the new key is active and the old one bounded at H
all the same: the next append is the new generation's first event, and only the checkpoint is
missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from secure_maas.actions import AdminAction
from secure_maas.audit.chain import (
    AuditUnavailable,
    append_events,
    append_now,
    read_head,
)
from secure_maas.audit.events import ActorKind, AuditDecision, AuditEvent, AuditRecord
from secure_maas.audit.keys import KeyringAuditKeys
from secure_maas.db.engine import begin_immediate, describe_error, serialised_writes
from secure_maas.timeutil import utcnow

if TYPE_CHECKING:
    from secure_maas.keys import KeyRecord, Keyring

#: `reason_code` of the checkpoint that opens a new audit key generation.
ROTATION_REASON = "key-rotation"


@dataclass(frozen=True)
class AuditRotation:
    """What `rotate_audit_key` did: the keys, the old key's rotation point, and the events."""

    key: KeyRecord
    previous: KeyRecord
    last_seq: int
    event: AuditRecord  # keys:rotate, MAC'd with the previous key
    opening: AuditRecord  # the checkpoint at last_seq + 1, MAC'd with the new key


def rotate_audit_key(
    engine: Engine, keyring: Keyring, *, actor: str, now: datetime | None = None
) -> AuditRotation:
    """Make a new active audit key and bound the old one at the head of the chain.

    Raises `AuditUnavailable` when the chain cannot be written: the keyring is then unchanged,
    except after a crash between the manifest and the last commit (module docstring).
    """
    from secure_maas.keys import KeyKind

    moment = now or utcnow()
    previous = keyring.active(KeyKind.AUDIT)
    event = append_now(
        engine,
        AuditEvent(
            action=AdminAction.KEYS_ROTATE,
            actor=actor,
            actor_kind=ActorKind.OS,
            decision=AuditDecision.ALLOW,
            reason=(
                f"new active audit key; {previous.id} verifies events up to the rotation "
                "point only (the key-rotation checkpoint after this event)"
            ),
            detail={"previous": previous.id},
        ),
        KeyringAuditKeys(keyring),
        now=moment,
    )
    opened: list[tuple[int, AuditRecord]] = []

    @contextmanager
    def rotation_point(old: KeyRecord, created: KeyRecord) -> Iterator[int]:
        try:
            with serialised_writes(engine), engine.connect() as connection:
                begin_immediate(connection)
                with connection.begin():
                    head = read_head(connection, lock=True)
                    marker = AuditEvent(
                        action=AdminAction.AUDIT_CHECKPOINT,
                        actor=actor,
                        actor_kind=ActorKind.OS,
                        reason_code=ROTATION_REASON,
                        reason=(
                            f"first event of audit key {created.id}; {old.id} verifies events "
                            f"up to seq {head.seq} only"
                        ),
                        detail={
                            "head_seq": head.seq,  # a checkpoint names the event before it
                            "head_mac": head.mac.hex(),
                            "previous": old.id,
                            "key": created.id,
                            "last_seq": head.seq,
                        },
                    )
                    keys = KeyringAuditKeys(keyring)  # the new key active, not yet on disk
                    records = append_events(
                        connection, [marker], keys, now=moment, checkpoint_every=0
                    )
                    opened.append((head.seq, records[0]))
                    yield head.seq  # the keyring writes its manifest here
        except SQLAlchemyError as exc:
            raise AuditUnavailable(
                f"audit key rotation failed: {describe_error(exc)}; run it again"
            ) from exc

    created = keyring.rotate(KeyKind.AUDIT, now=moment, rotation_point=rotation_point)
    last_seq, opening = opened[0]
    return AuditRotation(created, previous, last_seq, event, opening)
