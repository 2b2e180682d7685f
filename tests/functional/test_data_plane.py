"""One data plane per instance: the model process and the workers' side of it.

In-process (a `DataPlaneServer` on a Unix socket, called by `RemoteDataPlane`): predictions
equal the Keras model's, a version the caller was not allowed is named rather than run, the
model process's refusals reach the worker as the same exceptions, its `model:load` events
carry the request's id, audit events from many threads all land in the one chain, and an
unreachable or silent model process fails closed (503, audited by the worker's local writer;
an audit write that was handed over but never confirmed is a failure, not a retry).

Through gunicorn (`secure-maas serve --workers 2`): one model process holds the models, the
workers never map TensorFlow, and a model process killed with SIGKILL is replaced while every
answer in between is a 200 or an audited 503.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from secure_maas.actions import Action
from secure_maas.audit import AuditEvent, AuditUnavailable, KeyringAuditKeys, verify_database
from secure_maas.client import Client
from secure_maas.dataplane.batcher import BatchRefused
from secure_maas.dataplane.client import InstanceAudit, NotDelivered, RemoteDataPlane
from secure_maas.dataplane.devices import route
from secure_maas.dataplane.plane import Fallback, Served
from secure_maas.dataplane.server import DataPlaneServer
from secure_maas.dataplane.wire import receive
from secure_maas.db import DatabaseUnavailable
from secure_maas.keys import Keyring
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.registry.models import Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore
from secure_maas.serving.app import close_app, create_app
from tests.functional.serving_support import (
    MODEL_PROCESS,
    Instance,
    by_request,
    child_processes,
    comm,
    events,
    maps_tensorflow,
    model_process,
    models,
    prepare,
    server,
)

X = np.random.default_rng(31).normal(size=(5, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    tmp = tmp_path_factory.mktemp("plane")
    made = prepare(tmp, f"sqlite:///{tmp / 'var' / 'secure_maas.db'}")
    yield made
    made.engine.dispose()


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="smaas-test-"))  # short: a socket path has 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plane(instance: Instance, folder: Path) -> Iterator[DataPlaneServer]:
    served = DataPlaneServer.build(instance.settings, folder / "plane.sock")
    served.listen()
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.close()
    thread.join(30)


def intact(instance: Instance) -> None:
    keys = KeyringAuditKeys(Keyring.open(instance.settings.keys_dir))
    report = verify_database(instance.engine, keys)
    assert report.intact, report.problem


def test_remote_predictions_equal_the_model_and_refusals_cross(plane: DataPlaneServer) -> None:
    client = RemoteDataPlane(plane.path)
    try:
        served = client.predict(ModelRef("digits"), {"x": X}, {2})
        assert isinstance(served, Served) and served.version == 2
        want = models().predict("two", X)["probs"]
        np.testing.assert_allclose(served.outputs["probs"], want, rtol=0, atol=1e-6)
        # Served by a version the caller was not allowed: named, not run.
        assert client.predict(ModelRef("digits"), {"x": X}, {1}) == Fallback(2)
        with pytest.raises(ModelNotFound, match="no model named 'nope'"):
            client.predict(ModelRef("nope"), {"x": X}, {1})
        with pytest.raises(BatchRefused):
            client.predict(ModelRef("digits"), {"x": np.zeros((2, 3), np.float32)}, {2})
        assert client.ready(ModelRef("digits", version=2))
        assert not client.ready(ModelRef("multi"))
        assert client.preload(["multi", "nope"]) == {"multi": None, "nope": "no model named 'nope'"}
        assert client.ready(ModelRef("multi"))
        assert client.ping()["pid"] == os.getpid()
    finally:
        client.close()


def test_a_version_the_caller_saw_first_is_looked_for_again(
    instance: Instance, plane: DataPlaneServer
) -> None:
    """A worker's copy of the registry may show a new version before the model process's does
    (each polls every 0.25 s): the model process looks again rather than answering 404."""
    client = RemoteDataPlane(plane.path)
    try:
        client.predict(ModelRef("digits"), {"x": X}, {2})  # the model process's copy is fresh
        built = models()
        publish(
            instance.engine, ArtifactStore(instance.settings.store_dir),
            Keyring.open(instance.settings.keys_dir), name="fresh", payload=built.payloads["one"],
            signature=built.signatures["one"], provenance=Provenance(Privacy.IMPORTED),
            created_by="tests",
        )  # fmt: skip
        served = client.predict(ModelRef("fresh", version=1), {"x": X}, {1})
        assert isinstance(served, Served) and served.version == 1
        want = built.predict("one", X)["probs"]
        np.testing.assert_allclose(served.outputs["probs"], want, rtol=0, atol=1e-6)
        with pytest.raises(ModelNotFound):  # still a 404 for what does not exist
            client.predict(ModelRef("fresh", version=2), {"x": X}, {2})
    finally:
        client.close()


def test_state_the_model_process_cannot_read_is_a_503_at_the_worker(
    instance: Instance, folder: Path
) -> None:
    down = dataclasses.replace(
        instance.settings, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    served = DataPlaneServer.build(down, folder / "down.sock")
    served.listen()
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    client = RemoteDataPlane(served.path)
    try:
        with pytest.raises(DatabaseUnavailable):
            client.predict(ModelRef("digits"), {"x": X}, {2})
        with pytest.raises(AuditUnavailable):
            client.audit(audit_event("down-1"))
        assert client.ping()["pid"] == os.getpid()  # it still answers
    finally:
        client.close()
        served.close()
        thread.join(30)


def test_model_events_of_the_model_process_carry_the_request_id(
    instance: Instance, plane: DataPlaneServer
) -> None:
    client = RemoteDataPlane(plane.path)
    request_id = f"plane-{uuid.uuid4().hex[:12]}"
    try:
        client.predict(ModelRef("digits", version=1), {"x": X}, {1}, request_id)
    finally:
        client.close()
    plane.host.close()  # everything queued is written
    loads = [e for e in events(instance.engine, action="model:load") if e.request_id == request_id]
    assert [(e.model, e.model_version, e.reason_code) for e in loads] == [
        ("digits", 1, "model.loaded")
    ]


def audit_event(request_id: str) -> AuditEvent:
    return AuditEvent(action=Action.MODEL_LIST, actor="alice", request_id=request_id)


def test_every_thread_s_events_reach_the_one_writer(
    instance: Instance, plane: DataPlaneServer
) -> None:
    client = RemoteDataPlane(plane.path)
    local_used: list[str] = []

    def local() -> InstanceAudit:
        local_used.append("local")
        raise AssertionError("the instance writer was reachable")

    sink = InstanceAudit(client, local)  # type: ignore[arg-type]
    ids = [[f"t{thread}-{uuid.uuid4().hex[:10]}" for _ in range(10)] for thread in range(8)]

    def run(mine: list[str]) -> None:
        for request_id in mine:
            sink.append(audit_event(request_id))

    threads = [threading.Thread(target=run, args=(mine,)) for mine in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    client.close()
    flat = {request_id for mine in ids for request_id in mine}
    found = by_request(instance.engine, flat)
    assert all(len(found[request_id]) == 1 for request_id in flat)
    assert not local_used
    intact(instance)


def test_an_unreachable_model_process_fails_closed_and_is_audited_here(
    instance: Instance, folder: Path
) -> None:
    app = create_app(instance.settings, data_plane=folder / "nobody.sock")
    try:
        client = app.test_client()
        headers = {**instance.headers("alice"), "X-Request-Id": f"down-{uuid.uuid4().hex[:10]}"}
        answer = client.post("/v1/models/digits:predict", json={"instances": X.tolist()},
                             headers=headers)  # fmt: skip
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
        assert answer.get_json() == {"error": "service unavailable"}
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "models" in ready.get_json()["error"]
    finally:
        close_app(app)
    (event,) = by_request(instance.engine, {headers["X-Request-Id"]})[headers["X-Request-Id"]]
    assert (event.http_status, event.decision, event.reason_code) == (503, "error", "unavailable")
    assert "model process" in str(event.reason)
    intact(instance)


def test_an_audit_write_handed_over_but_not_confirmed_is_a_failure(folder: Path) -> None:
    path = folder / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def swallow() -> None:  # reads one frame, then dies without answering
        conn, _ = listener.accept()
        with conn:
            receive(conn)

    threading.Thread(target=swallow, daemon=True).start()
    client = RemoteDataPlane(path, timeout=30)
    local_used: list[str] = []
    sink = InstanceAudit(client, lambda: local_used.append("x"))  # type: ignore[arg-type, return-value]
    try:
        with pytest.raises(AuditUnavailable, match="not confirmed"):
            sink.append(audit_event("silent-1"))
        assert not local_used  # it may be committed: writing it again would double it
        listener.close()
        path.unlink()
        with pytest.raises(NotDelivered):
            client.ping()
    finally:
        client.close()


# -- through gunicorn ----------------------------------------------------------------------------


def post(url: str, instance: Instance, request_id: str) -> int:
    body = json.dumps({"instances": X.tolist()}).encode()
    headers = {**instance.headers("alice"), "Content-Type": "application/json",
               "X-Request-Id": request_id}  # fmt: skip
    request = urllib.request.Request(url + "/v1/models/digits:predict", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            outputs = json.loads(answer.read())["predictions"]
            want = models().predict("two", X)["probs"]
            np.testing.assert_allclose(np.asarray(outputs), want, rtol=0, atol=1e-6)
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_one_model_process_serves_every_worker_and_comes_back_after_sigkill(
    instance: Instance,
) -> None:
    sent: dict[str, int] = {}
    args = ("--workers", "2", "--threads", "4", "--preload", "digits")
    with server(instance, *args) as served:
        master = served.process.pid
        first = model_process(master)
        assert first is not None
        deadline = time.monotonic() + 60  # /readyz may be answered before the second fork
        while len(child_processes(master)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [pid for pid in child_processes(master) if pid != first]
        assert len(workers) == 2
        for n in range(16):
            request_id = f"gw-{n}-{uuid.uuid4().hex[:8]}"
            sent[request_id] = post(served.url, instance, request_id)
        assert set(sent.values()) == {200}
        assert maps_tensorflow(first)
        assert not any(maps_tensorflow(pid) for pid in workers)

        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 120
        replaced = None
        while time.monotonic() < deadline:
            request_id = f"gk-{len(sent)}-{uuid.uuid4().hex[:8]}"
            sent[request_id] = post(served.url, instance, request_id)
            replaced = model_process(master)
            if replaced not in (None, first) and sent[request_id] == 200:
                break
            time.sleep(0.05)
        assert replaced not in (None, first), "the model process was not restarted"
        assert set(sent.values()) <= {200, 503}
        assert list(sent.values())[-1] == 200
        assert sorted(child_processes(master)) == sorted([*workers, replaced])
        assert not any(maps_tensorflow(pid) for pid in workers)
    found = by_request(instance.engine, set(sent))
    for request_id, status in sent.items():
        assert [e.http_status for e in found[request_id]] == [status], request_id
    intact(instance)


def test_the_socket_folder_is_private_and_removed_on_stop(instance: Instance, folder: Path) -> None:
    # The server's own TMPDIR: a server another test (or worker) starts meanwhile adds nothing.
    before = set(folder.glob("secure-maas-*"))
    with server(
        instance, "--workers", "1", "--threads", "2", env={"TMPDIR": str(folder)}
    ) as served:
        made = set(folder.glob("secure-maas-*")) - before
        assert len(made) == 1
        (made_folder,) = made
        assert made_folder.stat().st_mode & 0o777 == 0o700
        assert (made_folder / "data-plane.sock").stat().st_mode & 0o777 == 0o600
        served.stop()
        with contextlib.suppress(Exception):
            served.process.wait(60)
    assert not made_folder.exists()


def test_one_model_process_per_accelerator_each_model_held_by_one(instance: Instance) -> None:
    # Three GPUs named to the instance (none exists here: TensorFlow falls back to the CPU, so
    # what is checked is the placement: each process was started with its one GPU visible).
    three = {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    args = ("--workers", "2", "--threads", "2", "--preload", "digits")
    sent: dict[str, int] = {}
    with server(instance, *args, env=three) as served:
        master = served.process.pid
        started = re.findall(
            r"model process (\d+) \(#(\d+)\) started on GPU (\d+) \(socket (\S+)\)",
            served.log.read_text(),
        )
        assert sorted(int(index) for _, index, _, _ in started) == [0, 1, 2], started
        pids = {pid for pid in child_processes(master) if comm(pid) == MODEL_PROCESS}
        assert pids == {int(pid) for pid, _, _, _ in started}
        for n in range(6):
            request_id = f"acc-{n}-{uuid.uuid4().hex[:8]}"
            sent[request_id] = post(served.url, instance, request_id)
        alice = Client(served.url, instance.tokens["alice"])
        columns = {"a": np.ones((2, 3), np.float32), "b": np.zeros((2, 2), np.float32)}
        assert np.asarray(alice.predict_columns("multi", columns)["score"]).shape == (2, 2)
        homes = {"digits": route("digits", 3), "multi": route("multi", 3)}
        assert len(set(homes.values())) == 2
        for pid, index, gpu, path in started:
            client = RemoteDataPlane(Path(path))
            try:
                ping = client.ping()
            finally:
                client.close()
            assert ping["pid"] == int(pid) and ping["accelerator"] == gpu == index
            held = {name for name, _version in ping["loaded"]}
            assert held == {name for name, home in homes.items() if home == int(index)}, ping
            assert maps_tensorflow(int(pid)) == bool(held)
        workers = [pid for pid in child_processes(master) if pid not in pids]
        assert len(workers) == 2 and not any(maps_tensorflow(pid) for pid in workers)
    assert set(sent.values()) == {200}
    found = by_request(instance.engine, set(sent))
    assert all([e.http_status for e in found[r]] == [200] for r in sent)
    intact(instance)
