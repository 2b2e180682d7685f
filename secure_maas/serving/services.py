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

The model cache's reports become `model:load` audit events (`dataplane.loads`), counted in
the metrics too.

The audit sink (`audit.AuditSink`) and the access policy (`AccessPolicy`) are protocols: `build`
wires the production ones, and a test that needs one to fail passes a fake in a `Services` of
its own (`dataclasses.replace`) to `create_app(services=...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import Engine

from secure_maas.actions import Action
from secure_maas.audit import AuditSink, AuditWriter, KeyringAuditKeys
from secure_maas.audit.keys import AuditKeys
from secure_maas.auth.verify import Verifier
from secure_maas.config import Settings
from secure_maas.dataplane.cache import ModelCache
from secure_maas.dataplane.loads import model_load_event
from secure_maas.db import create_engine
from secure_maas.keys import Keyring
from secure_maas.policy import Decision, ModelFacts, Requester, RequestFacts
from secure_maas.policy.leases import QuotaLeases
from secure_maas.policy.live import PolicyCache
from secure_maas.serving.metrics import Metrics

if TYPE_CHECKING:
    from secure_maas.dataplane.plane import DataPlane

log = logging.getLogger(__name__)


class AccessPolicy(Protocol):
    """What the pipeline asks of the access policy: one decision per request (`PolicyCache`,
    which rebuilds from the database; a test may hand in one whose database is down)."""

    def decide(
        self,
        principal: Requester,
        action: Action,
        model: ModelFacts | None,
        facts: RequestFacts,
    ) -> Decision: ...


@dataclass
class Services:
    """One process's engine, verifier, policy, audit writer, model cache and metrics."""

    settings: Settings
    engine: Engine
    verifier: Verifier
    policy: AccessPolicy
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
        holder: list[Services] = []

        def on_event(kind: str, details: dict[str, Any]) -> None:
            holder[0].model_event(kind, details)

        cache = ModelCache.of(
            settings,
            engine,
            on_event,
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
        """Record a model cache report as a `model:load` audit event (raises if it cannot)."""
        self.metrics.model_events.labels(kind).inc()
        self.audit.append(model_load_event(kind, details))

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
