"""What a serving process holds, built once per process and closed on shutdown.

`Services` owns the database engine, the token verifier, the compiled access policy, the audit
writer (group commit, MAC'd with the keyring's audit key), the model cache, the quota leases
(`policy.leases`: no database transaction per request) and the metrics.
Nothing here imports Flask: the app reaches it through `app.extensions`, a test or a benchmark
can build one directly.

`models` is the data plane that runs predictions: in-process (`LocalDataPlane` over the cache,
the development server and tests) or the instance's model process (`RemoteDataPlane`, under
gunicorn, given `data_plane=PATH`). In a worker of the latter the cache only resolves
references and never loads a model (TensorFlow is never imported there), and the audit sink
is the instance's writer (`InstanceAudit`).

The model cache reports what it does (`model.loaded`, `.refused`, `.evicted`, `.fallback`);
each report becomes an audit event `model:load` by the service itself, carrying the id of the
request that caused it, and is committed before that request goes on (a failed write fails the
request, as any audit failure does).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import Engine

from secure_maas.actions import AdminAction
from secure_maas.audit import ActorKind, AuditEvent, AuditWriter, KeyringAuditKeys
from secure_maas.audit import Decision as AuditDecision
from secure_maas.audit.chain import SERVICE_ACTOR
from secure_maas.audit.keys import AuditKeys
from secure_maas.auth.verify import Verifier
from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.keys import Keyring
from secure_maas.policy.leases import QuotaLeases
from secure_maas.policy.live import PolicyCache
from secure_maas.registry.store import ArtifactStore
from secure_maas.serving.batcher import DEFAULT_MAX_QUEUE_ROWS
from secure_maas.serving.cache import (
    EVENT_REFUSED,
    BatchOptions,
    ModelCache,
)
from secure_maas.serving.metrics import Metrics

if TYPE_CHECKING:
    from secure_maas.dataplane.plane import DataPlane

log = logging.getLogger(__name__)

#: The id of the request being served on this thread (None outside requests, e.g. preload).
current_request_id: ContextVar[str | None] = ContextVar("secure_maas_request_id", default=None)

_DETAIL_KEYS = ("bytes", "device", "code", "ref", "refused_version")


class AuditSink(Protocol):
    """Where a process's audit events go: `append` returns once the event is committed."""

    def append(self, event: AuditEvent) -> object: ...

    def close(self, timeout: float | None = None) -> None: ...


@dataclass
class Services:
    """One process's engine, verifier, policy, audit writer, model cache and metrics."""

    settings: Settings
    engine: Engine
    verifier: Verifier
    policy: PolicyCache
    audit_keys: AuditKeys
    audit: AuditSink
    cache: ModelCache
    metrics: Metrics
    models: DataPlane
    quotas: QuotaLeases
    closed: bool = False

    @classmethod
    def build(
        cls, settings: Settings, *, data_plane: Path | Sequence[Path] | None = None
    ) -> Services:
        """Connect and load everything a request needs; fails now (not at the first request)
        when the keyring cannot be opened. With `data_plane` (the model processes' sockets,
        in route order) models run there and audit events go to the first one's writer."""
        from secure_maas.dataplane.client import InstanceAudit, RoutedDataPlane
        from secure_maas.dataplane.plane import LocalDataPlane

        keyring = Keyring.open(settings.keys_dir)
        engine = create_engine(settings.database_url)
        audit_keys = KeyringAuditKeys(keyring)
        audit_keys.active()  # no audit key, no service: MissingAuditKey now, not per request
        if isinstance(data_plane, Path):
            data_plane = [data_plane]
        remote = RoutedDataPlane(data_plane) if data_plane is not None else None
        audit: AuditSink
        if remote is None:
            audit = AuditWriter(engine, audit_keys)
        else:
            audit = InstanceAudit(remote, lambda: AuditWriter(engine, audit_keys))
        metrics = Metrics()
        batch = BatchOptions(
            max_batch_size=settings.batch_max_size,
            max_wait_us=settings.batch_max_wait_us,
            max_queue_rows=max(DEFAULT_MAX_QUEUE_ROWS, 4 * settings.batch_max_size),
        )
        holder: list[Services] = []

        def on_event(kind: str, details: dict[str, Any]) -> None:
            holder[0].model_event(kind, details)

        cache = ModelCache(
            engine,
            ArtifactStore(settings.store_dir),
            lambda: Keyring.open(settings.keys_dir),
            settings.cache_bytes,
            on_event,
            batch=batch,
            on_batch=metrics.on_batch,
            decode=_never_here if remote is not None else None,
        )
        metrics.watch_cache(cache.stats)
        services = cls(
            settings=settings,
            engine=engine,
            verifier=Verifier(engine, settings),
            policy=PolicyCache(engine),
            audit_keys=audit_keys,
            audit=audit,
            cache=cache,
            metrics=metrics,
            models=remote if remote is not None else LocalDataPlane(cache),
            quotas=QuotaLeases(engine),
        )
        holder.append(services)
        return services

    def model_event(self, kind: str, details: dict[str, Any]) -> None:
        """Record a model cache event as a `model:load` audit event (raises if it cannot)."""
        self.metrics.model_events.labels(kind).inc()
        extra = {key: details[key] for key in _DETAIL_KEYS if key in details}
        summary = " ".join(f"{key}={value}" for key, value in extra.items())
        reason = str(details.get("reason", "")) or summary or None
        event = AuditEvent(
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
        self.audit.append(event)

    def close(self) -> None:
        """Unload models, write the queued audit events, release the database (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.quotas.close()
        self.models.close()
        self.cache.close()
        self.audit.close(timeout=30)
        self.engine.dispose()


def _never_here(_plaintext: memoryview) -> Any:
    """The decoder of a worker whose models live in the model process: never called there."""
    raise RuntimeError("this process does not load models: the model process does")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _plain(value: object) -> str | int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return str(value)
