"""What a model process holds: the model cache, the instance's audit writer, and the
`model:load` events of its loads; built once in the process, closed when it stops.

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
from secure_maas.db import create_engine
from secure_maas.keys import Keyring


@dataclass
class ModelHost:
    """One model process's engine, audit writer and model cache."""

    engine: Engine
    audit: AuditWriter
    cache: ModelCache
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
        holder: list[ModelHost] = []

        def on_event(kind: str, details: dict[str, Any]) -> None:
            holder[0].model_event(kind, details)

        cache = ModelCache.of(settings, engine, on_event)
        host = cls(engine, audit, cache)
        holder.append(host)
        return host

    def model_event(self, kind: str, details: dict[str, Any]) -> None:
        """Record a cache report as `model:load` (raises `AuditUnavailable` if it cannot)."""
        self.audit.append(model_load_event(kind, details))

    def close(self) -> None:
        """Unload models, write the queued audit events, release the database (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.cache.close()
        self.audit.close(timeout=30)
        self.engine.dispose()
