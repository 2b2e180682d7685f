"""The metrics of one process (no multiprocess folder): its own registry with the standard
`process_*` figures; and a multiprocess folder named too late is refused, not ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_maas.dataplane.loaded import CacheStats
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
