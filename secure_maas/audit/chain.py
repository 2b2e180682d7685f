"""The chain: one global sequence of events, each MAC'd over its encoding and its predecessor.

    mac_i = HMAC-SHA256(audit_key[key_id_i], canonical(event_i) || mac_{i-1}),  mac_0 = 32 zeros

Appends lock the one row of `audit_head` (`SELECT ... FOR UPDATE` on PostgreSQL; on SQLite the
caller's transaction holds the write lock from `BEGIN IMMEDIATE`), so writers in any number of
threads, processes and instances extend a single chain in commit order. Every
`CHECKPOINT_EVERY`-th sequence number is a checkpoint event naming the head before it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from secure_maas.actions import AdminAction
from secure_maas.audit.encoding import VERSION, canonical
from secure_maas.audit.events import ActorKind, AuditEvent, AuditRecord, encode_detail
from secure_maas.audit.keys import AuditKeys, MissingAuditKey
from secure_maas.audit.models import (
    CANONICAL_COLUMNS,
    HEAD_ID,
    MAC_BYTES,
    events_table,
    head_table,
)
from secure_maas.audit.times import canonical_time
from secure_maas.db.engine import begin_immediate, describe_error, serialised_writes
from secure_maas.errors import SecureMaasError
from secure_maas.timeutil import utcnow

GENESIS_MAC = bytes(MAC_BYTES)
_AT = CANONICAL_COLUMNS.index("at")
CHECKPOINT_EVERY = 10_000
SERVICE_ACTOR = "secure-maas"


# The statements of an append, built once: constructing them per batch cost about as much
# Python time as the rest of the batch's SQLAlchemy work (bench/profile_serve.py).
_HEAD = sa.select(head_table.c.seq, head_table.c.mac, head_table.c.key_id).where(
    head_table.c.id == HEAD_ID
)
_HEAD_LOCKED = _HEAD.with_for_update()
_INSERT = sa.insert(events_table)
_MOVE = (
    sa.update(head_table)
    .where(head_table.c.id == HEAD_ID, head_table.c.seq == sa.bindparam("old_seq"))
    .values(
        seq=sa.bindparam("seq"),
        mac=sa.bindparam("mac"),
        key_id=sa.bindparam("key_id"),
        updated_at=sa.bindparam("updated_at"),
    )
)


class AuditUnavailable(SecureMaasError):
    """An event could not be committed; whatever it records must fail (503, failed command)."""


@dataclass(frozen=True)
class Head:
    """The newest event's sequence number and MAC (0 and `GENESIS_MAC` for an empty log)."""

    seq: int
    mac: bytes
    key_id: str | None = None

    def text(self) -> str:
        """`SEQ:MACHEX`, the form `audit verify --expect-head` reads back."""
        return f"{self.seq}:{self.mac.hex()}"


def compute_mac(key: bytes, message: bytes, previous: bytes) -> bytes:
    """The chain link: HMAC-SHA256 of an event's canonical bytes followed by the previous MAC."""
    return hmac.digest(key, message + previous, "sha256")


def seal(
    event: AuditEvent, *, seq: int, at: datetime, key_id: str, key: bytes, previous: bytes
) -> AuditRecord:
    """The stored form of `event` at position `seq`, MAC'd onto `previous` (encoding `VERSION`:
    the time enters the MAC as the canonical text the `at` column stores)."""
    moment = (event.at or at).astimezone(UTC)
    stored: dict[str, Any] = {
        "seq": seq,
        "at": moment,
        "request_id": event.request_id,
        "actor": event.actor,
        "actor_kind": event.actor_kind,
        "action": event.action,
        "model": event.model,
        "model_version": event.model_version,
        "decision": event.decision,
        "reason_code": event.reason_code,
        "reason": event.reason,
        "http_status": event.http_status,
        "client": event.client,
        "latency_us": event.latency_us,
        "rows": event.rows,
        "body_sha256": event.body_sha256,
        "detail": None if event.detail is None else encode_detail(event.detail),
        "key_id": key_id,
    }
    values = [stored[name] for name in CANONICAL_COLUMNS]
    values[_AT] = canonical_time(moment)
    mac = compute_mac(key, canonical(VERSION, values), previous)
    return AuditRecord(**stored, mac=mac, encoding=VERSION)


def checkpoint_event(head: Head, *, reason: str = "periodic") -> AuditEvent:
    """A checkpoint naming `head`, the event just before it."""
    return AuditEvent(
        action=AdminAction.AUDIT_CHECKPOINT,
        actor=SERVICE_ACTOR,
        actor_kind=ActorKind.SERVICE,
        reason_code=reason,
        detail={"head_seq": head.seq, "head_mac": head.mac.hex()},
    )


def read_head(connection: Connection, *, lock: bool = False) -> Head:
    """The head row; with `lock`, held until the transaction ends (PostgreSQL row lock)."""
    query = _HEAD_LOCKED if lock and connection.dialect.name != "sqlite" else _HEAD
    row = connection.execute(query).one_or_none()
    if row is None:
        raise AuditUnavailable(
            "the audit head row is missing: run `secure-maas db upgrade`, or the log was tampered "
            "with (`secure-maas audit verify`)"
        )
    return Head(int(row.seq), bytes(row.mac), row.key_id)


