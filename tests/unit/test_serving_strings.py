"""String tensors (issue 18.2): TF Serving's plain strings and `{"b64": ...}`, OIP's BYTES in JSON
and in Triton's binary layout (checked against tritonclient's own serialiser), the size limit
per element, string outputs written as TF Serving and Triton write them, the signature's
`string` dtype, and object arrays of bytes over the model process's socket."""

from __future__ import annotations

import base64
import json
import socket
import struct
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from secure_maas.dataplane.batcher import _problem
from secure_maas.dataplane.wire import PREFIX, WireError, receive, send
from secure_maas.registry.signature import ServingSignature, TensorSpec
from secure_maas.serving.formats import oip, tfserving, tfserving_examples, triton
from secure_maas.serving.formats.tensors import BadRequest

TEXT = ServingSignature(
    inputs=(TensorSpec("text", (None, 1), "string"),),
    outputs=(TensorSpec("probs", (None, 2), "float32"), TensorSpec("echo", (None, 1), "string")),
)
MIXED = ServingSignature(
    inputs=(TensorSpec("text", (None,), "string"), TensorSpec("x", (None, 2), "float32")),
    outputs=(TensorSpec("score", (None,), "float32"),),
)
NOT_UTF8 = b"\xff\xfe\x00raw"


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def objects(values: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


# -- the signature ----------------------------------------------------------------------------


def test_the_signature_carries_string_and_the_apis_name_it() -> None:
    assert ServingSignature.from_json(TEXT.to_json()) == TEXT
    metadata = tfserving.model_metadata("m", 1, TEXT)
    inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["text"]["dtype"] == "DT_STRING"
    assert oip.model_metadata("m", [1], TEXT)["inputs"][0]["datatype"] == "BYTES"
    assert triton.config_type("string") == "TYPE_STRING"


# -- TF Serving -------------------------------------------------------------------------------


def test_tfserving_reads_plain_strings_and_b64_objects_as_bytes() -> None:
    body = {"instances": [["héllo"], [b64(NOT_UTF8)], [{"b64": "aGk"}]]}  # unpadded, as absl
    parsed = tfserving.parse_predict(json.dumps(body), TEXT)
    assert parsed.inputs["text"].dtype == object and parsed.rows == 3
    assert parsed.inputs["text"].tolist() == [["héllo".encode()], [NOT_UTF8], [b"hi"]]
    columnar = {"inputs": {"text": ["a", b64(b"b")], "x": [[1, 2], [3, 4]]}}
    parsed = tfserving.parse_predict(json.dumps(columnar), MIXED)
    assert parsed.inputs["text"].tolist() == [b"a", b"b"]
    rows = {"instances": [{"text": b64(b"\x00"), "x": [1, 2]}]}
    assert tfserving.parse_predict(json.dumps(rows), MIXED).inputs["text"].tolist() == [b"\x00"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": {"text": ["a"], "x": [[b64(b"1"), 2]]}},
         r'inputs.x\[0\]\[0\]: a binary \{"b64": \.\.\.\} value .*base64 values are for string '
         "inputs only"),
        ({"instances": [[{"b64": "!!!"}]]}, r"instances\[0\]\[0\]: Unable to base64 decode"),
        ({"instances": [[{"b64": "a"}]]}, "Unable to base64 decode"),
        ({"instances": [[{"b64": 1}]]}, r'is not a binary value: write \{"b64"'),
        ({"instances": [[{"b64": "aGk=", "x": 1}]]}, "is not a binary value"),
        ({"instances": [[1]]}, r"JSON value 1 \(Number\) is not of expected type"),
        ({"instances": [["\ud800"]]}, "not valid Unicode"),
    ],
)  # fmt: skip
def test_tfserving_refuses_bad_string_values_clearly(body: dict[str, Any], message: str) -> None:
    signature = MIXED if "inputs" in body else TEXT
    with pytest.raises(BadRequest, match=message):
        tfserving.parse_predict(json.dumps(body), signature)


