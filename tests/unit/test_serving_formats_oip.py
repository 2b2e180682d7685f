"""Open Inference Protocol v2 bodies, including exactly what `tritonclient[http]` sends/reads;
a body numpy cannot build, or a header length in other characters than ASCII digits, is a
`BadRequest` (400) naming what is wrong, never a numpy or `int()` error (a 500)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from secure_maas.registry.signature import ServingSignature
from secure_maas.serving.formats.oip import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    BadRequest,
    InferRequest,
    infer_response,
    model_metadata,
    model_ready,
    parse_infer,
    server_metadata,
)
from secure_maas.serving.formats.tensors import read_tensor

SIG = ServingSignature.from_dict(
    {
        "inputs": [
            {"name": "x", "shape": [None, 4], "dtype": "float32"},
            {"name": "n", "shape": [None], "dtype": "int64"},
        ],
        "outputs": [
            {"name": "probs", "shape": [None, 3], "dtype": "float32"},
            {"name": "label", "shape": [None], "dtype": "int64"},
        ],
    }
)
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 7
N = np.array([5, -6], dtype=np.int64)


def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stand-in for the model: deterministic outputs of the right dtypes."""
    x = inputs["x"]
    probs = np.stack([x.sum(axis=1), x.max(axis=1), x.min(axis=1)], axis=1).astype(np.float32)
    return {"probs": probs, "label": inputs["n"] * 2}


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def json_request(**extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()},
            {"name": "n", "shape": [2], "datatype": "INT64", "data": N.tolist()},
        ],
        **extra,
    }


def test_json_request_and_response() -> None:
    request = parse_infer(body(json_request(id="req-1")), SIG)
    assert request.id == "req-1" and request.rows == 2
    np.testing.assert_array_equal(request.inputs["x"], X)
    assert request.inputs["n"].dtype == np.int64
    response = infer_response(request, model(request.inputs), model_name="m", model_version=3)
    assert response.content_type == JSON_CONTENT_TYPE and response.headers == {}
    document = json.loads(response.body)
    assert document["model_name"] == "m" and document["model_version"] == "3"
    assert document["id"] == "req-1"
    probs, label = document["outputs"]
    assert (probs["name"], probs["datatype"], probs["shape"]) == ("probs", "FP32", [2, 3])
    data = np.array(probs["data"]).reshape(2, 3)
    np.testing.assert_allclose(data, model(request.inputs)["probs"], rtol=0, atol=1e-6)
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [10, -12]}


def test_nested_data_requested_outputs_and_no_id() -> None:
    document = json_request(outputs=[{"name": "label"}])
    document["inputs"][0]["data"] = X.tolist()
    request = parse_infer(body(document), SIG)
    np.testing.assert_array_equal(request.inputs["x"], X)
    out = json.loads(infer_response(request, model(request.inputs), model_name="m",
                                    model_version=1).body)  # fmt: skip
    assert "id" not in out and [o["name"] for o in out["outputs"]] == ["label"]


def test_datatypes_cast_to_the_model_when_nothing_changes_meaning() -> None:
    document = json_request()
    document["inputs"][0]["datatype"] = "FP64"
    document["inputs"][1]["datatype"] = "INT32"
    request = parse_infer(body(document), SIG)
    assert request.inputs["x"].dtype == np.float32 and request.inputs["n"].dtype == np.int64
    document["inputs"][0]["datatype"] = "INT32"
    document["inputs"][0]["data"] = [1, 2, 3, 4, 5, 6, 7, 8]
    assert parse_infer(body(document), SIG).inputs["x"].dtype == np.float32


# -- tritonclient: build the body with the client's own code, read our answer with its own --


