"""The gRPC servicers in-process, over the serving tests' instance: what the system test cannot
easily reach. A failed audit write answers UNAVAILABLE whatever the answer would have been (and
a database that does not answer too: fail closed); typed `contents` and `TensorProto`'s typed
fields give what raw data gives; every malformed message, tensor, spec or field is an
INVALID_ARGUMENT with a clear message and an audit event; TF Serving's not-found words for a
version or a label; the request id comes back; the metrics count gRPC calls by method.

The server is the real one (`GrpcServer`, grpc's asyncio server on 127.0.0.1), over
`Services` built here (models run in this process: `LocalDataPlane`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pytest

from secure_maas.serving.grpc import schema
from secure_maas.serving.grpc.server import Endpoint, GrpcServer
from secure_maas.serving.services import Services
from tests.functional.serving_support import Instance, by_request, free_port, models, prepared
from tests.functional.test_serving_api import DatabaseDownPolicy, FullDiskAudit

TRITON = "/inference.GRPCInferenceService/"
TFS = "/tensorflow.serving.PredictionService/"
INFER_RESPONSE = "inference.ModelInferResponse"
PREDICT_RESPONSE = "tensorflow.serving.PredictResponse"
METADATA_RESPONSE = "tensorflow.serving.GetModelMetadataResponse"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "grpc-servicers")


@pytest.fixture(scope="module")
def services(instance: Instance) -> Iterator[Services]:
    made = Services.build(instance.settings)
    yield made
    made.close()


@contextmanager
def serving(services: Services) -> Iterator[grpc.Channel]:
    server = GrpcServer.start(services, Endpoint("127.0.0.1", free_port()), threads=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        server.stop(grace=1)


@pytest.fixture(scope="module")
def channel(services: Services) -> Iterator[grpc.Channel]:
    with serving(services) as made:
        yield made


def message(name: str, **fields: Any) -> Any:
    return schema.message(name)(**fields)


def rpc(channel: grpc.Channel, path: str, request: Any, response: str, **metadata: str) -> Any:
    method = channel.unary_unary(
        path,
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=schema.message(response).FromString,
    )
    return method.with_call(request, metadata=list(metadata.items()))


def refused(channel: grpc.Channel, path: str, request: Any, **metadata: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, path, request, "google.protobuf.Struct", **metadata)
    return caught.value


def meta(instance: Instance, who: str, rid: str) -> dict[str, str]:
    return {"authorization": f"Bearer {instance.tokens[who]}", "x-request-id": rid}


def infer_request(rows: np.ndarray, *, typed: bool, model: str = "digits") -> Any:
    request = message("inference.ModelInferRequest", model_name=model, model_version="2")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(rows.shape))
    if typed:
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    else:
        request.raw_input_contents.append(rows.astype("<f4").tobytes())
    return request


def test_typed_and_raw_contents_give_keras_results(
    channel: grpc.Channel, instance: Instance
) -> None:
    rows = np.random.default_rng(8).normal(size=(3, 4)).astype(np.float32)
    want = models().predict("two", rows)["probs"]
    for typed in (False, True):
        request = infer_request(rows, typed=typed)
        headers = meta(instance, "alice", f"t{typed}")
        answer, call = rpc(channel, TRITON + "ModelInfer", request, INFER_RESPONSE, **headers)
        [out] = answer.outputs
        assert (out.name, out.datatype, list(out.shape)) == ("probs", "FP32", [3, 3])
        got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(3, 3)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert ("x-request-id", f"t{typed}") in tuple(call.initial_metadata())


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda r: r.inputs[0].contents.int_contents.append(1), "contents go in fp32_contents"),
        (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "does not match shape"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP8"), "unknown datatype"),
        (lambda r: r.inputs[0].shape.append(1), "has shape"),
        (lambda r: setattr(r.inputs[0], "name", "y"), "unexpected inference input 'y'"),
        (lambda r: r.outputs.add(name="nope"), "unexpected inference output 'nope'"),
        (lambda r: r.raw_input_contents.append(b"\0" * 16), "has both contents and raw_input"),
        (
            lambda r: (r.inputs[0].ClearField("contents"), r.raw_input_contents.extend([b"", b""])),
            "raw_input_contents holds 2 entries for 1 input(s)",
        ),
    ],
)
def test_malformed_infer_requests_are_invalid_arguments(
    channel: grpc.Channel, instance: Instance, mutate: Any, fragment: str
) -> None:
    request = infer_request(np.zeros((2, 4), np.float32), typed=True)
    mutate(request)
    rid = f"bad-{abs(hash(fragment))}"
    error = refused(channel, TRITON + "ModelInfer", request, **meta(instance, "alice", rid))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()
    [event] = by_request(instance.engine, {rid})[rid]
    assert (event.action, event.http_status, event.reason_code) == (
        "model:predict", 400, "bad_request",
    )  # fmt: skip


def test_a_message_that_does_not_parse_is_refused_after_the_token(
    channel: grpc.Channel, instance: Instance
) -> None:
    garbage = b"\xff\xff\xff\xff"
    error = refused(channel, TRITON + "ModelInfer", garbage, **meta(instance, "alice", "junk"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "malformed ModelInferRequest message"
    [event] = by_request(instance.engine, {"junk"})["junk"]
    assert (event.actor, event.http_status) == ("alice", 400)
    anonymous = refused(channel, TRITON + "ModelInfer", garbage, **{"x-request-id": "junk2"})
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED


def tensor(values: np.ndarray, *, typed: bool = True) -> Any:
    made = message("tensorflow.TensorProto")
    made.dtype = schema.enum_value("tensorflow.DataType", "DT_FLOAT")
    for size in values.shape:
        made.tensor_shape.dim.add().size = size
    if typed:
        made.float_val.extend(values.ravel().tolist())
    else:
        made.tensor_content = values.astype("<f4").tobytes()
    return made


def predict_request(inputs: dict[str, Any], **spec: Any) -> Any:
    request = message("tensorflow.serving.PredictRequest")
    request.model_spec.name = spec.pop("name", "digits")
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    if "label" in spec:
        request.model_spec.version_label = spec.pop("label")
    request.model_spec.signature_name = spec.pop("signature", "")
    request.output_filter.extend(spec.pop("output_filter", []))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value)
    return request


def test_predict_typed_values_and_one_value_filling_the_shape(
    channel: grpc.Channel, instance: Instance
) -> None:
    ones = np.ones((2, 4), np.float32)
    want = models().predict("two", ones)["probs"]
    single = tensor(np.ones((1,), np.float32))
    single.tensor_shape.dim[0].size = 2
    single.tensor_shape.dim.add().size = 4
    for given in (tensor(ones), tensor(ones, typed=False), single):
        request = predict_request({"x": given}, version=2)
        headers = meta(instance, "alice", "p")
        answer, _ = rpc(channel, TFS + "Predict", request, PREDICT_RESPONSE, **headers)
        out = answer.outputs["probs"]
        got = np.frombuffer(out.tensor_content, "<f4").reshape(
            [d.size for d in out.tensor_shape.dim]
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert answer.model_spec.version.value == 2


@pytest.mark.parametrize(
    ("request_of", "code", "fragment"),
    [
        (lambda: predict_request({"y": tensor(np.ones((1, 4), np.float32))}),
         "INVALID_ARGUMENT", 'input tensor alias not found in signature: "y"'),
        (lambda: predict_request({}), "INVALID_ARGUMENT", "Missing: x"),
        (lambda: predict_request({"x": tensor(np.ones((1, 3), np.float32))}),
         "INVALID_ARGUMENT", "has shape [1,3]"),
        (lambda: predict_request({"x": tensor(np.ones((3,), np.float32))}),
         "INVALID_ARGUMENT", "has shape [3]"),
        (lambda: predict_request({"x": tensor(np.ones((1, 4), np.float32))}, signature="other"),
         "INVALID_ARGUMENT", 'Serving signature name: "other" not found'),
        (lambda: predict_request({"x": tensor(np.ones((1, 4), np.float32))},
                                 output_filter=["nope"]),
         "INVALID_ARGUMENT", 'output tensor alias not found in signature: "nope"'),
        (lambda: predict_request({"x": tensor(np.ones((1, 4), np.float32))}, version=9),
         "NOT_FOUND", "Servable not found for request: Specific(digits, 9)"),
        (lambda: predict_request({"x": tensor(np.ones((1, 4), np.float32))}, label="gone"),
         "NOT_FOUND", "Servable not found for request: Label(digits, gone)"),
        (lambda: predict_request({"x": tensor(np.ones((1, 4), np.float32))}, name="secret"),
         "NOT_FOUND", "Servable not found for request: Latest(secret)"),
    ],
)  # fmt: skip
def test_predict_refusals(
    channel: grpc.Channel, instance: Instance, request_of: Any, code: str, fragment: str
) -> None:
    rid = f"pr-{abs(hash(fragment))}"
    error = refused(channel, TFS + "Predict", request_of(), **meta(instance, "alice", rid))
    assert error.code() == getattr(grpc.StatusCode, code)
    assert fragment in error.details()
    [event] = by_request(instance.engine, {rid})[rid]
    assert event.action == "model:predict" and event.decision in ("deny", "error")


def test_predict_with_a_wrong_value_count(channel: grpc.Channel, instance: Instance) -> None:
    short = tensor(np.ones((1, 4), np.float32))
    del short.float_val[-1]
    error = refused(channel, TFS + "Predict", predict_request({"x": short}),
                    **meta(instance, "alice", "short"))  # fmt: skip
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "float_val holds 3 value(s), shape [1,4] needs 4" in error.details()


def test_model_metadata_carries_the_signature_and_the_guarantee(
    channel: grpc.Channel, instance: Instance
) -> None:
    asked = message("tensorflow.serving.GetModelMetadataRequest", metadata_field=["signature_def"])
    asked.model_spec.name = "digits"
    headers = meta(instance, "alice", "m")
    answer, _ = rpc(channel, TFS + "GetModelMetadata", asked, METADATA_RESPONSE, **headers)
    packed = answer.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = schema.message("tensorflow.serving.SignatureDefMap").FromString(packed.value)
    assert sorted(signatures.signature_def["serving_default"].inputs) == ["x"]
    guarantee = schema.message("google.protobuf.Struct").FromString(
        answer.metadata["secure_maas"].value
    )
    assert "dp" in guarantee and guarantee["dp"]["epsilon"] == pytest.approx(2.0)
    asked.ClearField("metadata_field")
    error = refused(channel, TFS + "GetModelMetadata", asked, **meta(instance, "alice", "m2"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_failed_audit_write_or_a_silent_database_fails_closed(
    services: Services, instance: Instance
) -> None:
    rows = np.zeros((1, 4), np.float32)
    for fake in ({"audit": FullDiskAudit()}, {"policy": DatabaseDownPolicy()}):
        with serving(dataclasses.replace(services, **fake)) as channel:
            for who in ("alice", "eve"):
                error = refused(channel, TRITON + "ModelInfer", infer_request(rows, typed=True),
                                **meta(instance, who, f"down-{who}"))  # fmt: skip
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert error.details() == "service unavailable"


def test_metrics_count_grpc_calls_by_method(channel: grpc.Channel, services: Services) -> None:
    rpc(channel, TRITON + "ServerLive", message("inference.ServerLiveRequest"),
        "inference.ServerLiveResponse")  # fmt: skip
    refused(channel, TRITON + "ModelInfer", infer_request(np.zeros((1, 4)), typed=True))
    text, _ = services.metrics.render()
    assert b'endpoint="grpc.GRPCInferenceService.ServerLive"' in text
    assert b'endpoint="grpc.GRPCInferenceService.ModelInfer",method="POST",status="401"' in text
