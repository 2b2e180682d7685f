"""The model cache: registry references resolved to models decrypted into memory, never to disk.

Resolution works on an in-memory copy of the registry (every model, version and label), rebuilt
when the `models` change counter moves; the counter is read at most every `poll_interval`
seconds (0.25 s), so a new version, a moved label or a disabled version reaches every worker
within a second. `facts(ref)` answers from that copy alone, so access decisions (404, 403,
the ε a rule allows) never load weights. `get(ref)` also loads the version: the sealed artifact
is verified and decrypted in memory (`registry.artifacts.open_version`), decoded
(`registry.codec.decode_model`, onto the GPU when there is one), and the plaintext is wiped.
Loaded models are kept in an LRU bounded by their plaintext bytes; a disabled version is
dropped at once.

Every fact in that copy that a decision or a caller relies on (privacy, the DP guarantee,
dataset, serving signature) is the one the publisher signed: on each rebuild every version's
header is authenticated with the trusted publishers' public keys (`registry.signed`; the
body is not read, and a header is checked once per file and key), and its row is compared
with it. A row that differs is refused at once, with a `model.refused` event (code
`row_mismatch`, once per process and difference), exactly as a tampered artifact is at load;
its facts stay the header's, and a copy already in memory (verified when it was loaded) keeps
serving, as it does when its file is tampered with. A version whose header cannot be
authenticated (file missing, unreadable, bad signature) is listed with privacy `unverified`
and no guarantee, so no `max_epsilon` rule lets its metadata be read, and loading it is
refused as before (see `VersionFacts.epsilon_for` for how a prediction is decided).

An artifact that fails verification or decoding is refused: `on_event("model.refused", ...)`
carries the reason, the caller gets `ModelUnavailable`, and the attempt is not repeated for
`retry_after` seconds or until the registry changes. A version already in memory keeps serving
whatever happens to its file. A label, or a bare name (the newest version), that moves to a
refused version keeps serving the version it last served in this process, with a
`model.fallback` event; a version asked for by number has no fallback.

`on_event(kind, details)` runs on the request's thread, outside the cache's locks; whatever it
raises reaches the caller (the audit sink fails closed). A model is only cached after its
`model.loaded` event went through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from secure_maas.config import Settings
from secure_maas.crypto import InvalidArtifact, PublicKey
from secure_maas.dataplane.batcher import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_ROWS,
    DEFAULT_MAX_WAIT_US,
    Array,
    BatcherClosed,
    BatchInfo,
    MicroBatcher,
)
from secure_maas.db.session import SessionFactory, session_factory, session_scope
from secure_maas.db.watch import POLL_INTERVAL_S, Watcher
from secure_maas.errors import SecureMaasError
from secure_maas.keys import Keyring
from secure_maas.registry import catalog
from secure_maas.registry.artifacts import open_version
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.registry.disclosure import public_guarantee
from secure_maas.registry.models import MODELS_SCOPE, ModelVersion, VersionStatus
from secure_maas.registry.signature import InvalidModelData, ServingSignature
from secure_maas.registry.signed import HeaderCache, SignedFacts, header_facts, reconcile
from secure_maas.registry.store import ArtifactStore

if TYPE_CHECKING:
    from secure_maas.registry.codec import LoadedModel

log = logging.getLogger(__name__)

EVENT_LOADED = "model.loaded"
EVENT_REFUSED = "model.refused"
EVENT_EVICTED = "model.evicted"
EVENT_FALLBACK = "model.fallback"

#: The privacy class shown for a version whose signed header could not be authenticated.
UNVERIFIED = "unverified"

OnEvent = Callable[[str, dict[str, Any]], None]
Decoder = Callable[[memoryview], "LoadedModel"]
Key = tuple[str, int]


class ModelUnavailable(SecureMaasError):
    """The version cannot be served now: its artifact was refused (the reason went to the
    event hook, never to the caller)."""


@dataclass(frozen=True)
class VersionFacts:
    """What the registry says about one version: enough to decide access without its weights."""

    name: str
    version: int
    status: str
    labels: tuple[str, ...]
    signature: ServingSignature
    privacy: str
    dp: Mapping[str, Any] | None  # epsilon, delta, noise_multiplier, ... for a DP model
    dataset_name: str | None
    plaintext_bytes: int
    created_at: datetime
    created_by: str
    #: False when the signed header could not be authenticated (privacy shows `unverified`).
    verified: bool = True
    #: Then, the ε the row claims: see `epsilon_for`.
    row_epsilon: float | None = None

    @property
    def active(self) -> bool:
        return self.status == VersionStatus.ACTIVE.value

    def epsilon_for(self, *, loads: bool) -> float | None:
        """The ε a rule compares. For a version whose header could not be authenticated, the
        row's claim is used only by a decision that loads the version before anything is
        answered (a prediction): the load verifies the row against the header, so the version
        is refused (503) or a fallback is decided again on its own signed facts. A decision
        answered from these facts alone (metadata, listing) sees no guarantee."""
        if self.verified:
            return self.dp_epsilon
        return self.row_epsilon if loads else None

    @property
    def dp_epsilon(self) -> float | None:
        """The model's ε (None without a DP guarantee): what `max ε` rule conditions compare."""
        value = (self.dp or {}).get("epsilon")
        return None if value is None else float(value)

    def guarantee(self) -> dict[str, Any]:
        """The privacy guarantee and provenance, as the metadata endpoints report it: what the
        guarantee is and covers, never the data's fingerprint or size (`disclosure`)."""
        return {
            "privacy": self.privacy,
            "dp": public_guarantee(self.privacy, self.dp),
            "dataset": {"name": self.dataset_name},
            "labels": list(self.labels),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class BatchOptions:
    """Micro-batching settings of one model (see `MicroBatcher`)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_us: int = DEFAULT_MAX_WAIT_US
    max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS
    adaptive: bool = True

    @classmethod
    def of(cls, settings: Settings) -> BatchOptions:
        """The options `settings` (`SECURE_MAAS_BATCH_*`) give; the queue holds four batches."""
        return cls(
            max_batch_size=settings.batch_max_size,
            max_wait_us=settings.batch_max_wait_us,
            max_queue_rows=max(DEFAULT_MAX_QUEUE_ROWS, 4 * settings.batch_max_size),
        )


@dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0
    hits: int = 0
    loads: int = 0
    refusals: int = 0
    evictions: int = 0


class CachedModel:
    """A loaded version and its micro-batcher (started on first use)."""

    def __init__(
        self,
        facts: VersionFacts,
        model: LoadedModel,
        options: BatchOptions,
        on_batch: Callable[[BatchInfo], None] | None,
    ) -> None:
        self.facts = facts
        self.model = model
        self.weight = facts.plaintext_bytes
        self._options = options
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._batcher: MicroBatcher | None = None
        self._closed = False

    @property
    def batcher(self) -> MicroBatcher:
        """The batcher of this version; `BatcherClosed` once the version left the cache."""
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"{self.facts.name}:{self.facts.version} was unloaded")
            if self._batcher is None:
                options = self._options
                self._batcher = MicroBatcher(
                    self.model.predict,
                    max_batch_size=options.max_batch_size,
                    max_wait_us=options.max_wait_us,
                    max_queue_rows=options.max_queue_rows,
                    adaptive=options.adaptive,
                    name=f"{self.facts.name}:{self.facts.version}",
                    specs=self.model.signature.inputs,
                    on_batch=self._on_batch,
                )
            return self._batcher

    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the model through the batcher; directly if the version was unloaded meanwhile
        (a request resolved before the unload still gets its answer)."""
        try:
            return self.batcher.submit(inputs)
        except BatcherClosed:
            return self.model.predict(dict(inputs))

    def close(self) -> None:
        """Stop taking requests; queued ones finish on the batcher's thread."""
        with self._lock:
            self._closed = True
            batcher = self._batcher
        if batcher is not None:
            batcher.close(wait=False)


@dataclass(frozen=True)
class _Snapshot:
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


class ModelCache:
    """Resolves references and serves loaded models; thread-safe, one instance per process.

    `keyring_loader` is called for every load, so rotated keys are seen. `batch` sets the
    micro-batching of every model, `batch_per_model` overrides it by model name. `decode`
    (default `codec.decode_model`) and `clock` are for tests.
    """

    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        keyring_loader: Callable[[], Keyring],
        max_bytes: int,
        on_event: OnEvent | None = None,
        *,
        batch: BatchOptions | None = None,
        batch_per_model: Mapping[str, BatchOptions] | None = None,
        on_batch: Callable[[BatchInfo], None] | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        retry_after: float = 30.0,
        decode: Decoder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._engine = engine
        self._factory = session_factory(engine)
        self._store = store
        self._keyring_loader = keyring_loader
        self._on_event = on_event
        self._batch = batch or BatchOptions()
        self._batch_per_model = dict(batch_per_model or {})
        self._on_batch = on_batch
        self._retry_after = retry_after
        self._decode = decode
        self._clock = clock
        self._watcher = Watcher(engine, [MODELS_SCOPE], interval=poll_interval, clock=clock)
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()
        self._entries: OrderedDict[Key, CachedModel] = OrderedDict()
        self._bytes = 0
        self._load_locks: dict[Key, threading.Lock] = {}
        self._failed: dict[Key, float] = {}
        self._served: dict[ModelRef, int] = {}
        self._fallbacks_reported: set[tuple[ModelRef, int]] = set()
        self._stats = CacheStats(max_bytes=max_bytes)
        self._headers = HeaderCache()
        self._mismatch_reported: set[tuple[Key, str]] = set()

    @classmethod
    def of(
        cls,
        settings: Settings,
        engine: Engine,
        on_event: OnEvent,
        *,
        on_batch: Callable[[BatchInfo], None] | None = None,
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
            decode=decode,
        )

    # -- resolution (no weights) -----------------------------------------------------------

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the registry copy if the `models` counter moved (looked at once per interval).

        Raises if the database cannot be read: requests must then fail closed.
        """
        return self._watcher.refresh(self._reload, force=force)

    def facts(self, ref: ModelRef | str) -> VersionFacts:
        """The version `ref` names, from the registry (`ModelNotFound` if none may be served)."""
        self.refresh()
        return self._snapshot.resolve(_as_ref(ref))

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

    # -- loaded models ---------------------------------------------------------------------

    def get(self, ref: ModelRef | str) -> CachedModel:
        """The loaded model `ref` names, loading it if needed.

        Raises `ModelNotFound` (no such, or disabled) and `ModelUnavailable` (artifact refused).
        """
        ref = _as_ref(ref)
        facts = self.facts(ref)
        try:
            entry = self._entry(facts)
        except ModelUnavailable:
            fallback = self._fallback(ref, facts)
            if fallback is None:
                raise
            return fallback
        if ref.version is None:
            with self._lock:
                self._served[ref] = facts.version
        return entry

    def ready(self, ref: ModelRef | str, *, load: bool = False) -> bool:
        """Whether `get(ref)` would answer without loading: its version is in memory (or, for a
        label or bare name whose version was refused, the fallback `get` serves). With `load`,
        loads it first. `ModelNotFound` for an unknown or disabled reference."""
        ref = _as_ref(ref)
        facts = self.facts(ref)
        key = (facts.name, facts.version)
        with self._lock:
            if key in self._entries:
                return True
            previous = self._served.get(ref) if ref.version is None else None
            if (
                previous is not None
                and key in self._failed
                and (ref.name, previous) in self._entries
            ):
                return True  # what `get` would serve: the fallback of a refused version
        if not load:
            return False
        try:
            self.get(ref)
        except ModelUnavailable:
            return False
        return True

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
        with self._lock:
            return list(self._entries)

    def stats(self) -> CacheStats:
        with self._lock:
            copy = CacheStats(**vars(self._stats))
            copy.entries, copy.bytes = len(self._entries), self._bytes
        return copy

    def close(self) -> None:
        """Unload everything (queued requests finish first, on their batchers' threads)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._bytes = 0
        for entry in entries:
            entry.close()

    # -- internals -------------------------------------------------------------------------

    def _entry(self, facts: VersionFacts) -> CachedModel:
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
                row = self._snapshot.rows.get(key)
            if row is None:
                raise ModelNotFound(f"model {facts.name!r} has no version {facts.version}")
            entry = self._load(facts, row)
            evicted = self._insert(key, entry)
        for old in evicted:
            self._emit(EVENT_EVICTED, _details(old.facts, reason="lru", bytes=old.weight))
        return entry

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
        self._emit(EVENT_LOADED, _details(facts, bytes=facts.plaintext_bytes, device=model.device))
        options = self._batch_per_model.get(facts.name, self._batch)
        with self._lock:
            self._stats.loads += 1
        return CachedModel(facts, model, options, self._on_batch)

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
        self._emit(EVENT_REFUSED, _details(facts, code=code, reason=reason))
        return ModelUnavailable(f"version {facts.version} of model {facts.name!r} is unavailable")

    def _insert(self, key: Key, entry: CachedModel) -> list[CachedModel]:
        evicted: list[CachedModel] = []
        with self._lock:
            current = self._snapshot.facts.get(key[0], {}).get(key[1])
            if current is None or not current.active:  # disabled while it was loading
                entry.close()
                raise ModelNotFound(f"version {key[1]} of model {key[0]!r} is disabled")
            self._entries[key] = entry
            self._bytes += entry.weight
            self._failed.pop(key, None)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.weight
                self._stats.evictions += 1
                evicted.append(old)
        for old in evicted:
            old.close()
        return evicted

    def _fallback(self, ref: ModelRef, refused: VersionFacts) -> CachedModel | None:
        if ref.version is not None:
            return None
        with self._lock:
            previous = self._served.get(ref)
        if previous is None or previous == refused.version:
            return None
        try:
            entry = self._entry(self._snapshot.resolve(ModelRef(ref.name, version=previous)))
        except (ModelNotFound, ModelUnavailable):
            return None
        report = (ref, refused.version)
        with self._lock:
            first = report not in self._fallbacks_reported
            self._fallbacks_reported.add(report)
        if first:
            self._emit(
                EVENT_FALLBACK,
                _details(entry.facts, ref=str(ref), refused_version=refused.version),
            )
        return entry

    def _reload(self, _counters: Mapping[str, int] | None = None) -> None:
        trusted = self._keyring_loader().trusted_publishers()
        snapshot = _read_snapshot(self._factory, self._store, trusted, self._headers)
        dropped: list[CachedModel] = []
        now = self._clock()
        with self._lock:
            self._snapshot = snapshot
            self._failed.clear()
            self._fallbacks_reported.clear()
            for key in snapshot.mismatched:
                if key not in self._entries:  # in memory, it was verified: it keeps serving
                    self._failed[key] = now
            for key in list(self._entries):
                facts = snapshot.facts.get(key[0], {}).get(key[1])
                if facts is None or not facts.active:
                    entry = self._entries.pop(key)
                    self._bytes -= entry.weight
                    self._stats.evictions += 1
                    dropped.append(entry)
        for entry in dropped:
            entry.close()
            self._emit(EVENT_EVICTED, _details(entry.facts, reason="disabled", bytes=entry.weight))
        for key, (code, reason) in snapshot.mismatched.items():
            report = (key, reason)
            with self._lock:
                if report in self._mismatch_reported:
                    continue
                self._stats.refusals += 1
            log.warning("refused %s:%d: %s (%s)", key[0], key[1], code, reason)
            self._emit(
                EVENT_REFUSED, {"model": key[0], "version": key[1], "code": code, "reason": reason}
            )
            with self._lock:
                self._mismatch_reported.add(report)

    def _emit(self, kind: str, details: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(kind, details)


def _as_ref(ref: ModelRef | str) -> ModelRef:
    return ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)


def _details(facts: VersionFacts, **extra: Any) -> dict[str, Any]:
    return {"model": facts.name, "version": facts.version, **extra}


def _read_snapshot(
    factory: SessionFactory,
    store: ArtifactStore,
    trusted: Mapping[str, PublicKey],
    headers: HeaderCache,
) -> _Snapshot:
    """Every model, version and label, in one read transaction; facts from signed headers."""
    snapshot = _Snapshot()
    with session_scope(factory) as session:
        for model in catalog.list_models(session):
            labels = catalog.labels_of(model)
            versions: dict[int, VersionFacts] = {}
            for row in model.versions:
                _ = row.model  # open_version reads row.model.name after the session closes
                key = (model.name, row.version)
                signed = _signed(store, trusted, headers, row, snapshot)
                try:
                    versions[row.version] = _facts(
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
    store: ArtifactStore,
    trusted: Mapping[str, PublicKey],
    headers: HeaderCache,
    row: ModelVersion,
    snapshot: _Snapshot,
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


def _facts(
    name: str, row: ModelVersion, labels: list[str], signed: SignedFacts | None
) -> VersionFacts:
    """A version's facts: the signed ones, or none to rely on when the header could not be
    authenticated (privacy `unverified`, no guarantee; the row's signature only parses
    requests for a version whose load will be refused or will check it)."""
    return VersionFacts(
        name=name,
        version=row.version,
        status=row.status,
        labels=tuple(labels),
        signature=ServingSignature.from_dict(
            dict(signed.signature) if signed is not None else row.signature
        ),
        privacy=signed.privacy if signed is not None else UNVERIFIED,
        dp=signed.dp if signed is not None else None,
        dataset_name=signed.dataset_name if signed is not None else None,
        plaintext_bytes=row.plaintext_bytes,
        created_at=row.created_at,
        created_by=row.created_by,
        verified=signed is not None,
        row_epsilon=None if signed is not None or row.dp_epsilon is None else row.dp_epsilon,
    )