def triton_request(binary: bool, outputs: list[str] | None) -> tuple[bytes, int | None]:
    from tritonclient.http import InferInput, InferRequestedOutput
    from tritonclient.http._utils import _get_inference_request

    x = InferInput("x", list(X.shape), "FP32").set_data_from_numpy(X, binary_data=binary)
    n = InferInput("n", list(N.shape), "INT64").set_data_from_numpy(N, binary_data=binary)
    requested = [InferRequestedOutput(name, binary_data=binary) for name in outputs or []]
    request_body, json_size = _get_inference_request(
        inputs=[x, n], request_id="t-1", outputs=requested or None, sequence_id=0,
        sequence_start=False, sequence_end=False, priority=0, timeout=None,
        custom_parameters=None,
    )  # fmt: skip
    return request_body, json_size


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("outputs", [None, ["label", "probs"]], ids=["all", "named"])
def test_tritonclient_round_trip(binary: bool, outputs: list[str] | None) -> None:
    from tritonclient.http import InferResult

    request_body, json_size = triton_request(binary, outputs)
    assert (json_size is not None) == binary  # binary inputs: the client sends the header
    request = parse_infer(request_body, SIG, header_length=json_size)
    np.testing.assert_array_equal(request.inputs["x"], X)
    np.testing.assert_array_equal(request.inputs["n"], N)
    assert request.id == "t-1"
    if outputs is None:  # the client then asks for every output as binary data
        assert all(o.binary for o in request.outputs)
    response = infer_response(request, model(request.inputs), model_name="m", model_version=2)
    header = response.headers.get(HEADER_LENGTH)
    assert (response.content_type == BINARY_CONTENT_TYPE) == (header is not None)
    result = InferResult.from_response_body(
        response.body, header_length=int(header) if header else None
    )
    expected = model(request.inputs)
    np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    assert result.get_response()["id"] == "t-1"


