"""Where a process's audit events go: the one seam between what records and what writes.

The serving pipeline, the model process and the worker's link to the instance's writer all
append through `AuditSink`: the production sink is an `AuditWriter` (or a worker's
`dataplane.client.InstanceAudit` in front of one), and a test hands in a fake (one that fails,
to prove a request fails closed) instead of patching the writer.
"""

from __future__ import annotations

from typing import Protocol

from secure_maas.audit.events import AuditEvent


class AuditSink(Protocol):
    """Something that records audit events and keeps the fail-closed contract.

    `append` returns only once `event` is committed and raises `AuditUnavailable` (or a
    subclass) otherwise, so the caller can refuse the request. `close` writes what is queued,
    waiting at most `timeout` seconds.
    """

    def append(self, event: AuditEvent) -> object: ...

    def close(self, timeout: float | None = None) -> None: ...
