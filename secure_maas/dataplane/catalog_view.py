"""The process's copy of the registry: what may be served, decided without loading weights.

Resolution works on an in-memory copy of the registry (every model, version and label), rebuilt
when the `models` change counter moves; the counter is read at most every `poll_interval`
seconds (0.25 s), so a new version, a moved label or a disabled version reaches every worker
within a second. `facts(ref)` answers from that copy alone, so access decisions (404, 403,
the ε a rule allows) never load weights.

Every fact in that copy is the one the publisher signed (`dataplane.facts`): on each rebuild
every version's header is authenticated with the trusted publishers' public keys
(`registry.signed`; the body is not read, and a header is checked once per file and key), and
its row is compared with it. A row that differs is refused at once, with a `model.refused`
event (code `row_mismatch`, once per process and difference), exactly as a tampered artifact is
at load; its facts stay the header's. Whoever holds loaded models learns of each new copy
through `on_change` (before those reports), to drop disabled versions and forget refusals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from secure_maas.crypto import InvalidArtifact, PublicKey
from secure_maas.dataplane.facts import VersionFacts, version_facts
from secure_maas.dataplane.reports import EVENT_REFUSED, Key, OnEvent, details, emit
from secure_maas.db.session import SessionFactory, session_factory, session_scope
from secure_maas.db.watch import POLL_INTERVAL_S, Watcher
from secure_maas.keys import Keyring
from secure_maas.registry import catalog
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.registry.models import MODELS_SCOPE, ModelVersion
from secure_maas.registry.signature import InvalidModelData
from secure_maas.registry.signed import HeaderCache, SignedFacts, header_facts, reconcile
from secure_maas.registry.store import SealedStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One read of the registry: each version's facts, the labels, and the rows to load from."""

    facts: dict[str, dict[int, VersionFacts]] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: dict[Key, ModelVersion] = field(default_factory=dict)
    #: Versions whose row differs from their signed header: key -> (code, reason).
    mismatched: dict[Key, tuple[str, str]] = field(default_factory=dict)

    def resolve(self, ref: ModelRef) -> VersionFacts:
        """`catalog.resolve`'s rules, on this copy of the registry."""
        versions = self.facts.get(ref.name)
        if versions is None:
            raise ModelNotFound(f"no model named {ref.name!r}")
        if ref.label is not None:
            number = self.labels.get(ref.name, {}).get(ref.label)
            if number is None or number not in versions:
                raise ModelNotFound(f"model {ref.name!r} has no label {ref.label!r}")
            found = versions[number]
        elif ref.version is not None:
            if ref.version not in versions:
                raise ModelNotFound(f"model {ref.name!r} has no version {ref.version}")
            found = versions[ref.version]
        else:
            active = [number for number, facts in versions.items() if facts.active]
            if not active:
                raise ModelNotFound(f"model {ref.name!r} has no active version")
            found = versions[max(active)]
        if not found.active:
            raise ModelNotFound(f"version {found.version} of model {ref.name!r} is disabled")
        return found

    def current(self, key: Key) -> VersionFacts | None:
        """The facts of version `key` in this copy, disabled or not (None if it has none)."""
        return self.facts.get(key[0], {}).get(key[1])