def test_binary_bool_and_bytes_inputs_are_read() -> None:
    sig = ServingSignature.from_dict(
        {
            "inputs": [{"name": "flags", "shape": [None, 3], "dtype": "bool"}],
            "outputs": [{"name": "y", "shape": [None], "dtype": "float32"}],
        }
    )
    head = body({"inputs": [{"name": "flags", "shape": [1, 3], "datatype": "BOOL",
                             "parameters": {"binary_data_size": 3}}]})  # fmt: skip
    request = parse_infer(head + b"\x01\x00\x01", sig, header_length=len(head))
    assert request.inputs["flags"].tolist() == [[True, False, True]]
    elements = b"".join(struct.pack("<I", len(e)) + e for e in (b"ab", b"", b"c"))
    for tail, message in [
        (elements, "values of type BYTES cannot be used as bool"),  # read, then refused
        (elements[:-1], "BYTES binary data does not hold exactly 3"),
        (elements + b"\0", "BYTES binary data does not hold exactly 3"),
    ]:
        strings = body({"inputs": [{"name": "flags", "shape": [1, 3], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": len(tail)}}]})  # fmt: skip
        with pytest.raises(BadRequest, match=message):
            parse_infer(strings + tail, sig, header_length=len(strings))


def with_input(index: int, **changes: Any) -> bytes:
    document = json_request()
    document["inputs"][index].update(changes)
    return body(document)


def binary_x(size: int, payload: bytes, *, header: int | str | None = None) -> tuple[bytes, Any]:
    document = json_request()
    del document["inputs"][0]["data"]
    document["inputs"][0]["parameters"] = {"binary_data_size": size}
    head = body(document)
    return head + payload, len(head) if header is None else header


GOOD_X = X.astype("<f4").tobytes()


@pytest.mark.parametrize(
    ("request_body", "header", "message"),
    [
        (b"[]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (body(json_request(id=5)), None, "'id' must be a string"),
        (with_input(0, data=[1.0] * 7), None, r"shape \[2,4\] needs 8 value\(s\), data has 7"),
        (with_input(0, data=[[1.0] * 4] * 3), None, r"nested as \[3,4\] does not match .*\[2,4\]"),
        (with_input(0, shape=[4, 2]), None, r"input 'x' has shape \[4,2\], .* \[-1,4\]"),
        (with_input(0, shape=[2, -4]), None, "non-negative integers"),
        (with_input(0, datatype="FP8"), None, "unknown datatype"),
        (with_input(0, datatype="BF16"), None, "BF16 is not supported"),
        (with_input(0, datatype="BOOL", data=[True] * 8), None, "bool cannot be used as float32"),
        (with_input(0, datatype="BYTES", data=["a"] * 8), None, "BYTES cannot be used as float32"),
        (with_input(1, datatype="FP32", data=[1.0, 2.0]), None, "float32 cannot be used as int64"),
        (with_input(1, data=[1, 2.5]), None, r"data\[1\]: JSON value 2\.5 .* int64"),
        (with_input(1, data=[1, "2"]), None, "String"),
        (with_input(1, data=[1, 2**63]), None, "out of range for int64"),
        (with_input(1, datatype="UINT64", data=[1, 2**63]), None, "out of range for int64"),
        (with_input(1, shape=[3], data=[1, 2, 3]), None, "same number of rows"),
        (with_input(0, name="z"), None, "unexpected inference input 'z'"),
        (with_input(1, name="x"), None, "given more than once"),
        (body({"inputs": [json_request()["inputs"][0], {"name": "n", "shape": [2],
                                                        "datatype": "INT64"}]}),
         None, "no 'data'"),
        (with_input(0, parameters={"shared_memory_region": "r"}), None, "shared memory"),
        (body({"inputs": json_request()["inputs"][:1]}), None, r"missing input\(s\) n"),
        (body(json_request(outputs=[{"name": "nope"}])), None, "unexpected inference output"),
        (body(json_request(outputs=[{"name": "label"}, {"name": "label"}])), None, "more than"),
        (body(json_request(outputs=[{"name": "label", "parameters": {"classification": 2}}])),
         None, "classification extension"),
        (body(json_request(parameters={"binary_data_output": "yes"})), None, "true or false"),
        (with_input(0, data=[1.0] * 7 + [float("nan")]), None, "NaN is not allowed"),
        (*binary_x(32, GOOD_X + b"x"), "follow the inputs"),
        (*binary_x(33, GOOD_X), "runs past the end"),
        (*binary_x(31, GOOD_X[:31]), r"binary_data_size 31 does not match shape \[2,4\]"),
        (*binary_x(32, np.full(8, np.nan, "<f4").tobytes()), "NaN is not allowed"),
        (*binary_x(32, GOOD_X, header="12x"), HEADER_LENGTH),
        (*binary_x(32, GOOD_X, header=10**9), HEADER_LENGTH),
        (body(json_request()) + GOOD_X, None, "JSON Parse error"),  # binary without the header
    ],
)  # fmt: skip
def test_bad_requests_are_refused_with_a_clear_message(
    request_body: bytes, header: Any, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_infer(request_body, SIG, header_length=header)


def test_binary_nan_passes_when_allowed() -> None:
    data, header = binary_x(32, np.full(8, np.inf, "<f4").tobytes())
    request = parse_infer(data, SIG, header_length=header, allow_nan=True)
    assert np.isinf(request.inputs["x"]).all()


def test_metadata_ready_and_server_documents() -> None:
    guarantee = {"privacy": "dp", "dp": {"epsilon": 2.0}}
    document = model_metadata("digits", [1, 2], SIG, secure_maas=guarantee)
    assert document == {
        "name": "digits",
        "versions": ["1", "2"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                   {"name": "n", "datatype": "INT64", "shape": [-1]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
        "secure_maas": guarantee,
    }  # fmt: skip
    assert model_ready("digits", 2, True) == {"name": "digits", "ready": True, "version": "2"}
    assert model_ready("digits", None, False) == {"name": "digits", "ready": False}
    assert "binary_tensor_data" in server_metadata("0.1.0")["extensions"]


def test_request_object_is_plain_data() -> None:
    request = parse_infer(body(json_request()), SIG)
    assert isinstance(request, InferRequest)
    assert [o.name for o in request.outputs] == ["probs", "label"]
    assert not any(o.binary for o in request.outputs)


# -- shapes numpy cannot build, integers past int64, header lengths that are not ASCII digits --
# (bodies tests/system/test_fuzz.py found): each is a `BadRequest` naming the input or header;
# an in-range UINT64 is read exactly.

DIGITS = ServingSignature.from_dict(
    {
        "inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}],
        "outputs": [{"name": "probs", "shape": [None, 3], "dtype": "float32"}],
    }
)
#: Three free dimensions: a shape with a zero passes the rank check, numpy still refuses it.
FREE = ServingSignature.from_dict(
    {
        "inputs": [{"name": "t", "shape": [None, None, None], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [None], "dtype": "float32"}],
    }
)
UNSIGNED = ServingSignature.from_dict(
    {
        "inputs": [{"name": "u", "shape": [None, 4], "dtype": "uint64"}],
        "outputs": [{"name": "y", "shape": [None], "dtype": "float32"}],
    }
)
DEEP = json.loads("[" * 40 + "1" + "]" * 40)


def infer(signature: ServingSignature, tensor: dict[str, Any], tail: bytes | None = None) -> Any:
    head = json.dumps({"inputs": [tensor]}).encode()
    if tail is None:
        return parse_infer(head, signature)
    return parse_infer(head + tail, signature, header_length=str(len(head)))


@pytest.mark.parametrize(
    ("signature", "tensor", "tail", "fragment"),
    [
        (DIGITS, {"name": "x", "shape": [0, 10**20], "datatype": "FP32", "data": []}, None,
         "has shape [0,100000000000000000000], but the model expects [-1,4]"),
        (DIGITS, {"name": "x", "shape": [1] * 40, "datatype": "FP32", "data": [1.0]}, None,
         "but the model expects [-1,4]"),
        (DIGITS, {"name": "x", "shape": [1] * 40, "datatype": "FP32", "data": DEEP}, None,
         "but the model expects [-1,4]"),
        (DIGITS, {"name": "x", "shape": [0, 2**62], "datatype": "FP32",
                  "parameters": {"binary_data_size": 0}}, b"", "but the model expects [-1,4]"),
        (FREE, {"name": "t", "shape": [0, 2**62, 2**62], "datatype": "FP32", "data": []}, None,
         "shape [0,4611686018427387904,4611686018427387904] is out of range"),
        (FREE, {"name": "t", "shape": [0, 2**62, 2**62], "datatype": "FP32",
                "parameters": {"binary_data_size": 0}}, b"", "is out of range"),
        (FREE, {"name": "t", "shape": [0, 2**62, 2**62], "datatype": "BOOL",
                "parameters": {"binary_data_size": 0}}, b"", "is out of range"),
        (FREE, {"name": "t", "shape": [0, 2**62, 2**62], "datatype": "BYTES",
                "parameters": {"binary_data_size": 0}}, b"", "is out of range"),
    ],
)  # fmt: skip
def test_shapes_numpy_cannot_build_are_bad_requests(
    signature: ServingSignature, tensor: dict[str, Any], tail: bytes | None, fragment: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        infer(signature, tensor, tail)
    assert fragment in str(refused.value)
    assert f"input {tensor['name']!r}" in str(refused.value)


def test_uint64_values_above_int64_are_read_exactly() -> None:
    top = 2**64 - 1
    parsed = infer(UNSIGNED, {"name": "u", "shape": [1, 4], "datatype": "UINT64",
                              "data": [top, 1, 2, 3]})  # fmt: skip
    array = parsed.inputs["u"]
    assert array.dtype == np.uint64 and array.tolist() == [[top, 1, 2, 3]]
    read = read_tensor([top, 0], dtype="uint64", rank=1, allow_nan=False, where=str)
    assert read.dtype == np.uint64 and read.tolist() == [top, 0]


def test_out_of_range_integers_are_still_refused_where_they_are() -> None:
    with pytest.raises(BadRequest, match=r"\(1,\): integer -1 is out of range for uint64"):
        read_tensor([2**64 - 1, -1], dtype="uint64", rank=1, allow_nan=False, where=str)
    with pytest.raises(BadRequest, match="integer 18446744073709551616 is out of range"):
        infer(UNSIGNED, {"name": "u", "shape": [1, 4], "datatype": "UINT64",
                         "data": [2**64, 1, 2, 3]})  # fmt: skip


def test_a_fitting_body_still_parses() -> None:
    parsed = infer(DIGITS, {"name": "x", "shape": [2, 4], "datatype": "FP32",
                            "data": [0.5] * 8})  # fmt: skip
    assert parsed.inputs["x"].shape == (2, 4) and parsed.rows == 2
    raw = np.arange(8, dtype="<f4").tobytes()
    parsed = infer(DIGITS, {"name": "x", "shape": [2, 4], "datatype": "FP32",
                            "parameters": {"binary_data_size": 32}}, raw)  # fmt: skip
    assert parsed.inputs["x"].ravel().tolist() == list(range(8))
    assert HEADER_LENGTH == "Inference-Header-Content-Length"


@pytest.mark.parametrize("header", ["²", "1²", "\xa05", "9" * 5000, "-1", "0x10", "1_0"])
def test_a_header_length_of_other_characters_is_a_bad_request(header: str) -> None:
    body = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1,2,3,4]}]}'
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        parse_infer(body, DIGITS, header_length=header)
    assert parse_infer(body, DIGITS, header_length=f" {len(body)}\t").rows == 1