def test_tfserving_bounds_each_string_element() -> None:
    limit = 8
    ok = {"instances": [["x" * limit], [b64(b"y" * limit)]]}
    assert tfserving.parse_predict(json.dumps(ok), TEXT, max_string_bytes=limit).rows == 2
    for value in ("x" * (limit + 1), "é" * 5, b64(b"y" * (limit + 1)), b64(b"y" * 10_000)):
        body = json.dumps({"instances": [["a"], [value]]})
        with pytest.raises(BadRequest, match=r"instances\[1\]\[0\]: a string of .*than 8"):
            tfserving.parse_predict(body, TEXT, max_string_bytes=limit)


def test_tfserving_writes_strings_as_text_unless_binary_or_named_bytes() -> None:
    outputs = {
        "probs": np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32),
        "echo": objects([b"caf\xc3\xa9", NOT_UTF8], (2, 1)),
    }
    row = tfserving.predict_response(tfserving.RequestFormat.ROW, outputs)
    assert row["predictions"][0]["echo"] == ["café"]
    assert row["predictions"][1]["echo"] == [b64(NOT_UTF8)]
    assert json.loads(json.dumps(row)) == row
    named = tfserving.predict_response(
        tfserving.RequestFormat.COLUMNAR, {"image_bytes": objects([b"ab"], (1,))}
    )
    assert named == {"outputs": [b64(b"ab")]}


def test_tfserving_examples_take_strings_for_string_inputs_only() -> None:
    body = {"examples": [{"text": "a", "x": [1, 2]}, {"text": b64(b"b"), "x": [3, 4]}]}
    signature = ServingSignature(
        inputs=MIXED.inputs, outputs=(TensorSpec("value", (None, 1), "float32"),)
    )
    parsed = tfserving_examples.parse_examples(
        json.dumps(body), signature, tfserving_examples.Method.REGRESS
    )
    assert parsed.inputs["text"].tolist() == [b"a", b"b"]
    body = {"examples": [{"text": "a", "x": [b64(b"1"), 2]}]}
    with pytest.raises(BadRequest, match="takes no string input"):
        tfserving_examples.parse_examples(
            json.dumps(body), signature, tfserving_examples.Method.REGRESS
        )


# -- OIP ----------------------------------------------------------------------------------------


def infer_body(tensor: dict[str, Any]) -> str:
    return json.dumps(
        {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", **tensor}]}
    )


def test_oip_reads_bytes_from_json_strings() -> None:
    parsed = oip.parse_infer(infer_body({"data": ["héllo", ""]}), TEXT)
    assert parsed.inputs["text"].tolist() == [["héllo".encode()], [b""]]
    nested = oip.parse_infer(infer_body({"data": [["a"], ["b"]]}), TEXT)
    assert nested.inputs["text"].tolist() == [[b"a"], [b"b"]]
    with pytest.raises(BadRequest, match=r"BYTES data are JSON strings"):
        oip.parse_infer(infer_body({"data": ["a", b64(b"b")]}), TEXT)
    with pytest.raises(BadRequest, match=r"data\[1\]: a string of more than 4 bytes"):
        oip.parse_infer(infer_body({"data": ["a", "bbbbb"]}), TEXT, max_string_bytes=4)


def test_oip_reads_tritonclients_binary_bytes() -> None:
    values = objects([NOT_UTF8, b""], (2, 1))
    tail = serialize_byte_tensor(values).item()
    head = infer_body({"parameters": {"binary_data_size": len(tail)}}).encode()
    parsed = oip.parse_infer(head + tail, TEXT, header_length=len(head))
    assert parsed.inputs["text"].tolist() == values.tolist()
    with pytest.raises(BadRequest, match="element 0: a string of 6 bytes, more than 5"):
        oip.parse_infer(head + tail, TEXT, header_length=len(head), max_string_bytes=5)


@pytest.mark.parametrize(
    "tail",
    [
        struct.pack("<I", 3) + b"ab",  # the element runs past the end
        struct.pack("<I", 1) + b"a" + struct.pack("<I", 0xFFFFFFFF),  # a huge claimed length
        struct.pack("<I", 1) + b"a",  # one element where the shape says two
        struct.pack("<I", 0) * 2 + b"\0",  # a byte left over
        b"\0\0",  # a length prefix cut short
    ],
)
def test_oip_refuses_malformed_binary_bytes(tail: bytes) -> None:
    head = infer_body({"parameters": {"binary_data_size": len(tail)}}).encode()
    with pytest.raises(BadRequest, match="BYTES binary data does not hold exactly 2|more than"):
        oip.parse_infer(head + tail, TEXT, header_length=len(head))


def test_oip_writes_bytes_outputs_as_json_or_binary() -> None:
    request = oip.parse_infer(infer_body({"data": ["a", "b"]}), TEXT)
    outputs = {
        "probs": np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32),
        "echo": objects([b"caf\xc3\xa9", b"x"], (2, 1)),
    }
    answer = oip.infer_response(request, outputs, model_name="m", model_version=1)
    echo = answer.document["outputs"][1]
    assert echo == {"name": "echo", "datatype": "BYTES", "shape": [2, 1], "data": ["café", "x"]}
    # Not UTF-8: no JSON string can hold it, so it comes back as binary data.
    outputs["echo"] = objects([NOT_UTF8, b"x"], (2, 1))
    answer = oip.infer_response(request, outputs, model_name="m", model_version=1)
    length = int(answer.headers[oip.HEADER_LENGTH])
    echo = answer.document["outputs"][1]
    assert "data" not in echo and answer.content_type == oip.BINARY_CONTENT_TYPE
    blob = answer.body[length:]
    assert len(blob) == echo["parameters"]["binary_data_size"]
    assert deserialize_bytes_tensor(blob).tolist() == [NOT_UTF8, b"x"]
    wanted = {"outputs": [{"name": "echo", "parameters": {"binary_data": True}}]}
    request = oip.parse_infer(
        json.dumps({**json.loads(infer_body({"data": ["a", "b"]})), **wanted}), TEXT
    )
    outputs["echo"] = objects([b"a", b"bc"], (2, 1))
    answer = oip.infer_response(request, outputs, model_name="m", model_version=1)
    blob = answer.body[int(answer.headers[oip.HEADER_LENGTH]) :]
    assert blob == serialize_byte_tensor(outputs["echo"]).item()


