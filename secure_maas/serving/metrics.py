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
library labels per-process gauges. The model cache, micro-batch and model event figures are
the data plane's (`dataplane.metrics`): under gunicorn the model process writes them to the
same folder (the master marks a model process that exits dead, as it does a worker, so its
live gauges leave the sums); a worker's cache holds no model and reports none. The development
server (one process) keeps one registry, the cache's figures read at each scrape, with the
standard unlabelled `process_*` figures.
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
from secure_maas.dataplane.metrics import LATENCY_BUCKETS, ModelMetrics, model_events
from secure_maas.dataplane.process import NAME as MODEL_PROCESS_NAME

#: prometheus_client's variable naming the folder of its multiprocess files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsNotShared(RuntimeError):
    """`PROMETHEUS_MULTIPROC_DIR` is set, but prometheus_client was imported before it was."""


def shared_folder() -> Path | None:
    """The instance's multiprocess folder, set by `secure-maas serve` under gunicorn; None in
    one process (the development server, tests)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


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
        # The data plane's figures: here in one process, the model process's under gunicorn
        # (a worker's cache runs no model; its catalog still reports row refusals).
        self.model: ModelMetrics | None = ModelMetrics(registry) if self.shared is None else None
        self.model_events = self.model.events if self.model is not None else model_events(None)
        self._cache_stats: Callable[[], CacheStats] | None = None

    def watch_cache(self, stats: Callable[[], CacheStats]) -> None:
        """Report the cache's figures, read at each scrape. Not with a multiprocess folder:
        there the cache is a worker's, which holds no model; the model process reports its own
        (`dataplane.metrics`)."""
        if self.model is not None:
            self._cache_stats = stats

    def on_batch(self, info: BatchInfo) -> None:
        """The micro-batcher's hook: one call per model call (a worker under gunicorn makes
        none: the model process counts them)."""
        if self.model is not None:
            self.model.on_batch(info)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type: of this registry in one process, of every
        process's files (summed) and every process's `process_*` with a multiprocess folder."""
        if self.shared is None:
            if self.model is not None and self._cache_stats is not None:
                self.model.on_cache(self._cache_stats())
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.shared))  # type: ignore[no-untyped-call]
        registry.register(self._processes)
        return generate_latest(registry), CONTENT_TYPE_LATEST
