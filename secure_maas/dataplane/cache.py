"""The model cache: registry references resolved to models decrypted into memory, never to disk.

A facade over three parts, each of one idea, so that what decides stays apart from what loads:

- `catalog_view.CatalogView`: the process's copy of the registry (signed facts only), refreshed
  within a second of a change; `facts`, `versions`, `models` answer from it alone, so access
  decisions never load weights.
- `loaded.LoadedModels`: the LRU of loaded models, bounded by plaintext bytes, and the memory
  of refused artifacts; it loads the version it is handed and decides nothing.
- `fallback.LabelFallback`: a label or bare name whose version is refused keeps serving the
  version it last served here (with a `model.fallback` event); a numbered version has none.

Each version has a state (`state`, TF Serving's START/LOADING/AVAILABLE/UNLOADING/END). Models
load lazily, on first use; `state(ref, load=True)` starts a background load of a version that
is not in memory (START, or END after it was dropped; not one refused within `retry_after`)
and answers LOADING at once, so a client polling the state until AVAILABLE gets there.

Each new registry copy reaches the loaded models before its row mismatches are reported.
`on_event(kind, details)` (`reports`) runs on the request's thread, outside the cache's locks;
whatever it raises reaches the caller (the audit sink fails closed). `on_stats(CacheStats)`
receives the cache's figures after each call that may have changed them (for metrics: one
call at a time, in order; what it raises is logged, never the caller's).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from sqlalchemy.engine import Engine

from secure_maas.config import Settings
from secure_maas.dataplane.batcher import BatchInfo
from secure_maas.dataplane.cached_model import BatchOptions, CachedModel
from secure_maas.dataplane.catalog_view import CatalogView, Snapshot
from secure_maas.dataplane.facts import UNVERIFIED, VersionFacts
from secure_maas.dataplane.fallback import LabelFallback
from secure_maas.dataplane.loaded import (
    CacheStats,
    Decoder,
    LoadedModels,
    ModelState,
    ModelUnavailable,
    VersionState,
)
from secure_maas.dataplane.reports import (
    EVENT_EVICTED,
    EVENT_FALLBACK,
    EVENT_LOADED,
    EVENT_REFUSED,
    Key,
    OnEvent,
    details,
    emit,
)
from secure_maas.dataplane.statistics import Statistics, VersionStatistics
from secure_maas.db.watch import POLL_INTERVAL_S
from secure_maas.keys import Keyring
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.registry.store import ArtifactStore, SealedStore

__all__ = [
    "EVENT_EVICTED",
    "EVENT_FALLBACK",
    "EVENT_LOADED",
    "EVENT_REFUSED",
    "UNVERIFIED",
    "BatchOptions",
    "CacheStats",
    "CachedModel",
    "Decoder",
    "Key",
    "ModelCache",
    "ModelState",
    "ModelUnavailable",
    "OnEvent",
    "VersionFacts",
    "VersionState",
]

log = logging.getLogger(__name__)


class ModelCache:
    """Resolves references and serves loaded models; thread-safe, one instance per process.

    `keyring_loader` is called for every load and rebuild, so rotated keys are seen. `batch`
    sets the micro-batching of every model, `batch_per_model` overrides it by model name.
    `decode` (default `codec.decode_model`) and `clock` are for tests.
    """

    def __init__(
        self,
        engine: Engine,
        store: SealedStore,
        keyring_loader: Callable[[], Keyring],
        max_bytes: int,
        on_event: OnEvent | None = None,
        *,
        batch: BatchOptions | None = None,
        batch_per_model: Mapping[str, BatchOptions] | None = None,
        on_batch: Callable[[BatchInfo], None] | None = None,
        on_stats: Callable[[CacheStats], None] | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        retry_after: float = 30.0,
        decode: Decoder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.statistics = Statistics()
        view = CatalogView(
            engine,
            store,
            keyring_loader,
            on_event,
            on_change=self._changed,
            poll_interval=poll_interval,
            clock=clock,
        )
        self._loaded = LoadedModels(
            lambda: view.snapshot,
            store,
            keyring_loader,
            max_bytes,
            on_event,
            batch=batch,
            batch_per_model=batch_per_model,
            on_batch=on_batch,
            retry_after=retry_after,
            decode=decode,
            clock=clock,
            statistics=self.statistics,
        )
        self._view = view
        self._fallback = LabelFallback()
        self._on_event = on_event
        self.max_bytes = max_bytes
        self._on_stats = on_stats
        self._reporting = threading.Lock()
        self._report()

    @classmethod
    def of(
        cls,
        settings: Settings,
        engine: Engine,
        on_event: OnEvent,
        *,
        on_batch: Callable[[BatchInfo], None] | None = None,
        on_stats: Callable[[CacheStats], None] | None = None,
        decode: Decoder | None = None,
    ) -> ModelCache:
        """The cache `settings` describe (store, keys folder, memory bound, batching)."""
        return cls(
            engine,
            ArtifactStore(settings.store_dir),
            lambda: Keyring.open(settings.keys_dir),
            settings.cache_bytes,
            on_event,
            batch=BatchOptions.of(settings),
            on_batch=on_batch,
            on_stats=on_stats,
            decode=decode,
        )

    # -- resolution (no weights) -----------------------------------------------------------

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the registry copy if the `models` counter moved (looked at once per interval).

        Raises if the database cannot be read: requests must then fail closed.
        """
        try:
            return self._view.refresh(force=force)
        finally:
            self._report()

    def facts(self, ref: ModelRef | str) -> VersionFacts:
        """The version `ref` names, from the registry (`ModelNotFound` if none may be served)."""
        try:
            return self._view.facts(_as_ref(ref))
        finally:
            self._report()

    def versions(self, name: str) -> list[VersionFacts]:
        """Every version of `name`, disabled ones included, oldest first."""
        try:
            return self._view.versions(name)
        finally:
            self._report()

    def models(self) -> list[VersionFacts]:
        """Every version of every model, by name then version."""
        try:
            return self._view.models()
        finally:
            self._report()

    # -- loaded models ---------------------------------------------------------------------

    def get(self, ref: ModelRef | str) -> CachedModel:
        """The loaded model `ref` names, loading it if needed.

        Raises `ModelNotFound` (no such, or disabled) and `ModelUnavailable` (artifact refused).
        """
        ref = _as_ref(ref)
        try:
            facts = self._view.facts(ref)
            try:
                entry = self._loaded.entry(facts)
            except ModelUnavailable:
                fallback = self._fall_back(ref, facts)
                if fallback is None:
                    raise
                return fallback
        finally:
            self._report()
        self._fallback.served(ref, facts.version)
        return entry

    def ready(self, ref: ModelRef | str, *, load: bool = False) -> bool:
        """Whether `get(ref)` would answer without loading: its version is in memory (or, for a
        label or bare name whose version was refused, the fallback `get` serves). With `load`,
        loads it first. `ModelNotFound` for an unknown or disabled reference."""
        ref = _as_ref(ref)
        facts = self.facts(ref)
        previous = self._fallback.instead_of(ref, facts.version)
        instead = None if previous is None else (ref.name, previous)
        if self._loaded.serves((facts.name, facts.version), instead=instead):
            return True
        if not load:
            return False
        try:
            self.get(ref)
        except ModelUnavailable:
            return False
        return True

    def state(self, ref: ModelRef | str, *, load: bool = False) -> VersionState:
        """The state of the version `ref` names (`ModelNotFound` for an unknown or disabled
        one). With `load`, a version that is not in memory and was not refused within
        `retry_after` starts loading on a thread of its own, and the answer is LOADING; its
        `model:load` event carries the id of the request that asked."""
        facts = self.facts(_as_ref(ref))
        key = (facts.name, facts.version)
        found = self._loaded.state(key)
        if not load or found.state not in (ModelState.START, ModelState.END):
            return found
        if self._loaded.refused_recently(key):
            return found
        self._load_in_background(facts)
        return VersionState(ModelState.LOADING)

    def unload(self, ref: ModelRef | str) -> VersionState:
        """Take the version `ref` names out of memory (`ModelNotFound` for an unknown or
        disabled one) and answer its state: END, or what it was if it was not in memory. A
        request that needs it later loads it again, as after an eviction."""
        facts = self.facts(_as_ref(ref))
        key = (facts.name, facts.version)
        self._loaded.unload(key)
        self._report()
        return self._loaded.state(key)

    def version_statistics(self, keys: Iterable[Key] | None = None) -> list[VersionStatistics]:
        """What each version ran here (`Statistics.snapshot`)."""
        return self.statistics.snapshot(keys)

    def preload(self, refs: Iterable[ModelRef | str]) -> dict[str, str | None]:
        """Load each reference now; returns each one's error message, None when it loaded."""
        results: dict[str, str | None] = {}
        for ref in refs:
            try:
                self.get(ref)
            except (ModelNotFound, ModelUnavailable) as exc:
                results[str(ref)] = str(exc)
            else:
                results[str(ref)] = None
        return results

    def loaded(self) -> list[Key]:
        """(name, version) of each model in memory, least recently used first."""
        return self._loaded.keys()

    def stats(self) -> CacheStats:
        """The counters; refusals count refused loads and refused rows alike."""
        stats = self._loaded.stats()
        stats.refusals += self._view.refusals
        return stats

    def close(self) -> None:
        """Unload everything (queued requests finish first, on their batchers' threads)."""
        self._loaded.close()
        self._report()

    # -- internals -------------------------------------------------------------------------

    def _report(self) -> None:
        """Hand the figures to `on_stats` (read under its lock, so reports arrive in order)."""
        if self._on_stats is None:
            return
        with self._reporting:
            try:
                self._on_stats(self.stats())
            except Exception:  # a metrics hook must never fail a request
                log.exception("the cache's on_stats hook failed")

    def _fall_back(self, ref: ModelRef, refused: VersionFacts) -> CachedModel | None:
        """The version `ref` served before `refused`, loaded; None when there is none."""
        previous = self._fallback.instead_of(ref, refused.version)
        if previous is None:
            return None
        try:
            facts = self._view.snapshot.resolve(ModelRef(ref.name, version=previous))
            entry = self._loaded.entry(facts)
        except (ModelNotFound, ModelUnavailable):
            return None
        if self._fallback.first_report(ref, refused.version):
            report = details(
                facts.name, facts.version, ref=str(ref), refused_version=refused.version
            )
            emit(self._on_event, EVENT_FALLBACK, report)
        return entry

    def _load_in_background(self, facts: VersionFacts) -> None:
        key = (facts.name, facts.version)
        self._loaded.mark_loading(key)  # LOADING from now on, not once the thread runs
        context = contextvars.copy_context()  # the asking request's id, for the load's event

        def load() -> None:
            try:
                context.run(self._loaded.entry, facts)
            except (ModelNotFound, ModelUnavailable):
                pass  # disabled meanwhile, or refused: the refusal is its own event
            except Exception:  # nobody waits for this thread: say it here
                log.exception("background load of %s:%d failed", *key)
            finally:
                self._loaded.mark_loading(key, done=True)
                self._report()

        name = f"load-{facts.name}:{facts.version}"
        threading.Thread(target=load, name=name, daemon=True).start()

    def _changed(self, snapshot: Snapshot) -> None:
        """A new registry copy: fallbacks are reported afresh, loaded models follow it."""
        self._fallback.forget_reports()
        self._loaded.retain(snapshot)


def _as_ref(ref: ModelRef | str) -> ModelRef:
    return ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
