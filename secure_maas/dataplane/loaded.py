"""The models this process holds: decrypted into memory (never to disk), in an LRU by bytes.

Loading a version verifies and decrypts its sealed artifact in memory
(`registry.artifacts.open_version`), decodes it (`registry.codec.decode_model`, onto the GPU
when there is one) and wipes the plaintext. Loaded models are kept in an LRU bounded by their
plaintext bytes; a version the registry disables is dropped at once (`retain`).

Each version has a state, TF Serving's (`state`): START (known, never loaded here), LOADING,
AVAILABLE (in memory), UNLOADING (being dropped), END (dropped, or its artifact refused).

An artifact that fails verification or decoding is refused: `on_event("model.refused", ...)`
carries the reason, the caller gets `ModelUnavailable`, and the attempt is not repeated for
`retry_after` seconds or until the registry changes. A version already in memory keeps serving
whatever happens to its file, or to its row (it was verified when it was loaded). A model is
only cached after its `model.loaded` event went through.

What may be served is not decided here: the caller resolves a reference (`CatalogView`) and
hands over the facts of the version to load; this only loads, keeps and forgets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from secure_maas.crypto import InvalidArtifact
from secure_maas.dataplane.batcher import BatchInfo
from secure_maas.dataplane.cached_model import BatchOptions, CachedModel
from secure_maas.dataplane.catalog_view import Snapshot
from secure_maas.dataplane.facts import VersionFacts
from secure_maas.dataplane.reports import (
    EVENT_EVICTED,
    EVENT_LOADED,
    EVENT_REFUSED,
    Key,
    OnEvent,
    details,
    emit,
)
from secure_maas.dataplane.statistics import Statistics
from secure_maas.errors import SecureMaasError
from secure_maas.keys import Keyring
from secure_maas.registry.artifacts import open_version
from secure_maas.registry.catalog import ModelNotFound
from secure_maas.registry.models import ModelVersion
from secure_maas.registry.store import SealedStore

if TYPE_CHECKING:
    from secure_maas.registry.codec import ServedModel

log = logging.getLogger(__name__)

Decoder = Callable[[memoryview], "ServedModel"]


class ModelUnavailable(SecureMaasError):
    """The version cannot be served now: its artifact was refused (the reason went to the
    event hook, never to the caller)."""


class ModelState(StrEnum):
    """A version's state in this process, named as TF Serving names them."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(frozen=True)
class VersionState:
    """A version's state; `refused` when it is END because its artifact was refused (why is
    in the `model.refused` event, never here)."""

    state: ModelState
    refused: bool = False


@dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0
    hits: int = 0
    loads: int = 0
    refusals: int = 0
    evictions: int = 0


