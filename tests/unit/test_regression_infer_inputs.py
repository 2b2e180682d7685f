"""Regressions found by fuzzing OIP infer bodies (issue 8, tests/system/test_fuzz.py): each of
these bodies made `parse_infer` raise a numpy error, which the server answered 500. Each is now
a `BadRequest` (400) naming the input, or, for an in-range UINT64, a correct read."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from secure_maas.registry.signature import ServingSignature
from secure_maas.serving.formats.oip import HEADER_LENGTH, BadRequest, parse_infer
from secure_maas.serving.formats.tensors import read_tensor

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
