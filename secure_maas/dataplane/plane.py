"""What serves predictions: the `DataPlane` interface and its in-process implementation.

The HTTP side decides (token, rules, quota, audit); a data plane only runs models. Two
implementations: `LocalDataPlane` runs them in this process (the development server, tests,
and the model process itself), `RemoteDataPlane` (`dataplane.client`) asks the instance's model
process. Both answer `predict` the same way, including the one case where a decision has to be
made again: a label or bare name whose newest version was refused keeps serving the version it
served before (`ModelCache` semantics), and that version has not been decided on. So `predict`
takes the versions the caller was allowed and, when the model would be served by another,
answers `Fallback(version)` without running it; the caller decides on that version and asks
again with it allowed.

A data plane also counts what it runs (`stats`: Triton's statistics per version, for every
worker of the instance) and loads or unloads a version when an admin asks (`load`, `unload`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt

from secure_maas.dataplane.cache import ModelCache
from secure_maas.dataplane.loaded import ModelUnavailable, VersionState
from secure_maas.dataplane.statistics import Key, VersionStatistics
from secure_maas.registry.catalog import ModelNotFound, ModelRef

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Served:
    """A model call's outputs and the version that computed them."""

    outputs: dict[str, Array]
    version: int


@dataclass(frozen=True)
class Fallback:
    """The reference is served by `version`, which the caller has not allowed: decide on it."""

    version: int


class DataPlane(Protocol):
    """Where models are loaded and run (see the module docstring)."""

    def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, Array],
        allowed: Collection[int],
        request_id: str | None = None,
    ) -> Served | Fallback: ...

    def ready(self, ref: ModelRef, *, load: bool = False) -> bool: ...

    def state(self, ref: ModelRef, *, load: bool = False) -> VersionState: ...

    def load(self, ref: ModelRef) -> VersionState: ...

    def unload(self, ref: ModelRef) -> VersionState: ...

    def stats(self, keys: Iterable[Key] | None = None) -> list[VersionStatistics]: ...

    def preload(self, refs: Iterable[str]) -> dict[str, str | None]: ...

    def close(self) -> None: ...


class LocalDataPlane:
    """Models loaded and run in this process, by its `ModelCache`."""

    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache

    def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, Array],
        allowed: Collection[int],
        request_id: str | None = None,
    ) -> Served | Fallback:
        """Run `ref`'s model on `inputs` unless it is served by a version not in `allowed`.

        Raises `ModelNotFound`, `ModelUnavailable`, `BatchRefused`, `QueueFull` as the cache and
        the batcher do. `request_id` is for the caller's model events (set by the caller in
        `dataplane.loads.current_request_id` here; the model process sets it from the frame).
        """
        try:
            entry = self.cache.get(ref)
        except ModelNotFound:
            # The caller resolved `ref` from its own copy of the registry, which may have seen
            # a new version before this one (each refreshes every 0.25 s): look again, once
            # (after a refresh, ours or the one another thread was doing meanwhile).
            self.cache.refresh(force=True)
            entry = self.cache.get(ref)
        version = entry.facts.version
        if version not in allowed:
            return Fallback(version)
        rows = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        key, started = (entry.facts.name, version), time.perf_counter_ns()
        try:
            if rows > entry.batcher.max_queue_rows:
                # Larger than the batcher's whole queue: it could never be queued, and is a
                # full batch by itself; the body limit bounds its size.
                outputs = entry.run_alone(inputs)
            else:
                outputs = entry.predict(inputs)
        except Exception:
            self._count(key, ok=False, started=started, rows=rows)
            raise
        self._count(key, ok=True, started=started, rows=rows)
        return Served({name: value for name, value in outputs.items()}, version)

    def _count(self, key: Key, *, ok: bool, started: int, rows: int) -> None:
        ns = time.perf_counter_ns() - started
        self.cache.statistics.request(key, ok=ok, ns=ns, rows=rows)

    def ready(self, ref: ModelRef, *, load: bool = False) -> bool:
        return self.cache.ready(ref, load=load)

    def state(self, ref: ModelRef, *, load: bool = False) -> VersionState:
        """The state of the version `ref` names; with `load`, starts loading it in the
        background if it is not in memory (`ModelCache.state`)."""
        return self.cache.state(ref, load=load)

    def load(self, ref: ModelRef) -> VersionState:
        """Load the version `ref` names now (returns once it is in memory, or refused: END
        with `refused`); `ModelNotFound` for an unknown or disabled one."""
        with contextlib.suppress(ModelUnavailable):  # refused: its own event; the state: END
            self.cache.get(ref)
        return self.cache.state(ref)

    def unload(self, ref: ModelRef) -> VersionState:
        """Take the version `ref` names out of memory (`ModelCache.unload`)."""
        return self.cache.unload(ref)

    def stats(self, keys: Iterable[Key] | None = None) -> list[VersionStatistics]:
        """What each version (of `keys`, or every one) ran here since the process started."""
        return self.cache.version_statistics(keys)

    def preload(self, refs: Iterable[str]) -> dict[str, str | None]:
        return self.cache.preload(refs)

    def close(self) -> None:
        self.cache.close()