class CatalogView:
    """The registry as this process sees it; thread-safe, one per cache.

    `keyring_loader` is called on every rebuild, so a newly trusted publisher is seen.
    `on_change(snapshot)` runs after each rebuild, on the refreshing thread.
    """

    def __init__(
        self,
        engine: Engine,
        store: SealedStore,
        keyring_loader: Callable[[], Keyring],
        on_event: OnEvent | None = None,
        *,
        on_change: Callable[[Snapshot], None] | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = session_factory(engine)
        self._store = store
        self._keyring_loader = keyring_loader
        self._on_event = on_event
        self._on_change = on_change
        self._watcher = Watcher(engine, [MODELS_SCOPE], interval=poll_interval, clock=clock)
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._headers = HeaderCache()
        self._reported: set[tuple[Key, str]] = set()
        self._refusals = 0

    @property
    def snapshot(self) -> Snapshot:
        """The copy as of the last rebuild (not refreshed: see `refresh`)."""
        return self._snapshot

    @property
    def refusals(self) -> int:
        """How many row mismatches were reported (they count among the cache's refusals)."""
        with self._lock:
            return self._refusals

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the registry copy if the `models` counter moved (looked at once per interval).

        Raises if the database cannot be read: requests must then fail closed.
        """
        return self._watcher.refresh(self._reload, force=force)

    def facts(self, ref: ModelRef) -> VersionFacts:
        """The version `ref` names, from the registry (`ModelNotFound` if none may be served)."""
        self.refresh()
        return self._snapshot.resolve(ref)

    def versions(self, name: str) -> list[VersionFacts]:
        """Every version of `name`, disabled ones included, oldest first."""
        self.refresh()
        versions = self._snapshot.facts.get(name)
        if versions is None:
            raise ModelNotFound(f"no model named {name!r}")
        return [versions[number] for number in sorted(versions)]

    def models(self) -> list[VersionFacts]:
        """Every version of every model, by name then version."""
        self.refresh()
        snapshot = self._snapshot
        return [
            snapshot.facts[name][number]
            for name in sorted(snapshot.facts)
            for number in sorted(snapshot.facts[name])
        ]

    def _reload(self, _counters: Mapping[str, int] | None = None) -> None:
        trusted = self._keyring_loader().trusted_publishers()
        snapshot = read_snapshot(self._factory, self._store, trusted, self._headers)
        self._snapshot = snapshot
        if self._on_change is not None:
            self._on_change(snapshot)
        for key, (code, reason) in snapshot.mismatched.items():
            report = (key, reason)
            with self._lock:
                if report in self._reported:
                    continue
                self._refusals += 1
            log.warning("refused %s:%d: %s (%s)", key[0], key[1], code, reason)
            emit(self._on_event, EVENT_REFUSED, details(*key, code=code, reason=reason))
            with self._lock:
                self._reported.add(report)


def read_snapshot(
    factory: SessionFactory,
    store: SealedStore,
    trusted: Mapping[str, PublicKey],
    headers: HeaderCache,
) -> Snapshot:
    """Every model, version and label, in one read transaction; facts from signed headers."""
    snapshot = Snapshot()
    with session_scope(factory) as session:
        for model in catalog.list_models(session):
            labels = catalog.labels_of(model)
            versions: dict[int, VersionFacts] = {}
            for row in model.versions:
                _ = row.model  # open_version reads row.model.name after the session closes
                key = (model.name, row.version)
                signed = _signed(store, trusted, headers, row, snapshot)
                try:
                    versions[row.version] = version_facts(
                        model.name, row, labels.get(row.version, []), signed
                    )
                except InvalidModelData as exc:
                    log.error("%s:%d has an unreadable signature: %s", model.name, row.version, exc)
                    continue
                snapshot.rows[key] = row
            snapshot.facts[model.name] = versions
            snapshot.labels[model.name] = {
                label.label: label.version.version for label in model.labels
            }
    return snapshot


def _signed(
    store: SealedStore,
    trusted: Mapping[str, PublicKey],
    headers: HeaderCache,
    row: ModelVersion,
    snapshot: Snapshot,
) -> SignedFacts | None:
    """The facts of `row` as signed; None if its header cannot be authenticated. A row that
    differs from its header is noted in `snapshot.mismatched` and the header's facts are used."""
    try:
        attested = headers.attest(store, trusted, row)
        signed = header_facts(attested.header, attested.publisher_key_id)
    except InvalidArtifact as exc:
        log.warning(
            "%s:%d: header not authenticated: %s (%s)",
            row.model.name,
            row.version,
            exc.code,
            exc.reason,
        )
        return None
    try:
        return reconcile(row, signed)
    except InvalidArtifact as exc:
        snapshot.mismatched[(row.model.name, row.version)] = (exc.code, exc.reason)
        return signed
