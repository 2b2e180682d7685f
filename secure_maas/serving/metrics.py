"""Prometheus metrics of one serving process, in a registry of its own (one per app).

`/metrics` answers without a token, as scrapers expect, so no label ever holds a model name, a
subject or a raw path: those would tell anyone who can reach the port which models exist
(invariant 1). Labels are the Flask endpoint (`tfserving.predict`, never the URL), the method
and status, the action and decision; batch and cache figures are per process, not per model.
Per-model and per-subject figures are in the audit log, for those allowed to read it.

With several gunicorn workers each has its own registry, and a scrape reads the worker that
answers it; scrape each worker, or sum over instances, accordingly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from secure_maas.dataplane.batcher import BatchInfo
from secure_maas.dataplane.loaded import CacheStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _CacheCollector(Collector):
    """Reads the model cache's counters at scrape time."""

    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield GaugeMetricFamily(
            "secure_maas_model_cache_entries", "Model versions held in memory", stats.entries
        )
        yield GaugeMetricFamily(
            "secure_maas_model_cache_bytes", "Plaintext bytes of models in memory", stats.bytes
        )
        yield GaugeMetricFamily(
            "secure_maas_model_cache_max_bytes", "Bound of the model cache", stats.max_bytes
        )
        for name, value, text in (
            ("hits", stats.hits, "Model lookups answered from memory"),
            ("loads", stats.loads, "Model versions decrypted and loaded"),
            ("refusals", stats.refusals, "Artifacts refused at load"),
            ("evictions", stats.evictions, "Model versions unloaded"),
        ):
            yield CounterMetricFamily(f"secure_maas_model_cache_{name}", text, value)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    """The counters and histograms the app and the data plane feed."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "secure_maas_http_requests",
            "HTTP requests answered, by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "secure_maas_http_request_duration_seconds",
            "Time from the request's arrival to its response, audit write included",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "secure_maas_decisions",
            "Guarded requests by action and audited decision (allow, deny, error)",
            ["action", "decision"],
            registry=registry,
        )
        self.audit_failures = Counter(
            "secure_maas_audit_failures",
            "Responses replaced by 503 because their audit event could not be written",
            registry=registry,
        )
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
        self.model_events = Counter(
            "secure_maas_model_events",
            "Model cache events: model.loaded, model.refused, model.evicted, model.fallback",
            ["kind"],
            registry=registry,
        )

    def watch_cache(self, stats: Callable[[], CacheStats]) -> None:
        """Report the cache's figures (read at each scrape)."""
        self.registry.register(_CacheCollector(stats))

    def on_batch(self, info: BatchInfo) -> None:
        """The micro-batcher's hook: one call per model call."""
        self.batch_rows.observe(info.rows)
        self.batch_requests.observe(info.requests)
        self.batch_wait.observe(info.queue_wait_s)
        self.batch_duration.observe(info.duration_s)
        if not info.ok:
            self.batch_failures.inc()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
