"""What a model process holds: the model cache, the instance's audit writer, the `model:load`
events of its loads, and its metrics; built once in the process, closed when it stops.

The metrics (`dataplane.metrics`: cache, micro-batch and model event figures) go to the
instance's multiprocess folder, named in the environment the process inherited from the
gunicorn master, where every worker's scrape reads them.

A worker's `serving.Services` decides; this only loads and runs models and writes the events
it is handed, so it opens no token verifier, policy or quota state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from secure_maas.audit import AuditWriter, KeyringAuditKeys
from secure_maas.config import Settings
from secure_maas.dataplane.cache import ModelCache
from secure_maas.dataplane.loads import model_load_event
from secure_maas.dataplane.metrics import ModelMetrics
from secure_maas.db import create_engine
from secure_maas.keys import Keyring


@dataclass
class ModelHost:
    """One model process's engine, audit writer, model cache and metrics."""

    engine: Engine
    audit: AuditWriter
    cache: ModelCache
    metrics: ModelMetrics
    closed: bool = False

    @classmethod
    def build(cls, settings: Settings) -> ModelHost:
        """Open the keyring, database and cache; fails now when the keyring cannot be opened
        or holds no audit key (no audit key, no service)."""
        keyring = Keyring.open(settings.keys_dir)
        engine = create_engine(settings.database_url)
        audit_keys = KeyringAuditKeys(keyring)
        audit_keys.active()
        audit = AuditWriter(engine, audit_keys)
        metrics = ModelMetrics()
        holder: list[ModelHost] = []

        def on_event(kind: str, details: dict[str, Any]) -> None:
            holder[0].model_event(kind, details)

        cache = ModelCache.of(
            settings, engine, on_event, on_batch=metrics.on_batch, on_stats=metrics.on_cache
        )
        host = cls(engine, audit, cache, metrics)
        holder.append(host)
        return host

    def model_event(self, kind: str, details: dict[str, Any]) -> None:
        """Count a cache report and record it as `model:load` (raises `AuditUnavailable` if it
        cannot)."""
        self.metrics.on_event(kind)
        self.audit.append(model_load_event(kind, details))

    def close(self) -> None:
        """Unload models, write the queued audit events, release the database (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.cache.close()
        self.audit.close(timeout=30)
        self.engine.dispose()
