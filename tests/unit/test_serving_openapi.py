"""The OpenAPI document describes every header and body a client may send or receive: the
request id on every guarded operation, and Triton's binary tensor extension on inference."""

from __future__ import annotations

import re

from secure_maas.serving.formats.oip import HEADER_LENGTH
from secure_maas.serving.headers import REQUEST_ID_HEADER, REQUEST_ID_PATTERN, request_id
from secure_maas.serving.openapi import BINARY, JSON, document

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
