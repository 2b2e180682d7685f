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
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt

from secure_maas.dataplane.cache import ModelCache
from secure_maas.dataplane.loaded import VersionState
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
        if rows > entry.batcher.max_queue_rows:
            # Larger than the batcher's whole queue: it could never be queued, and is a full
            # batch by itself; the body limit bounds its size.
            outputs = entry.model.predict(dict(inputs))
        else:
            outputs = entry.predict(inputs)
        return Served({name: value for name, value in outputs.items()}, version)

    def ready(self, ref: ModelRef, *, load: bool = False) -> bool:
        return self.cache.ready(ref, load=load)

    def state(self, ref: ModelRef, *, load: bool = False) -> VersionState:
        """The state of the version `ref` names; with `load`, starts loading it in the
        background if it is not in memory (`ModelCache.state`)."""
        return self.cache.state(ref, load=load)

    def preload(self, refs: Iterable[str]) -> dict[str, str | None]:
        return self.cache.preload(refs)

    def close(self) -> None:
        self.cache.close()
