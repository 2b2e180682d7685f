"""The OpenAPI document describes every header and body a client may send or receive: the
request id on every guarded operation, and Triton's binary tensor extension on inference. Where
a document bounds a value (a version, a base64 string, a float's range, the outputs an infer
request names), the bound is the parsers' own."""

from __future__ import annotations

import itertools
import re
from typing import Any

from jsonschema_rs import Draft202012Validator

from secure_maas.registry.signature import ServingSignature
from secure_maas.serving.formats.oip import HEADER_LENGTH
from secure_maas.serving.formats.tensors import BadRequest, read_tensor
from secure_maas.serving.headers import REQUEST_ID_HEADER, REQUEST_ID_PATTERN, request_id
from secure_maas.serving.openapi import BINARY, JSON, document
from secure_maas.serving.openapi_model import model_document

METHODS = ("get", "post", "put", "delete", "patch")


def operations() -> list[tuple[str, str, dict]]:
    paths = document()["paths"]
    return [(p, m, op) for p, item in paths.items() for m, op in item.items() if m in METHODS]


def test_every_guarded_operation_takes_and_returns_the_request_id() -> None:
    guarded = [(p, m, op) for p, m, op in operations() if "x-action" in op]
    assert guarded
    for path, method, op in guarded:
        names = {(q["name"], q["in"]) for q in op["parameters"]}
        assert (REQUEST_ID_HEADER, "header") in names, (path, method)
        for status, response in op["responses"].items():
            assert REQUEST_ID_HEADER in response.get("headers", {}), (path, method, status)


def test_any_request_id_is_taken_and_the_pattern_kept_is_the_one_documented() -> None:
    infer = document()["paths"]["/v2/models/{name}/infer"]["post"]
    [param] = [q for q in infer["parameters"] if q["name"] == REQUEST_ID_HEADER]
    assert param["schema"] == {"type": "string"}  # never refused: replaced when not plain
    assert REQUEST_ID_PATTERN in param["description"]
    pattern = re.compile(REQUEST_ID_PATTERN)
    for value in ("abc-1", "a" * 64, "x.y:z_9"):
        assert pattern.fullmatch(value) and request_id(value) == value
    for value in ("a" * 65, "has space", "ünï", ""):
        assert not pattern.fullmatch(value) and request_id(value) != value


def test_inference_documents_the_binary_tensor_extension() -> None:
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        op = document()["paths"][path]["post"]
        assert set(op["requestBody"]["content"]) == {JSON, BINARY}
        headers = {q["name"]: q for q in op["parameters"] if q["in"] == "header"}
        assert headers[HEADER_LENGTH]["schema"] == {"type": "integer", "minimum": 0}
        ok = op["responses"]["200"]
        assert set(ok["content"]) == {JSON, BINARY}
        assert HEADER_LENGTH in ok["headers"]


# -- what the documents say agrees with the parsers -----------------------------------------


def test_the_version_pattern_is_tf_servings_int64() -> None:
    from secure_maas.serving.grammar import MAX_INT64, Route, version_overflows
    from secure_maas.serving.openapi import VERSION_PATTERN, decimal_at_most

    pattern = re.compile(VERSION_PATTERN)
    for version in ("0", "7", "0009", str(MAX_INT64), str(MAX_INT64 - 1), "1" * 18):
        assert pattern.match(version), version
        assert not version_overflows(Route("tfserving.status", {"version": version}))
    for version in (str(MAX_INT64 + 1), "9" * 19, "0" + str(MAX_INT64), "1" * 20, "", "1a"):
        assert not pattern.match(version), version
    small = re.compile(decimal_at_most(305))
    assert [n for n in range(2000) if small.match(str(n))] == list(range(306))


def string_signature() -> ServingSignature:
    return ServingSignature.from_dict(
        {
            "inputs": [{"name": "text", "shape": [None], "dtype": "string"}],
            "outputs": [{"name": "score", "shape": [None, 1], "dtype": "float32"}],
        }
    )


