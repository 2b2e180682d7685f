"""gRPC serves both APIs through the same pipeline as HTTP, under gunicorn.

`secure-maas serve --workers 2 --threads 4 --grpc-port P` (each worker its own gRPC server on
the port, SO_REUSEPORT), called with the clients users have: `tritonclient.grpc` (its code
unchanged; its message modules from our protos, `tests/grpc_clients.py`) and
`tensorflow-serving-api`'s PredictionService stub. Results match the Keras model's; BYTES
through a text model; a gzip-compressed request; the negatives (no token, a bad, an expired
and a revoked token, a forbidden model, an invisible one answered word for word as a missing
one, a malformed tensor, an oversized message, too many rows, an exhausted quota) get their
gRPC status, and each is an audit event with the HTTP-equivalent status, the caller's request
id, the peer's address and the digest of the message as sent; the audit chain verifies after.
One message past grpc's own limit (max_body_bytes + 1 MiB) is refused by grpc core before any
of our code, and so is not audited (docs/grpc.md says so).
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from secure_maas.db.session import session_factory, session_scope
from secure_maas.policy import Rule, grants
from tests.functional.cli import run_cli
from tests.functional.serving_support import (
    SCRIPT,
    Instance,
    Served,
    by_request,
    free_port,
    models,
    prepared,
    server,
)
from tests.functional.test_serving_strings import TEXTS, expected, text_model
from tests.grpc_clients import install_tritonclient_grpc
from tests.system.support import audit_intact

install_tritonclient_grpc()

import grpc  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    for made in prepared(request, tmp_path_factory, "grpc"):
        path = tmp_path_factory.mktemp("text-model") / "text.keras"
        text_model().save(path)
        imported = run_cli("models", "import", str(path), "--name", "text", env=made.env())
        assert imported.returncode == 0, imported.stdout + imported.stderr
        with session_scope(session_factory(made.engine)) as session:
            for rule in (
                Rule("allow", "role:analyst", ["model:predict", "model:metadata"], model="text"),
                Rule("allow", "user:alice", ["model:stats"], model="digits*"),
            ):
                grants.grant(session, rule, actor="t")
        yield made


@pytest.fixture(scope="module")
def served(instance: Instance) -> Iterator[tuple[Served, int]]:
    port = free_port()
    args = ("--workers", "2", "--threads", "4", "--grpc-port", str(port))
    with server(instance, *args) as running:
        yield running, port


@pytest.fixture
def client(served: tuple[Served, int]) -> Iterator[Any]:
    made = triton.InferenceServerClient(f"127.0.0.1:{served[1]}")
    yield made
    made.close()


@pytest.fixture
def channel(served: tuple[Served, int]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as made:
        yield made


def auth(instance: Instance, who: str, rid: str) -> dict[str, str]:
    return {"authorization": f"Bearer {instance.tokens[who]}", "x-request-id": rid}


def x_input(rows: int, value: float = 0.5) -> Any:
    given = triton.InferInput("x", [rows, 4], "FP32")
    given.set_data_from_numpy(np.full((rows, 4), value, dtype=np.float32))
    return given


def one_event(instance: Instance, rid: str) -> Any:
    [event] = by_request(instance.engine, {rid})[rid]
    return event


def test_tritonclient_health_metadata_config_and_statistics(
    client: Any, instance: Instance
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "secure-maas"
    headers = auth(instance, "alice", "grpc-meta")
    assert client.is_model_ready("digits", "2", headers=headers)
    found = client.get_model_metadata("digits", headers=headers)
    assert found.name == "digits" and list(found.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in found.inputs] == [("x", "FP32", [-1, 4])]
    config = client.get_model_config("multi", headers=auth(instance, "alice", "grpc-config"))
    assert [t.name for t in config.config.input] == ["a", "b"]
    assert config.config.max_batch_size == instance.settings.batch_max_size
    event = one_event(instance, "grpc-config")
    assert (event.action, event.decision, event.http_status) == ("model:metadata", "allow", 200)
    assert event.client == "127.0.0.1"
    client.infer("digits", [x_input(3)], model_version="2", headers=auth(instance, "alice", "s"))
    stats = client.get_inference_statistics("digits", "2", headers=auth(instance, "alice", "st"))
    [entry] = stats.model_stats
    assert entry.name == "digits" and entry.inference_count >= 3


def test_tritonclient_infer_fp32_matches_keras_and_is_audited(
    client: Any, instance: Instance
) -> None:
    rows = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    given = triton.InferInput("x", [5, 4], "FP32")
    given.set_data_from_numpy(rows)
    result = client.infer("digits", [given], model_version="2", request_id="mine",
                          headers=auth(instance, "alice", "grpc-infer"))  # fmt: skip
    want = models().predict("two", rows)["probs"]
    np.testing.assert_allclose(result.as_numpy("probs"), want, rtol=1e-5, atol=1e-6)
    answer = result.get_response()
    assert (answer.model_name, answer.model_version, answer.id) == ("digits", "2", "mine")
    event = one_event(instance, "grpc-infer")
    assert (event.action, event.decision, event.http_status, event.rows) == (
        "model:predict", "allow", 200, 5,
    )  # fmt: skip
    assert event.body_sha256 is not None and len(event.body_sha256) == 64


def test_tritonclient_infer_compressed_and_bytes(client: Any, instance: Instance) -> None:
    headers = auth(instance, "alice", "grpc-gzip")
    result = client.infer("digits", [x_input(2)], headers=headers, compression_algorithm="gzip")
    assert result.as_numpy("probs").shape == (2, 3)
    texts = np.array([[t.encode()] for t in TEXTS], dtype=object)
    given = triton.InferInput("text", list(texts.shape), "BYTES")
    given.set_data_from_numpy(texts)
    wanted = [triton.InferRequestedOutput("probs"), triton.InferRequestedOutput("echo")]
    result = client.infer("text", [given], outputs=wanted,
                          headers=auth(instance, "alice", "grpc-bytes"))  # fmt: skip
    np.testing.assert_allclose(result.as_numpy("probs"), expected(TEXTS), rtol=1e-5, atol=1e-6)
    assert result.as_numpy("echo").ravel().tolist() == [t.encode() for t in TEXTS]


def test_tfserving_stub_predict_and_metadata(channel: grpc.Channel, instance: Instance) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rows = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.version_label = "stable"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(rows))
    answer, call = stub.Predict.with_call(
        request, metadata=list(auth(instance, "alice", "grpc-tfs").items())
    )
    np.testing.assert_allclose(
        tf.make_ndarray(answer.outputs["probs"]), models().predict("two", rows)["probs"],
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    assert answer.model_spec.name == "digits" and answer.model_spec.version.value == 2
    assert ("x-request-id", "grpc-tfs") in tuple(call.initial_metadata())
    event = one_event(instance, "grpc-tfs")
    digest = hashlib.sha256(request.SerializeToString()).hexdigest()
    assert (event.decision, event.http_status, event.rows) == ("allow", 200, 3)
    assert event.body_sha256 == digest
    asked = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    asked.model_spec.name = "multi"
    found = stub.GetModelMetadata(asked, metadata=list(auth(instance, "alice", "m").items()))
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert found.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def["serving_default"]
    assert sorted(default.inputs) == ["a", "b"] and sorted(default.outputs) == ["gate", "score"]
    assert default.inputs["a"].dtype == tf.float32.as_datatype_enum


def refused(client: Any, rid: str, *args: Any, **kwargs: Any) -> Any:
    with pytest.raises(triton.InferenceServerException) as caught:
        client.infer(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("who", "code"),
    [
        (None, "StatusCode.UNAUTHENTICATED"),
        ("garbage", "StatusCode.UNAUTHENTICATED"),
        ("expired", "StatusCode.UNAUTHENTICATED"),
        ("revoked", "StatusCode.UNAUTHENTICATED"),
        ("tampered", "StatusCode.UNAUTHENTICATED"),
    ],
)
def test_tokens_refused_and_audited(
    client: Any, instance: Instance, who: str | None, code: str
) -> None:
    rid = f"grpc-token-{who}"
    headers = {"x-request-id": rid}
    if who is not None:
        headers["authorization"] = f"Bearer {instance.tokens[who]}"
    error = refused(client, rid, "digits", [x_input(1)], headers=headers)
    assert error.status() == code
    event = one_event(instance, rid)
    assert (event.actor, event.decision, event.http_status) == ("anonymous", "deny", 401)


def test_forbidden_invisible_and_missing(client: Any, instance: Instance) -> None:
    # alice may list 'listed' but never predict it: 403; 'secret' she may not see: exactly
    # what a model that does not exist gets.
    forbidden = refused(client, "f", "listed", [x_input(1)], headers=auth(instance, "alice", "gf"))
    assert forbidden.status() == "StatusCode.PERMISSION_DENIED"
    assert forbidden.message() == "permission denied"
    hidden = refused(client, "h", "secret", [x_input(1)], headers=auth(instance, "alice", "gh"))
    missing = refused(client, "m", "nosuch", [x_input(1)], headers=auth(instance, "alice", "gm"))
    assert hidden.status() == missing.status() == "StatusCode.NOT_FOUND"
    assert hidden.message() == "Request for unknown model: 'secret' is not found"
    assert missing.message() == "Request for unknown model: 'nosuch' is not found"
    events = by_request(instance.engine, {"gf", "gh", "gm"})
    assert [(e.decision, e.http_status) for e in events["gf"]] == [("deny", 403)]
    assert [(e.decision, e.http_status) for e in events["gh"]] == [("deny", 404)]
    assert [(e.reason_code, e.http_status) for e in events["gm"]] == [("not_found", 404)]


def test_malformed_tensor_and_oversized_messages(client: Any, instance: Instance) -> None:
    limit = instance.settings.max_body_bytes
    bad = triton.InferInput("x", [2, 4], "FP32")
    bad._raw_content = b"\x00" * 12  # 3 floats for a shape of 8
    bad._data_shape = [2, 4]
    error = refused(client, "b", "digits", [bad], headers=auth(instance, "alice", "g-bad"))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "12 does not match shape [2,4] of FP32 (32 bytes)" in error.message()
    assert one_event(instance, "g-bad").http_status == 400
    rows = limit // 16 + 64  # just over max_body_bytes: refused by the pipeline, audited
    error = refused(
        client, "o", "digits", [x_input(rows)], headers=auth(instance, "alice", "g-big")
    )
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert f"the limit is {limit} bytes" in error.message()
    event = one_event(instance, "g-big")
    assert (event.actor, event.http_status, event.body_sha256) == ("anonymous", 413, None)
    rows = (limit + (1 << 20)) // 16 + 64  # past grpc core's limit: refused before our code
    error = refused(
        client, "c", "digits", [x_input(rows)], headers=auth(instance, "alice", "g-core")
    )
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert by_request(instance.engine, {"g-core"})["g-core"] == []


def test_row_limit_then_quota(client: Any, instance: Instance) -> None:
    # dave: 'multi' with at most 3 rows a request and 2 requests a day.
    def multi(rows: int) -> list[Any]:
        a = triton.InferInput("a", [rows, 3], "FP32")
        a.set_data_from_numpy(np.zeros((rows, 3), np.float32))
        b = triton.InferInput("b", [rows, 2], "FP32")
        b.set_data_from_numpy(np.zeros((rows, 2), np.float32))
        return [a, b]

    error = refused(client, "r", "multi", multi(4), headers=auth(instance, "dave", "g-rows"))
    assert error.status() == "StatusCode.PERMISSION_DENIED"
    assert one_event(instance, "g-rows").http_status == 403
    for n in range(2):
        client.infer("multi", multi(1), headers=auth(instance, "dave", f"g-q{n}"))
    with pytest.raises(grpc.RpcError) as caught:
        stub = client._client_stub
        request = triton.service_pb2.ModelInferRequest(model_name="multi")
        for name, width in (("a", 3), ("b", 2)):
            tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, width])
            tensor.contents.fp32_contents.extend([0.0] * width)
        stub.ModelInfer(request, metadata=list(auth(instance, "dave", "g-quota").items()))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota exceeded" in caught.value.details()
    trailing = dict(caught.value.trailing_metadata())
    assert int(trailing["retry-after"]) > 0
    event = one_event(instance, "g-quota")
    assert (event.decision, event.http_status) == ("deny", 429)


def test_unimplemented_methods_and_the_chain(
    channel: grpc.Channel, client: Any, instance: Instance
) -> None:
    with pytest.raises(triton.InferenceServerException) as caught:
        client.get_model_repository_index(headers=auth(instance, "alice", "g-index"))
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    classify = channel.unary_unary("/tensorflow.serving.PredictionService/Classify")
    with pytest.raises(grpc.RpcError) as again:
        classify(b"", metadata=list(auth(instance, "alice", "g-classify").items()))
    assert again.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert audit_intact(instance) > 0


def test_the_development_server_serves_grpc_too(instance: Instance) -> None:
    port = free_port()
    with server(instance, "--grpc-port", str(port)):
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            headers = auth(instance, "alice", "grpc-dev")
            result = client.infer("digits", [x_input(1)], model_version="2", headers=headers)
            assert result.as_numpy("probs").shape == (1, 3)
        finally:
            client.close()
    assert one_event(instance, "grpc-dev").http_status == 200


def _hpack_length(size: int) -> bytes:
    """HPACK's integer with a 7-bit prefix (RFC 7541 5.1), for string lengths."""
    if size < 127:
        return bytes([size])
    out, size = [127], size - 127
    while size >= 128:
        out.append(size % 128 + 128)
        size //= 128
    return bytes([*out, size])


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def slow_sender(port: int, token: str) -> socket.socket:
    """An HTTP/2 connection that starts a ModelInfer call, sends 15 bytes of a message that
    declares 60,000, and then nothing (raw frames: HPACK literals, no Huffman coding)."""
    headers = [
        (":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
        (":path", "/inference.GRPCInferenceService/ModelInfer"),
        ("content-type", "application/grpc"), ("te", "trailers"),
        ("authorization", f"Bearer {token}"),
    ]  # fmt: skip
    block = b"".join(
        b"\x00" + _hpack_length(len(n)) + n.encode() + _hpack_length(len(v)) + v.encode()
        for n, v in headers
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + _frame(4, 0, 0, b"")  # SETTINGS
        + _frame(4, 1, 0, b"")  # SETTINGS ACK (of the server's, before it asks)
        + _frame(1, 4, 1, block)  # HEADERS, END_HEADERS
        + _frame(0, 0, 1, b"\x00" + (60_000).to_bytes(4, "big") + b"\x00" * 10)  # part of DATA
    )
    return sock


def test_slow_senders_hold_no_thread(client: Any, instance: Instance, served: Any) -> None:
    # 24 calls whose messages never finish, three times the 8 threads of the two workers (and
    # under the 32 calls in progress each worker admits): were each to hold a thread, the
    # calls below could never be answered while they stay open.
    senders = [slow_sender(served[1], instance.tokens["alice"]) for _ in range(24)]
    try:
        for n in range(8):
            headers = auth(instance, "alice", f"g-slow-{n}")
            result = client.infer("digits", [x_input(1)], headers=headers, client_timeout=60)
            assert result.as_numpy("probs").shape == (1, 3)
    finally:
        for sock in senders:
            sock.close()


def test_tfserving_stub_predicts_strings(channel: grpc.Channel, instance: Instance) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"
    texts = np.array([[t.encode()] for t in TEXTS], dtype=object)
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(texts))
    request.output_filter.append("echo")
    request.output_filter.append("probs")
    answer = stub.Predict(request, metadata=list(auth(instance, "alice", "g-text").items()))
    assert sorted(answer.outputs) == ["echo", "probs"]
    np.testing.assert_allclose(
        tf.make_ndarray(answer.outputs["probs"]), expected(TEXTS), rtol=1e-5, atol=1e-6
    )
    assert tf.make_ndarray(answer.outputs["echo"]).ravel().tolist() == [t.encode() for t in TEXTS]
    assert one_event(instance, "g-text").rows == len(TEXTS)


def test_a_grpc_port_in_use_stops_the_server_with_a_clear_error(instance: Instance) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        port = holder.getsockname()[1]
        command = [str(SCRIPT), "serve", "--workers", "1", "--port", str(free_port()),
                   "--grpc-port", str(port)]  # fmt: skip
        done = subprocess.run(command, env=instance.env(), capture_output=True, timeout=300)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0
    assert f"gRPC could not listen on 127.0.0.1:{port} (in use?)" in output
