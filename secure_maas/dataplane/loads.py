"""A model cache report as the audit event `model:load`, recorded by the service itself.

The cache reports what it does (`model.loaded`, `.refused`, `.evicted`, `.fallback`); each
report becomes a `model:load` event carrying the id of the request that caused it
(`current_request_id`, set by the HTTP pipeline, or by the model process from the frame that
asked), committed before that request goes on: a failed write fails the request, as any audit
failure does. The same event whether the model was loaded in the model process or in the
development server's own.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from secure_maas.actions import AdminAction
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent
from secure_maas.audit.chain import SERVICE_ACTOR
from secure_maas.dataplane.reports import EVENT_REFUSED

#: The id of the request being served on this thread (None outside requests, e.g. preload).
current_request_id: ContextVar[str | None] = ContextVar("secure_maas_request_id", default=None)

#: What of a report's details the event keeps (never a path or key material).
DETAIL_KEYS = ("bytes", "device", "code", "ref", "refused_version")


def model_load_event(kind: str, details: dict[str, Any]) -> AuditEvent:
    """The `model:load` event of the cache report `kind` with `details`."""
    extra = {key: details[key] for key in DETAIL_KEYS if key in details}
    summary = " ".join(f"{key}={value}" for key, value in extra.items())
    reason = str(details.get("reason", "")) or summary or None
    return AuditEvent(
        action=AdminAction.MODEL_LOAD,
        actor=SERVICE_ACTOR,
        actor_kind=ActorKind.SERVICE,
        decision=AuditDecision.ERROR if kind == EVENT_REFUSED else AuditDecision.ALLOW,
        model=str(details.get("model")) if details.get("model") is not None else None,
        model_version=_int(details.get("version")),
        reason_code=kind,
        reason=reason,
        request_id=current_request_id.get(),
        detail={key: _plain(value) for key, value in extra.items()} or None,
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _plain(value: object) -> str | int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return str(value)