# -- the model process's socket and its batcher ---------------------------------------------


def test_bytes_arrays_cross_the_socket_length_prefixed() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        values = objects([NOT_UTF8, b"", b"x" * 70_000, b"abc"], (2, 2))
        many = objects([b"w%d" % i for i in range(5000)], (5000,))  # past sendmsg's IOV_MAX
        send(left, {"op": "predict"}, {"text": values, "many": many, "n": np.arange(3)})
        frame = receive(right)
        assert frame is not None
        head, arrays = frame
        assert head == {"op": "predict"}
        assert arrays["text"].dtype == object and arrays["text"].tolist() == values.tolist()
        assert arrays["many"].tolist() == many.tolist()
        assert arrays["n"].tolist() == [0, 1, 2]
        with pytest.raises(WireError, match="holds a str"):
            send(left, {}, {"text": objects(["not bytes"], (1,))})


@pytest.mark.parametrize(
    ("shape", "body"),
    [
        ([10**12], struct.pack("<I", 0) * 4),  # more elements than the body could hold
        ([2], struct.pack("<I", 1) + b"a" + struct.pack("<I", 5) + b"ab"),  # runs past
        ([1], struct.pack("<I", 1) + b"ab"),  # bytes left over
        ([-1], b""),
    ],
)
def test_a_forged_bytes_frame_is_refused(shape: list[int], body: bytes) -> None:
    head = json.dumps({"arrays": [["text", "bytes", shape]]}).encode()
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        left.sendall(PREFIX.pack(len(head), len(body)) + head + body)
        with pytest.raises(WireError):
            receive(right)


def test_the_batcher_takes_bytes_for_string_inputs_only() -> None:
    specs = {spec.name: spec for spec in MIXED.inputs}
    good = {"text": objects([b"a"], (1,)), "x": np.zeros((1, 2), np.float32)}
    assert _problem(good, specs) is None
    assert "takes strings" in str(_problem({**good, "text": np.zeros(1)}, specs))
    assert "takes strings" in str(_problem({**good, "text": objects(["a"], (1,))}, specs))
    assert "not a number" in str(_problem({**good, "x": objects([b"a", b"b"], (1, 2))}, specs))