def test_a_b64_value_is_in_the_document_exactly_when_tf_serving_decodes_it() -> None:
    validator = Draft202012Validator(document_of(string_signature())["PredictRequest"])
    texts = ["".join(chars) for n in range(10) for chars in itertools.product("Q/=", repeat=n)]
    for text in [*texts, "a+/9", "-_8", "QQ ==", "QUJDRA", "é"]:
        value = {"b64": text}
        try:
            read_tensor([value], dtype="string", rank=1, allow_nan=False,
                        where=lambda index: "x", b64=True)  # fmt: skip
            decoded = True
        except BadRequest:
            decoded = False
        assert validator.is_valid({"instances": [value]}) == decoded, text


def test_float_ranges_end_where_the_dtype_rounds_to_infinity() -> None:
    import numpy as np

    # Half the last step past the largest finite value: from there a double rounds to infinity.
    for dtype, rounds_up in (("float16", 65520.0), ("float32", 2.0**128 - 2.0**103)):
        signature = ServingSignature.from_dict(
            {
                "inputs": [{"name": "x", "shape": [None], "dtype": dtype}],
                "outputs": [{"name": "y", "shape": [None], "dtype": dtype}],
            }
        )
        schemas = document_of(signature)
        validator = Draft202012Validator(schemas["PredictRequest"])
        below = float(np.nextafter(rounds_up, -np.inf))
        edge = float(np.finfo(dtype).max)
        for value in (edge, below, rounds_up, -below, -rounds_up, 1e300):
            with np.errstate(over="ignore"):
                finite = bool(np.isfinite(np.float64(value).astype(dtype)))
            assert validator.is_valid({"instances": [value]}) == finite, (dtype, value)


def document_of(signature: ServingSignature, **limits: int) -> dict[str, Any]:
    """The component schemas of a model document for `signature`."""
    settings = {"max_batch_size": 2, "max_string_bytes": 64, **limits}
    schemas: dict[str, Any] = model_document("m", 1, [], signature, **settings)["components"][
        "schemas"
    ]
    return schemas


def test_requested_outputs_are_listed_for_few_outputs_and_bounded_for_many() -> None:
    def signature(outputs: int) -> ServingSignature:
        return ServingSignature.from_dict(
            {
                "inputs": [{"name": "x", "shape": [None], "dtype": "float32"}],
                "outputs": [
                    {"name": f"o{i}", "shape": [None], "dtype": "float32"} for i in range(outputs)
                ],
            }
        )

    def valid(outputs: int, asked: list[str]) -> bool:
        schema = document_of(signature(outputs), max_batch_size=1)["InferRequest"]
        tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
        body = {"inputs": [tensor], "outputs": [{"name": name} for name in asked]}
        return bool(Draft202012Validator(schema).is_valid(body))

    assert valid(3, ["o2", "o0", "o1"]) and valid(3, []) and valid(3, ["o1"])
    assert not valid(3, ["o1", "o1"]) and not valid(3, ["o3"])
    assert valid(6, ["o5"]) and not valid(6, ["o5", "o4"])  # past MAX_LISTED_OUTPUTS: one


def test_the_rows_of_an_infer_request_are_listed_up_to_the_batch_size_at_most_64() -> None:
    signature = ServingSignature.from_dict(
        {
            "inputs": [{"name": "x", "shape": [None, 2], "dtype": "int8"}],
            "outputs": [{"name": "y", "shape": [None], "dtype": "float32"}],
        }
    )

    def valid(rows: int, max_batch_size: int) -> bool:
        schema = document_of(signature, max_batch_size=max_batch_size)["InferRequest"]
        tensor = {"name": "x", "shape": [rows, 2], "datatype": "INT8", "data": [1] * (2 * rows)}
        return bool(Draft202012Validator(schema).is_valid({"inputs": [tensor]}))

    assert valid(1, 3) and valid(3, 3) and not valid(4, 3) and not valid(0, 3)
    assert valid(64, 4096) and not valid(65, 4096)
    tensor = {"name": "x", "shape": [1, 2], "datatype": "INT8", "data": [127, -128]}
    schema = document_of(signature, max_batch_size=8)["InferRequest"]
    assert Draft202012Validator(schema).is_valid({"inputs": [tensor]})
    tensor["data"] = [128, 0]
    assert not Draft202012Validator(schema).is_valid({"inputs": [tensor]})