def writing_key(keys: AuditKeys, head: Head) -> tuple[str, bytes]:
    """The key to extend the chain after `head` with: never one older than the head's.

    A writer whose active key is older than the key the head was written with (another process
    rotated the audit key) reloads its keys first, so no event after a rotation point is MAC'd
    with the key rotated out; if the head's key is still unknown or newer than every key it
    holds (this instance's keyring copy is stale), it refuses: `AuditUnavailable`, fail closed.
    Called with the chain's lock held.
    """
    key_id, key = keys.active()
    if head.key_id is None or head.key_id == key_id:
        return key_id, key
    if _behind(keys, key_id, head.key_id):
        keys.reload()
        key_id, key = keys.active()
        if head.key_id != key_id and _behind(keys, key_id, head.key_id):
            raise AuditUnavailable(
                f"the audit chain's head was written with audit key {head.key_id}, which is "
                f"newer than this keyring's active audit key {key_id} or not in it: copy the "
                "keyring (keys/) from the key host after `secure-maas keys rotate --kind audit`"
            )
    return key_id, key


def _behind(keys: AuditKeys, mine: str, theirs: str) -> bool:
    """Whether key `theirs` is unknown to `keys` or of a later generation than `mine`."""
    own, other = keys.generation(mine), keys.generation(theirs)
    if own is None:
        raise MissingAuditKey(f"active audit key {mine} has no generation in the keyring")
    return other is None or other.generation > own.generation


def append_events(
    connection: Connection,
    events: Sequence[AuditEvent],
    keys: AuditKeys,
    *,
    now: datetime,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> list[AuditRecord]:
    """Extend the chain with `events` inside the caller's transaction; return their records.

    On SQLite the transaction must have been started with `begin_immediate` (so no other writer
    can move the head between our read and our write). Checkpoints due in between are added and
    not returned. Nothing is visible to anyone until the caller commits.
    """
    head = read_head(connection, lock=True)
    key_id, key = writing_key(keys, head)
    seq, previous = head.seq, head.mac
    stored: list[AuditRecord] = []
    returned: list[AuditRecord] = []
    for event in events:
        if checkpoint_every > 0 and (seq + 1) % checkpoint_every == 0:
            marker = checkpoint_event(Head(seq, previous))
            seq += 1
            record = seal(marker, seq=seq, at=now, key_id=key_id, key=key, previous=previous)
            stored.append(record)
            previous = record.mac
        seq += 1
        record = seal(event, seq=seq, at=now, key_id=key_id, key=key, previous=previous)
        stored.append(record)
        returned.append(record)
        previous = record.mac
    if not stored:
        return []
    connection.execute(_INSERT, [_row(record) for record in stored])
    moved = connection.execute(
        _MOVE,
        {"old_seq": head.seq, "seq": seq, "mac": previous, "key_id": key_id, "updated_at": now},
    )
    if moved.rowcount != 1:
        raise AuditUnavailable("the audit head moved during an append; nothing was written")
    return returned


def _row(record: AuditRecord) -> dict[str, object]:
    return dict(record.__dict__)


def write_transaction(
    engine: Engine,
    work: Callable[[Connection], list[AuditRecord]],
    *,
    passthrough: tuple[type[SecureMaasError], ...] = (),
) -> list[AuditRecord]:
    """Run `work` in one write transaction holding the chain's lock.

    Database and key failures become `AuditUnavailable`, so callers fail closed whatever went
    wrong; the error types in `passthrough` (a refusal decided by `work`) pass unchanged.
    """
    try:
        with serialised_writes(engine), engine.connect() as connection:
            begin_immediate(connection)
            with connection.begin():
                return work(connection)
    except SQLAlchemyError as exc:
        raise AuditUnavailable(f"audit log write failed: {describe_error(exc)}") from exc
    except AuditUnavailable:
        raise
    except SecureMaasError as exc:
        if isinstance(exc, passthrough):
            raise
        raise AuditUnavailable(f"audit log write failed: {exc}") from exc


def append_now(
    engine: Engine,
    event: AuditEvent,
    keys: AuditKeys,
    *,
    now: datetime | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> AuditRecord:
    """Append one event in its own transaction and return it once committed (CLI commands).

    Raises `AuditUnavailable` if the event could not be committed; nothing is written then.
    """
    moment = now or utcnow()
    records = write_transaction(
        engine,
        lambda connection: append_events(
            connection, [event], keys, now=moment, checkpoint_every=checkpoint_every
        ),
    )
    return records[0]


def append_checkpoint(
    engine: Engine, keys: AuditKeys, *, actor: str, now: datetime | None = None
) -> AuditRecord:
    """Append a checkpoint on demand (`audit verify --checkpoint`), naming the current head."""
    moment = now or utcnow()

    def work(connection: Connection) -> list[AuditRecord]:
        head = read_head(connection, lock=True)
        marker = checkpoint_event(head, reason="on-demand")
        marker = replace(marker, actor=actor, actor_kind=ActorKind.OS)
        return append_events(connection, [marker], keys, now=moment, checkpoint_every=0)

    return write_transaction(engine, work)[0]
