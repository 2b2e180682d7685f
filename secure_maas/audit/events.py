"""What an audit event holds: `AuditEvent` (what callers record) and `AuditRecord` (what is stored).

Callers build an `AuditEvent`; the chain gives it a sequence number, a time if it has none, the
audit key id and its MAC, and returns the stored `AuditRecord`. Events are checked when built, so
a malformed event is a bug found at the call site rather than a failed write later. Raw request
bodies and tokens have no field here on purpose: only the SHA-256 of the body is kept.

Text fields never store a raw control character: they are escaped here, when the event is built
(`audit.text.escape_controls`), so no writer can forget it and a reader's terminal or log
pipeline never meets a forged line or an escape sequence. The stored, escaped text is what the
MAC covers; the canonical encoding is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from secure_maas.actions import is_known
from secure_maas.audit.text import escape_controls
from secure_maas.audit.times import canonical_time
from secure_maas.errors import SecureMaasError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
REASON_MAX = 1000
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

#: Column widths, shared with the table definition so validation and schema cannot disagree.
LIMITS = {
    "request_id": 64,
    "actor": 128,
    "action": 64,
    "model": 64,
    "reason_code": 64,
    "client": 64,
}


class ActorKind(StrEnum):
    USER = "user"  # a token subject calling the service
    OS = "os"  # an operating-system user running the CLI
    SERVICE = "service"  # the service itself (checkpoints, model loads)
    ANONYMOUS = "anonymous"  # a request whose credentials did not verify


class AuditDecision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"


class InvalidAuditEvent(SecureMaasError, ValueError):
    """An event cannot be recorded as built: unknown action, oversized field, bad digest."""


def body_digest(body: bytes) -> str:
    """The SHA-256 hex digest the log keeps in place of a request body."""
    return hashlib.sha256(body).hexdigest()


def encode_detail(detail: Mapping[str, str | int | None]) -> str:
    """Structured extras (checkpoint heads, training ids) as canonical JSON text."""
    for key, value in detail.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, (str, int))):
            raise InvalidAuditEvent(f"detail {key!r}: only str or int values may be recorded")
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def to_microseconds(moment: datetime) -> int:
    """Microseconds since the Unix epoch: the one form the canonical encoding uses for time."""
    return (moment - EPOCH) // MICROSECOND


def _checked_text(name: str, value: str | None, limit: int) -> str | None:
    """A name-like field (actor, model, request id...) as a plain, escaped `str`.

    NUL and invalid Unicode are refused: these fields come from checked names, so either is a
    bug at the call site. Other control characters are escaped; the limit applies to what is
    stored.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidAuditEvent(f"{name} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidAuditEvent(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidAuditEvent(f"{name} is not valid Unicode text") from exc
    stored = escape_controls(str.__str__(value))
    if len(stored) > limit:
        raise InvalidAuditEvent(f"{name} is longer than {limit} characters")
    return stored


def _free_text(name: str, value: str | None) -> str | None:
    """The reason: free text that may quote anything a caller sent, so it is escaped, never
    refused (NUL and lone surrogates included): refusing it would turn a caller's bad input
    into a failed audit write. Cut to `REASON_MAX` characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidAuditEvent(f"{name} must be a string, not {type(value).__name__}")
    stored = escape_controls(str.__str__(value))
    if len(stored) > REASON_MAX:
        stored = stored[: REASON_MAX - 3] + "..."
    return stored


def _check_int(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidAuditEvent(f"{name} must be an integer")
    if value is not None and not -(2**63) <= value < 2**63:
        raise InvalidAuditEvent(f"{name} is out of range")


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One thing that happened, as a caller records it (the chain adds seq, key id and MAC).

    `at` defaults to the time the event is written; `latency_ms` is kept to the microsecond;
    `detail` holds a few extra str/int values (checkpoint heads, training run ids).
    """

    action: str
    actor: str
    actor_kind: str = ActorKind.USER
    decision: str = AuditDecision.ALLOW
    model: str | None = None
    model_version: int | None = None
    reason_code: str | None = None
    reason: str | None = None
    http_status: int | None = None
    client: str | None = None
    latency_ms: float | None = None
    rows: int | None = None
    body_sha256: str | None = None
    request_id: str | None = None
    detail: Mapping[str, str | int | None] | None = field(default=None, hash=False)
    at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.action, str) or not is_known(self.action):
            raise InvalidAuditEvent(f"unknown action {self.action!r}")
        if self.actor_kind not in ActorKind._value2member_map_:
            raise InvalidAuditEvent(f"unknown actor kind {self.actor_kind!r}")
        if self.decision not in AuditDecision._value2member_map_:
            raise InvalidAuditEvent(f"unknown decision {self.decision!r}")
        if not self.actor:
            raise InvalidAuditEvent("actor must not be empty")
        for name, limit in LIMITS.items():
            object.__setattr__(self, name, _checked_text(name, getattr(self, name), limit))
        object.__setattr__(self, "reason", _free_text("reason", self.reason))
        for name in ("model_version", "http_status", "rows"):
            _check_int(name, getattr(self, name))
        if self.body_sha256 is not None and not _SHA256_HEX.match(self.body_sha256):
            raise InvalidAuditEvent("body_sha256 must be 64 lowercase hex digits")
        if self.latency_ms is not None and not 0 <= self.latency_ms < 1e12:
            raise InvalidAuditEvent("latency_ms must be a non-negative number")
        if self.at is not None and self.at.tzinfo is None:
            raise InvalidAuditEvent("at must be timezone-aware (use timeutil.utcnow())")
        if self.detail is not None:
            encode_detail(self.detail)
        # Plain strings from here on: the encoding accepts exactly `str`, not subclasses.
        for name in ("action", "actor_kind", "decision"):
            object.__setattr__(self, name, str.__str__(getattr(self, name)))

    @property
    def latency_us(self) -> int | None:
        return None if self.latency_ms is None else round(self.latency_ms * 1000)


#: Record fields that exports name otherwise: the time as text, the latency in milliseconds.
EXPORT_NAMES = {"at": "time", "latency_us": "latency_ms"}


@dataclass(frozen=True)
class AuditRecord:
    """A stored event: every field of the row, including its place in the chain."""

    seq: int
    at: datetime
    request_id: str | None
    actor: str
    actor_kind: str
    action: str
    model: str | None
    model_version: int | None
    decision: str
    reason_code: str | None
    reason: str | None
    http_status: int | None
    client: str | None
    latency_us: int | None
    rows: int | None
    body_sha256: str | None
    detail: str | None
    key_id: str
    mac: bytes = field(repr=False)
    encoding: int = 1

    @property
    def latency_ms(self) -> float | None:
        return None if self.latency_us is None else self.latency_us / 1000

    @property
    def details(self) -> dict[str, Any]:
        """`detail` parsed back into a mapping (empty when the event has none)."""
        if not self.detail:
            return {}
        parsed = json.loads(self.detail)
        return parsed if isinstance(parsed, dict) else {}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping for exports and `--format json`: the time is the canonical text,
        exactly what encoding 2 MACs."""
        data = {EXPORT_NAMES.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}
        data["time"] = canonical_time(self.at)
        data["latency_ms"] = self.latency_ms
        data["detail"] = self.details or None
        data["mac"] = self.mac.hex()
        return data
