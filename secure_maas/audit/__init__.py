"""The audit log: complete, tamper-evident, fail-closed, reviewable (invariant 8).

- `events`: `AuditEvent` (what callers record) and `AuditRecord` (what is stored).
- `encoding`: the canonical, versioned bytes each MAC covers; never changes once shipped.
- `times`: the one canonical time text that is MAC'd, stored and compared.
- `chain`: one global HMAC-SHA256 chain serialised by the database; `append_now`.
- `writer`: `AuditWriter`, group commit for request threads.
- `sink`: `AuditSink`, what a process appends to (the writer, or a fake in tests).
- `keys`, `rotation`: audit keys in generations, each bounded by its rotation point.
- `verify`, `query`, `stats`, `export`, `prune`: what auditors run.

Nothing here knows of Flask or imports `cryptography`; keys come through `AuditKeys`.
"""

from secure_maas.audit.chain import (
    AuditUnavailable,
    Head,
    append_checkpoint,
    append_now,
)
from secure_maas.audit.events import (
    ActorKind,
    AuditDecision,
    AuditEvent,
    AuditRecord,
    InvalidAuditEvent,
    body_digest,
)
from secure_maas.audit.keys import (
    AuditKeys,
    KeyGeneration,
    KeyringAuditKeys,
    MissingAuditKey,
    StaticAuditKeys,
)
from secure_maas.audit.parallel import verify_database
from secure_maas.audit.query import AuditFilter, parse_time
from secure_maas.audit.sink import AuditSink
from secure_maas.audit.verify import VerifyReport, parse_head, verify
from secure_maas.audit.writer import AuditWriter

__all__ = [
    "ActorKind",
    "AuditDecision",
    "AuditEvent",
    "AuditFilter",
    "AuditKeys",
    "AuditRecord",
    "AuditSink",
    "AuditUnavailable",
    "AuditWriter",
    "Head",
    "InvalidAuditEvent",
    "KeyGeneration",
    "KeyringAuditKeys",
    "MissingAuditKey",
    "StaticAuditKeys",
    "VerifyReport",
    "append_checkpoint",
    "append_now",
    "body_digest",
    "parse_head",
    "parse_time",
    "verify",
    "verify_database",
]
