"""Prometheus metrics of the instance: one view, whichever process answers the scrape.

`/metrics` answers without a token, as scrapers expect, so no label ever holds a model name, a
subject or a raw path: those would tell anyone who can reach the port which models exist
(invariant 1). Labels are the Flask endpoint (`tfserving.predict`, never the URL), the method
and status, the action and decision; batch and cache figures are per process, not per model.
Per-model and per-subject figures are in the audit log, for those allowed to read it.

Under gunicorn (`secure-maas serve --workers N`) each worker writes its counters and histograms
to prometheus_client's multiprocess files, in the instance's private folder that `serve` names
in `PROMETHEUS_MULTIPROC_DIR` before anything imports prometheus_client (the library reads it
once, at import). A scrape, answered by any worker, sums every worker's files, those of workers
that have exited too, so a counter never goes backwards. The `process_*` figures are those of
every process of the instance (the master, each worker, the model processes), read from
`/proc` at scrape time and labelled `pid` and `process` (`master`, `worker`, `model`), as the
library labels per-process gauges. The model cache's figures are read from the answering
process's cache, which under gunicorn holds no model: they are left out there. The development
server (one process) keeps one registry, with the standard unlabelled `process_*` figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from secure_maas.dataplane.batcher import BatchInfo
from secure_maas.dataplane.loaded import CacheStats
from secure_maas.dataplane.process import NAME as MODEL_PROCESS_NAME

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: prometheus_client's variable naming the folder of its multiprocess files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsNotShared(RuntimeError):
    """`PROMETHEUS_MULTIPROC_DIR` is set, but prometheus_client was imported before it was."""


def shared_folder() -> Path | None:
    """The instance's multiprocess folder, set by `secure-maas serve` under gunicorn; None in
    one process (the development server, tests)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


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


class _InstanceProcesses(Collector):
    """`process_*` of every process of the instance, labelled `pid` and `process`: the
    gunicorn master (the parent of the worker that built this), its workers and its model
    processes. Once the master is gone (this worker outlived it) only this process is read."""

    def __init__(self) -> None:
        self._master = os.getppid()
        self._pid = 0
        self._reader = ProcessCollector(pid=lambda: self._pid, registry=None)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid, role in self._processes():
            self._pid = pid
            for family in self._reader.collect():
                kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
                into = merged.setdefault(
                    family.name, kind(family.name, family.documentation, labels=["pid", "process"])
                )
                for sample in family.samples:
                    into.add_metric([str(pid), role], sample.value)  # type: ignore[attr-defined]
        yield from merged.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def _processes(self) -> list[tuple[int, str]]:
        if os.getppid() != self._master:
            return [(os.getpid(), "worker")]
        found = [(self._master, "master")]
        for pid in sorted(_children(self._master)):
            found.append((pid, "model" if _comm(pid) == MODEL_PROCESS_NAME else "worker"))
        return found


def _children(pid: int) -> set[int]:
    """The child processes of `pid` (Linux's `children` files; a scan of /proc without them)."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        return {
            int(child)
            for task in tasks.iterdir()
            for child in (task / "children").read_text().split()
        }
    except OSError:
        pass
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Metrics:
    """The counters and histograms the app and the data plane feed.

    With `PROMETHEUS_MULTIPROC_DIR` set (under gunicorn) they are written to that folder and
    `render` sums every process's files; else they live in this object's registry."""

    def __init__(self) -> None:
        self.shared = shared_folder()
        if self.shared is not None and values.ValueClass is values.MutexValue:
            raise MetricsNotShared(
                f"{MULTIPROC_ENV} is set but prometheus_client was imported before it was: "
                "its counters would be this process's alone"
            )
        self.registry = CollectorRegistry()
        registry = self.registry
        self._processes: Collector = (
            ProcessCollector(registry=registry) if self.shared is None else _InstanceProcesses()
        )
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
        """Report the cache's figures (read at each scrape). Not with a multiprocess folder:
        there the cache is a worker's, which holds no model, and a scrape would read the
        figures of whichever worker answered."""
        if self.shared is None:
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
        """The exposition text and its content type: of this registry in one process, of every
        process's files (summed) and every process's `process_*` with a multiprocess folder."""
        if self.shared is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.shared))  # type: ignore[no-untyped-call]
        registry.register(self._processes)
        return generate_latest(registry), CONTENT_TYPE_LATEST