class LoadedModels:
    """The LRU of loaded versions and the memory of refused ones; thread-safe.

    `snapshot()` is the registry copy the caller decides on: loads read their row from it, and
    a version it no longer lists as active is not kept. `keyring_loader` is called for every
    load, so rotated keys are seen. `decode` (default `codec.decode_model`) and `clock` are for
    tests.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        store: SealedStore,
        keyring_loader: Callable[[], Keyring],
        max_bytes: int,
        on_event: OnEvent | None = None,
        *,
        batch: BatchOptions | None = None,
        batch_per_model: Mapping[str, BatchOptions] | None = None,
        on_batch: Callable[[BatchInfo], None] | None = None,
        retry_after: float = 30.0,
        decode: Decoder | None = None,
        clock: Callable[[], float] = time.monotonic,
        statistics: Statistics | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._snapshot = snapshot
        self._store = store
        self._keyring_loader = keyring_loader
        self._on_event = on_event
        self._batch = batch or BatchOptions()
        self._batch_per_model = dict(batch_per_model or {})
        self._on_batch = on_batch
        self._retry_after = retry_after
        self._decode = decode
        self._clock = clock
        self._statistics = statistics
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, CachedModel] = OrderedDict()
        self._bytes = 0
        self._load_locks: dict[Key, threading.Lock] = {}
        self._failed: dict[Key, float] = {}
        self._loading: dict[Key, int] = {}
        self._unloading: set[Key] = set()
        self._unloaded: set[Key] = set()
        self._stats = CacheStats(max_bytes=max_bytes)

    def entry(self, facts: VersionFacts) -> CachedModel:
        """The loaded version `facts` describes, loading it if needed (one load at a time per
        version). Raises `ModelUnavailable` while its refusal is fresh, `ModelNotFound` if the
        registry no longer lists it as active."""
        key = (facts.name, facts.version)
        with self._lock:
            entry = self._cached(key)
            if entry is not None:
                return entry
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                entry = self._cached(key)
                if entry is not None:
                    return entry
                row = self._snapshot().rows.get(key)
            if row is None:
                raise ModelNotFound(f"model {facts.name!r} has no version {facts.version}")
            self.mark_loading(key)
            try:
                entry = self._load(facts, row)
                evicted = self._insert(key, entry)
            finally:
                self.mark_loading(key, done=True)
        for old in evicted:
            self._evicted(old, "lru")
        return entry

    def state(self, key: Key) -> VersionState:
        """The state of version `key` in this process (see the module docstring)."""
        with self._lock:
            if key in self._unloading:
                return VersionState(ModelState.UNLOADING)
            if key in self._entries:
                return VersionState(ModelState.AVAILABLE)
            if self._loading.get(key):
                return VersionState(ModelState.LOADING)
            if key in self._failed:
                return VersionState(ModelState.END, refused=True)
            if key in self._unloaded:
                return VersionState(ModelState.END)
            return VersionState(ModelState.START)

    def refused_recently(self, key: Key) -> bool:
        """Whether `key` was refused within `retry_after` (a load now would be refused too)."""
        with self._lock:
            failed_at = self._failed.get(key)
            return failed_at is not None and self._clock() - failed_at < self._retry_after

    def mark_loading(self, key: Key, *, done: bool = False) -> None:
        """Count a load of `key` as started (or, with `done`, as over): LOADING meanwhile."""
        with self._lock:
            count = self._loading.get(key, 0) + (-1 if done else 1)
            if count > 0:
                self._loading[key] = count
            else:
                self._loading.pop(key, None)

    def serves(self, key: Key, *, instead: Key | None = None) -> bool:
        """Whether `key` is in memory, or was refused while `instead` (its fallback) is."""
        with self._lock:
            if key in self._entries:
                return True
            return instead is not None and key in self._failed and instead in self._entries

    def keys(self) -> list[Key]:
        """(name, version) of each model in memory, least recently used first."""
        with self._lock:
            return list(self._entries)

    def stats(self) -> CacheStats:
        """A copy of the counters, with the entries and bytes held now."""
        with self._lock:
            copy = CacheStats(**vars(self._stats))
            copy.entries, copy.bytes = len(self._entries), self._bytes
        return copy

    def retain(self, snapshot: Snapshot) -> None:
        """Follow a new registry copy: refusals are forgotten (the registry changed, so a load
        may succeed now) except for versions whose row differs from their header, which are
        refused unless already in memory; versions no longer active are dropped."""
        dropped: list[CachedModel] = []
        now = self._clock()
        with self._lock:
            self._failed.clear()
            for key in snapshot.mismatched:
                if key not in self._entries:  # in memory, it was verified: it keeps serving
                    self._failed[key] = now
            for key in list(self._entries):
                facts = snapshot.current(key)
                if facts is None or not facts.active:
                    entry = self._entries.pop(key)
                    self._bytes -= entry.weight
                    self._stats.evictions += 1
                    self._unloading.add(key)
                    dropped.append(entry)
        for entry in dropped:
            self._close(entry)
            self._evicted(entry, "disabled")

    def unload(self, key: Key) -> bool:
        """Take version `key` out of memory (UNLOADING, then END), as an eviction does: a
        request that needs it later loads it again. False when it was not in memory."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._bytes -= entry.weight
            self._stats.evictions += 1
            self._unloading.add(key)
        self._close(entry)
        self._evicted(entry, "unloaded")
        return True

    def close(self) -> None:
        """Unload everything (queued requests finish first, on their batchers' threads)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._bytes = 0
            self._unloading.update((e.facts.name, e.facts.version) for e in entries)
        for entry in entries:
            self._close(entry)

    def _close(self, entry: CachedModel) -> None:
        """Close a version taken out of the LRU (UNLOADING until it is closed, then END)."""
        key = (entry.facts.name, entry.facts.version)
        try:
            entry.close()
        finally:
            with self._lock:
                self._unloading.discard(key)
                if key not in self._entries:
                    self._unloaded.add(key)

    def _cached(self, key: Key) -> CachedModel | None:
        """The entry for `key` (marked recently used), or raise while a refusal is fresh."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self._stats.hits += 1
            return entry
        failed_at = self._failed.get(key)
        if failed_at is not None and self._clock() - failed_at < self._retry_after:
            raise ModelUnavailable(f"version {key[1]} of model {key[0]!r} is unavailable")
        return None

    def _load(self, facts: VersionFacts, row: ModelVersion) -> CachedModel:
        keyring = self._keyring_loader()
        try:
            opened = open_version(self._store, keyring, row)
        except InvalidArtifact as exc:
            raise self._refuse(facts, exc.code, exc.reason) from exc
        try:
            model = self._decoder()(opened.plaintext)
        except SecureMaasError as exc:  # the codec raises UnsafeModel or InvalidModelData only
            raise self._refuse(facts, "undecodable", str(exc)) from exc
        finally:
            opened.wipe()
        if model.signature != facts.signature:
            reason = "the artifact's serving signature differs from the registry's"
            raise self._refuse(facts, "signature_mismatch", reason)
        loaded = details(
            facts.name, facts.version, bytes=facts.plaintext_bytes, device=model.device
        )
        emit(self._on_event, EVENT_LOADED, loaded)
        options = self._batch_per_model.get(facts.name, self._batch)
        with self._lock:
            self._stats.loads += 1
        return CachedModel(facts, model, options, self._on_batch, self._statistics)

    def _decoder(self) -> Decoder:
        if self._decode is None:
            from secure_maas.registry.codec import decode_model  # imports TensorFlow

            self._decode = decode_model
        return self._decode

    def _refuse(self, facts: VersionFacts, code: str, reason: str) -> ModelUnavailable:
        log.warning("refused %s:%d: %s (%s)", facts.name, facts.version, code, reason)
        with self._lock:
            self._failed[(facts.name, facts.version)] = self._clock()
            self._stats.refusals += 1
        emit(
            self._on_event,
            EVENT_REFUSED,
            details(facts.name, facts.version, code=code, reason=reason),
        )
        return ModelUnavailable(f"version {facts.version} of model {facts.name!r} is unavailable")

    def _insert(self, key: Key, entry: CachedModel) -> list[CachedModel]:
        evicted: list[CachedModel] = []
        with self._lock:
            current = self._snapshot().current(key)
            if current is None or not current.active:  # disabled while it was loading
                entry.close()
                raise ModelNotFound(f"version {key[1]} of model {key[0]!r} is disabled")
            self._entries[key] = entry
            self._bytes += entry.weight
            self._failed.pop(key, None)
            self._unloaded.discard(key)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                old_key, old = self._entries.popitem(last=False)
                self._bytes -= old.weight
                self._stats.evictions += 1
                self._unloading.add(old_key)
                evicted.append(old)
        for old in evicted:
            self._close(old)
        return evicted

    def _evicted(self, entry: CachedModel, reason: str) -> None:
        facts = entry.facts
        emit(
            self._on_event,
            EVENT_EVICTED,
            details(facts.name, facts.version, reason=reason, bytes=entry.weight),
        )
