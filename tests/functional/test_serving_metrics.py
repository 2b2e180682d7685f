"""One metrics view per instance: `secure-maas serve --workers 2` (gunicorn) answers `/metrics`
with the sums of every worker's counters and histograms, whichever worker answers, so a counter
read by successive scrapes never goes backwards; `process_*` of every process of the instance
(labelled `pid` and `process`); the model process's micro-batch and cache figures, whose live
gauges leave the sums when it dies and is restarted; no model name in any of it. The
multiprocess folder is the instance's own (0700, fresh at start, removed at stop); one named in
the environment the server inherits is neither used nor touched. The development server keeps
one registry of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from secure_maas.cli.serve_cmd import metrics_folder
from tests.functional.serving_support import (
    MODEL_PROCESS,
    Instance,
    Served,
    call,
    child_processes,
    comm,
    model_process,
    prepared,
    server,
)

#: Requests sent before the scrapes, on fresh connections from several threads at once.
N = 48
HEALTHZ = 'secure_maas_http_requests_total{endpoint="ops.healthz",method="GET",status="200"}'
SCRAPES = 'secure_maas_http_requests_total{endpoint="ops.metrics",method="GET",status="200"}'
MODELS = ("digits", "digits_loose", "multi", "listed", "secret")
X = np.random.default_rng(31).normal(size=(2, 4)).astype(np.float32)


@pytest.fixture(scope="module", params=["sqlite"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "metrics")


@pytest.fixture(scope="module")
def decoy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder an inherited `PROMETHEUS_MULTIPROC_DIR` names, holding another process's
    counter file: the server must neither read nor remove it."""
    folder = tmp_path_factory.mktemp("inherited-metrics")
    (folder / "counter_1.db").write_bytes(b"not ours")
    return folder


@pytest.fixture(scope="module")
def served(instance: Instance, decoy: Path) -> Iterator[Served]:
    args = ("--workers", "2", "--threads", "2")
    with server(instance, *args, env={"PROMETHEUS_MULTIPROC_DIR": str(decoy)}) as running:
        yield running


