"""The metrics of one process (no multiprocess folder): its own registry with the standard
`process_*` figures; a multiprocess folder named too late is refused, not ignored; the data
plane's cache figures follow the cache's reports (gauges take them, counters add the growth)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from secure_maas.dataplane.loaded import CacheStats
from secure_maas.dataplane.metrics import ModelMetrics
from secure_maas.serving.metrics import Metrics, MetricsNotShared


def test_one_process_has_its_registry_and_process_figures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    metrics.watch_cache(lambda: CacheStats(max_bytes=1024))
    metrics.observe_request("ops.healthz", "GET", 200, 0.01)
    body, content_type = metrics.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert (
        'secure_maas_http_requests_total{endpoint="ops.healthz",method="GET",status="200"} 1.0'
        in text
    )
    assert "\nprocess_cpu_seconds_total " in text
    assert "\nsecure_maas_model_cache_max_bytes 1024.0" in text


def test_a_folder_named_after_prometheus_client_was_imported_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its counters would be this process's alone, and scrapes would flap between workers."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(MetricsNotShared, match="imported before"):
        Metrics()


def test_cache_reports_set_the_gauges_and_grow_the_counters() -> None:
    registry = CollectorRegistry()
    metrics = ModelMetrics(registry)

    def value(name: str) -> float | None:
        return registry.get_sample_value(f"secure_maas_model_cache_{name}")

    metrics.on_cache(CacheStats(entries=1, bytes=500, max_bytes=1024, hits=3, loads=1))
    metrics.on_cache(CacheStats(entries=2, bytes=900, max_bytes=1024, hits=7, loads=2))
    assert (value("entries"), value("bytes"), value("max_bytes")) == (2, 900, 1024)
    assert (value("hits_total"), value("loads_total"), value("evictions_total")) == (7, 2, 0)
    # A report is a snapshot: one that repeats or lags another adds nothing.
    later = CacheStats(entries=1, bytes=400, max_bytes=1024, hits=7, loads=2, evictions=1)
    metrics.on_cache(later)
    metrics.on_cache(dataclasses.replace(later, hits=5))
    assert (value("entries"), value("bytes")) == (1, 400)
    assert (value("hits_total"), value("loads_total"), value("evictions_total")) == (7, 2, 1)
    metrics.on_event("model.loaded")
    assert (
        registry.get_sample_value("secure_maas_model_events_total", {"kind": "model.loaded"}) == 1
    )
