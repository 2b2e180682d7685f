"""An `AuditEvent` as it crosses from a worker to the instance's audit writer.

Every field as JSON, the time (when set) as microseconds since the epoch; the receiving side
builds the event again, so it is validated there too (the escaping is idempotent: text escaped
by the worker reads the same once rebuilt).
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from secure_maas.audit import AuditEvent
from secure_maas.audit.events import EPOCH, to_microseconds
from secure_maas.dataplane.wire import WireError

_FIELDS = tuple(field.name for field in dataclasses.fields(AuditEvent))


def to_wire(event: AuditEvent) -> dict[str, Any]:
    """`event` as a JSON object."""
    data = {name: getattr(event, name) for name in _FIELDS}
    data["at"] = None if event.at is None else to_microseconds(event.at)
    data["detail"] = None if event.detail is None else dict(event.detail)
    return data


def from_wire(data: object) -> AuditEvent:
    """The event `to_wire` wrote (`WireError` if `data` is not one; `InvalidAuditEvent` if its
    fields do not make a valid event)."""
    if not isinstance(data, dict) or set(data) != set(_FIELDS):
        raise WireError("not an audit event")
    fields = dict(data)
    at = fields.pop("at")
    if at is not None and (not isinstance(at, int) or isinstance(at, bool)):
        raise WireError("audit event time is not an integer")
    moment = None if at is None else EPOCH + timedelta(microseconds=at)
    return AuditEvent(**fields, at=moment)