def scrape(url: str) -> str:
    status, headers, body = call(url, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return body.decode()


def value(text: str, series: str) -> float:
    """The value of one series (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def workers(served: Served) -> list[int]:
    return [pid for pid in child_processes(served.process.pid) if comm(pid) != MODEL_PROCESS]


def folder_of(served: Served) -> Path:
    """The multiprocess folder of the workers: where the files they map lie (their
    `/proc/PID/environ` shows the environment they inherited, not the one `serve` set)."""
    found = set()
    for pid in workers(served):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            path = Path(line.split(maxsplit=5)[-1])
            if path.suffix == ".db" and path.name.startswith(("counter_", "histogram_")):
                found.add(path.parent)
    assert len(found) == 1, found
    return found.pop()


def test_every_scrape_reads_every_workers_requests(served: Served, instance: Instance) -> None:
    url = served.url
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: call(url, "GET", "/healthz")[0], range(N)))
    assert statuses == [200] * N
    # Both workers answered some: each has written its own counter file.
    folder = folder_of(served)
    writers = {int(f.stem.rsplit("_", 1)[1]) for f in folder.glob("counter_*.db")}
    assert set(workers(served)) <= writers, (workers(served), writers)
    for scraped in range(12):  # sequential, each on its own connection
        text = scrape(url)
        assert value(text, HEALTHZ) == N
        count = 'secure_maas_http_request_duration_seconds_count{endpoint="ops.healthz"}'
        assert value(text, count) == N
        # A scrape is counted once answered: the next one reads every earlier one.
        assert value(text, SCRAPES) == scraped
    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(lambda _: scrape(url), range(12)))
    assert all(value(text, HEALTHZ) == N for text in texts)


def test_process_metrics_of_every_process_of_the_instance(served: Served) -> None:
    text = scrape(served.url)
    master = served.process.pid
    model = model_process(master)
    assert model is not None
    want = {(master, "master"), (model, "model")} | {(pid, "worker") for pid in workers(served)}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        found = {
            (int(pid), role)
            for pid, role in re.findall(rf'^{name}{{pid="(\d+)",process="(\w+)"}} ', text, re.M)
        }
        assert found == want, (name, found)
    assert "# TYPE process_cpu_seconds_total counter" in text


def test_no_model_name_in_the_metrics(served: Served, instance: Instance) -> None:
    body = json.dumps({"instances": X.tolist()}).encode()
    alice = instance.headers("alice", **{"Content-Type": "application/json"})
    assert predict(served, instance) == 200
    assert call(served.url, "POST", "/v1/models/secret:predict", headers=alice, body=body)[0] == 404
    text = scrape(served.url)
    assert 'secure_maas_decisions_total{action="model:predict",decision="allow"}' in text
    for name in (*MODELS, "alice"):
        assert name not in text, name


def predict(served: Served, instance: Instance) -> int:
    """One prediction of `X` (2 rows) by digits, on a connection of its own: the status."""
    body = json.dumps({"instances": X.tolist()}).encode()
    alice = instance.headers("alice", **{"Content-Type": "application/json"})
    return call(served.url, "POST", "/v1/models/digits:predict", headers=alice, body=body)[0]


def until(condition: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "not within the limit"
        time.sleep(0.1)


def cache(text: str, name: str) -> float:
    return value(text, f"secure_maas_model_cache_{name}")


def test_batch_and_cache_figures_are_the_model_processes(
    served: Served, instance: Instance
) -> None:
    before = scrape(served.url)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: predict(served, instance), range(N)))
    assert statuses == [200] * N
    rows = "secure_maas_batch_rows_sum"
    # A batch is counted once its results are handed back: the last ones may come just after.
    until(lambda: value(scrape(served.url), rows) - value(before, rows) == 2 * N)
    text = scrape(served.url)
    assert value(text, rows) - value(before, rows) == 2 * N
    calls = value(text, "secure_maas_batch_rows_count") - value(
        before, "secure_maas_batch_rows_count"
    )
    requests = "secure_maas_batch_requests_sum"
    assert 1 <= calls <= N and value(text, requests) - value(before, requests) == N
    assert value(text, "secure_maas_batch_duration_seconds_count") == value(
        text, "secure_maas_batch_rows_count"
    )
    # Only digits was ever predicted here: one version, held by the one model process.
    assert cache(text, "entries") == 1
    assert 0 < cache(text, "bytes") <= cache(text, "max_bytes")
    assert cache(text, "loads_total") == 1 and cache(text, "hits_total") >= N
    assert 'secure_maas_model_events_total{kind="model.loaded"} 1.0' in text
    # They are the model process's files, beside the workers'.
    model = model_process(served.process.pid)
    folder = folder_of(served)
    assert (folder / f"histogram_{model}.db").exists()
    assert (folder / f"gauge_livesum_{model}.db").exists()


def test_a_restarted_model_process_leaves_its_gauges(served: Served, instance: Instance) -> None:
    master = served.process.pid
    first = model_process(master)
    assert first is not None
    folder = folder_of(served)
    assert predict(served, instance) == 200
    before = scrape(served.url)
    assert cache(before, "entries") == 1
    os.kill(first, signal.SIGKILL)
    until(lambda: model_process(master) not in (None, first), limit=120)
    # Marked dead by the master before it started the new one.
    assert not (folder / f"gauge_livesum_{first}.db").exists()
    text = scrape(served.url)
    assert cache(text, "entries") == 0 and cache(text, "bytes") == 0
    until(lambda: predict(served, instance) == 200, limit=120)
    text = scrape(served.url)
    # The new process holds digits once more; the dead one's holding is not in the sum.
    assert cache(text, "entries") == 1 and cache(text, "bytes") == cache(before, "bytes")
    assert cache(text, "max_bytes") == cache(before, "max_bytes")
    # Counters keep the dead process's counts: they never go backwards.
    assert cache(text, "loads_total") == cache(before, "loads_total") + 1
    rows = "secure_maas_batch_rows_sum"
    until(lambda: value(scrape(served.url), rows) == value(before, rows) + 2)


def test_the_multiprocess_folder_is_the_instances_own(
    instance: Instance, served: Served, decoy: Path
) -> None:
    folder = folder_of(served)
    assert folder != decoy and folder.parent != decoy
    mode = folder.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o700 and mode.st_uid == os.getuid()
    # Files of the workers, of the model process, and of those that exited (their counters).
    pids = {int(f.stem.rsplit("_", 1)[1]) for f in folder.iterdir()}
    live = set(workers(served)) | {model_process(served.process.pid)}
    assert all(pid in live or not Path(f"/proc/{pid}").exists() for pid in pids), (pids, live)
    served.stop()
    assert served.process.wait(timeout=60) == 0
    assert not folder.exists()
    assert [f.name for f in decoy.iterdir()] == ["counter_1.db"]


def test_development_server_keeps_its_own_registry(instance: Instance, decoy: Path) -> None:
    with server(instance, env={"PROMETHEUS_MULTIPROC_DIR": str(decoy)}) as dev:
        for _ in range(3):
            assert call(dev.url, "GET", "/healthz")[0] == 200
        text = scrape(dev.url)
    assert value(text, HEALTHZ) == 3
    assert re.search(r"^process_cpu_seconds_total [0-9.e+]+$", text, re.M)
    assert "secure_maas_model_cache_max_bytes" in text
    assert [f.name for f in decoy.iterdir()] == ["counter_1.db"]


def test_metrics_folder_is_new_private_and_named_for_the_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "inherited"))
    monkeypatch.setenv("prometheus_multiproc_dir", str(tmp_path / "inherited"))
    first, second = metrics_folder(), metrics_folder()
    assert first != second and first.parent == tmp_path
    for folder in (first, second):
        assert list(folder.iterdir()) == []
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(second)
    assert "prometheus_multiproc_dir" not in os.environ
