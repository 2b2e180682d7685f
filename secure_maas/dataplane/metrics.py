"""The figures a data plane produces: its model cache, its micro-batches, its model events.

They are declared here once, for both homes they have. The development server (one process,
no model process) registers them in its own registry (`serving.metrics`); under gunicorn the
model process (`host.ModelHost`) declares them unregistered and prometheus_client writes them
to the instance's multiprocess folder, which it inherited from the master with the library
already in multiprocess mode, and any worker's scrape sums them with the workers' files.

The cache's figures are pushed (`on_cache`) whenever the cache reports a change: gauges for
what it holds (entries and bytes summed over the live model processes, `livesum`, so a dead
one's leave the sum once the master marks it dead; the bound is one process's, `max`) and
counters for what it did (hits, loads, refusals, evictions; a restarted process's add to its
predecessor's, so they never go backwards). No label holds a model name: `/metrics` needs no
token (see `serving.metrics`).
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from secure_maas.dataplane.batcher import BatchInfo
from secure_maas.dataplane.loaded import CacheStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: The cache's counters: `CacheStats` field and help text.
CACHE_COUNTERS = (
    ("hits", "Model lookups answered from memory"),
    ("loads", "Model versions decrypted and loaded"),
    ("refusals", "Artifacts refused at load"),
    ("evictions", "Model versions unloaded"),
)


def model_events(registry: CollectorRegistry | None) -> Counter:
    """The counter of model cache events by kind (a worker's catalog reports some too)."""
    return Counter(
        "secure_maas_model_events",
        "Model cache events: model.loaded, model.refused, model.evicted, model.fallback",
        ["kind"],
        registry=registry,
    )


class ModelMetrics:
    """The cache, batch and model event figures of one data plane, in `registry` (None: in
    the multiprocess files alone, or nowhere without a multiprocess folder)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.events = model_events(registry)
        self.batch_rows = Histogram(
            "secure_maas_batch_rows",
            "Rows per model call of the micro-batcher",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "secure_maas_batch_requests",
            "Requests (or parts of split ones) merged into one model call",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_wait = Histogram(
            "secure_maas_batch_queue_wait_seconds",
            "How long the oldest request of a batch waited before its model call",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_duration = Histogram(
            "secure_maas_batch_duration_seconds",
            "Duration of one model call",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_failures = Counter(
            "secure_maas_batch_failures",
            "Merged model calls that raised (their members were then run alone)",
            registry=registry,
        )
        self.cache_entries = Gauge(
            "secure_maas_model_cache_entries",
            "Model versions held in memory",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cache_bytes = Gauge(
            "secure_maas_model_cache_bytes",
            "Plaintext bytes of models in memory",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cache_max_bytes = Gauge(
            "secure_maas_model_cache_max_bytes",
            "Bound of the model cache (of one model process)",
            registry=registry,
            multiprocess_mode="max",
        )
        self.cache_counters = {
            name: Counter(f"secure_maas_model_cache_{name}", text, registry=registry)
            for name, text in CACHE_COUNTERS
        }
        self._seen = CacheStats()
        self._lock = threading.Lock()

    def on_batch(self, info: BatchInfo) -> None:
        """The micro-batcher's hook: one call per model call."""
        self.batch_rows.observe(info.rows)
        self.batch_requests.observe(info.requests)
        self.batch_wait.observe(info.queue_wait_s)
        self.batch_duration.observe(info.duration_s)
        if not info.ok:
            self.batch_failures.inc()

    def on_event(self, kind: str) -> None:
        """Count one model cache event (`model.loaded`, ...)."""
        self.events.labels(kind).inc()

    def on_cache(self, stats: CacheStats) -> None:
        """The cache's figures now: the gauges take them, the counters add what they grew by
        since the last call (the cache's counts never go down)."""
        with self._lock:
            self.cache_entries.set(stats.entries)
            self.cache_bytes.set(stats.bytes)
            self.cache_max_bytes.set(stats.max_bytes)
            for name, counter in self.cache_counters.items():
                grown = getattr(stats, name) - getattr(self._seen, name)
                if grown > 0:
                    counter.inc(grown)
                    setattr(self._seen, name, getattr(stats, name))
