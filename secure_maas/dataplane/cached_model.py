"""One version held in memory, with the micro-batcher its requests go through.

The batcher starts on the first request, so a model loaded by `preload` or a readiness probe
costs no thread until it is used. Once the version leaves the cache (evicted, disabled, or the
cache closed) the batcher takes no new request; a request that resolved the version before
that still gets its answer, computed directly. Every model call is counted in the data
plane's `Statistics` when it has one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from secure_maas.config import Settings
from secure_maas.dataplane.batcher import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_ROWS,
    DEFAULT_MAX_WAIT_US,
    Array,
    BatcherClosed,
    BatchInfo,
    MicroBatcher,
)
from secure_maas.dataplane.facts import VersionFacts
from secure_maas.dataplane.statistics import Statistics

if TYPE_CHECKING:
    from secure_maas.registry.codec import ServedModel


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


class CachedModel:
    """A loaded version and its micro-batcher (started on first use)."""

    def __init__(
        self,
        facts: VersionFacts,
        model: ServedModel,
        options: BatchOptions,
        on_batch: Callable[[BatchInfo], None] | None,
        statistics: Statistics | None = None,
    ) -> None:
        self.facts = facts
        self.model = model
        self.weight = facts.plaintext_bytes
        self._options = options
        self._on_batch = on_batch
        self._statistics = statistics
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
                    on_batch=self._batched,
                )
            return self._batcher

    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the model through the batcher; directly if the version was unloaded meanwhile
        (a request resolved before the unload still gets its answer)."""
        try:
            return self.batcher.submit(inputs)
        except BatcherClosed:
            return self.run_alone(inputs)

    def run_alone(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the model on `inputs` directly, in one call of its own (counted as one)."""
        started = time.perf_counter_ns()
        outputs = dict(self.model.predict(dict(inputs)))
        if self._statistics is not None:
            rows = int(next(iter(inputs.values())).shape[0]) if inputs else 0
            ns = time.perf_counter_ns() - started
            self._statistics.execution(self._key, rows=rows, requests=1, ns=ns, queue_ns=0)
        return outputs

    @property
    def _key(self) -> tuple[str, int]:
        return (self.facts.name, self.facts.version)

    def _batched(self, info: BatchInfo) -> None:
        """Count a call of the batcher, then hand it to the metrics hook."""
        if self._statistics is not None:
            self._statistics.execution(
                self._key,
                rows=info.rows,
                requests=info.requests,
                ns=int(info.duration_s * 1e9),
                queue_ns=int(info.queue_wait_total_s * 1e9),
            )
        if self._on_batch is not None:
            self._on_batch(info)

    def close(self) -> None:
        """Stop taking requests; queued ones finish on the batcher's thread."""
        with self._lock:
            self._closed = True
            batcher = self._batcher
        if batcher is not None:
            batcher.close(wait=False)
