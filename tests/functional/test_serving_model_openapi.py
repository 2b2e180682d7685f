"""A model's own OpenAPI document (`GET /v2/models/NAME[/versions/V]/openapi.json`) is guarded
exactly as that model's metadata is (the same status and body for every caller and model, an
audit event of `model:metadata`), names no other model, and describes the model's bodies
exactly: a body valid against it is served (200) and one that is not is refused (400), on
both APIs, for a one-input and a two-input model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from jsonschema_rs import Draft202012Validator

from tests.functional.serving_support import Instance, by_request, prepared

FLOAT32_EDGE = 3.4028234663852886e38  # the largest float32: still taken
FLOAT32_OVER = 3.4028235677973366e38  # where float32 rounds to infinity: refused


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "model-openapi")


def own(client: FlaskClient, instance: Instance, path: str) -> dict[str, Any]:
    answer = client.get(path + "/openapi.json", headers=instance.headers("alice"))
    assert answer.status_code == 200, answer.json
    found = answer.json
    assert isinstance(found, dict)
    return found


def test_the_document_is_guarded_as_the_models_metadata(
    client: FlaskClient, instance: Instance
) -> None:
    cases = [
        ("alice", "/v2/models/digits"),
        ("alice", "/v2/models/digits/versions/1"),
        ("alice", "/v2/models/multi"),
        ("alice", "/v2/models/listed"),  # listed only: 403
        ("alice", "/v2/models/digits_loose"),  # invisible: the 404 of a missing model
        ("alice", "/v2/models/secret"),
        ("alice", "/v2/models/nosuch"),
        ("alice", "/v2/models/digits/versions/9"),
        ("eve", "/v2/models/digits"),
        ("carol", "/v2/models/digits"),  # disabled: 401
    ]
    sent: set[str] = set()
    for who, path in cases:
        metadata = client.get(path, headers=instance.headers(who))
        rid = f"doc-{len(sent)}"
        document = client.get(
            path + "/openapi.json", headers={**instance.headers(who), "X-Request-Id": rid}
        )
        sent.add(rid)
        assert document.status_code == metadata.status_code, (who, path)
        if metadata.status_code != 200:
            assert document.json == metadata.json, (who, path)
    assert client.get("/v2/models/digits/openapi.json").status_code == 401
    recorded = by_request(instance.engine, sent)
    for rid in sent:
        [event] = recorded[rid]
        assert event.action == "model:metadata"


def test_the_document_names_its_model_only_with_fixed_paths(
    client: FlaskClient, instance: Instance
) -> None:
    bare = own(client, instance, "/v2/models/digits")
    assert set(bare["paths"]) == {
        "/v1/models/digits",
        "/v1/models/digits/metadata",
        "/v1/models/digits:predict",
        "/v1/models/digits:classify",  # one output of class scores; not :regress
        "/v2/models/digits",
        "/v2/models/digits/ready",
        "/v2/models/digits/config",
        "/v2/models/digits/stats",
        "/v2/models/digits/infer",
    }
    text = json.dumps(bare)
    for other in ("multi", "listed", "secret", "digits_loose", "canary"):
        assert f'"{other}"' not in text and f"/{other}" not in text, other
    assert "{" not in "".join(bare["paths"])
    for item in bare["paths"].values():
        for operation in item.values():
            assert all(p["in"] != "path" for p in operation.get("parameters", ()))
    # A version's document: its paths and those of the labels on it.
    second = own(client, instance, "/v2/models/digits/versions/2")
    assert "/v1/models/digits/labels/stable:predict" in second["paths"]
    assert "/v2/models/digits/versions/2/infer" in second["paths"]
    assert "/canary" not in json.dumps(second)
    first = own(client, instance, "/v2/models/digits/versions/1")
    assert "/v1/models/digits/labels/canary:predict" in first["paths"]
    # Two outputs: multi fits neither :classify nor :regress.
    multi = own(client, instance, "/v2/models/multi")
    assert not [path for path in multi["paths"] if path.endswith((":classify", ":regress"))]


def schema_of(document: dict[str, Any], name: str) -> Draft202012Validator:
    return Draft202012Validator(document["components"]["schemas"][name])


def agree(
    client: FlaskClient, instance: Instance, path: str, schema: Draft202012Validator, body: Any
) -> None:
    """The document and the server agree on `body`: valid means served, invalid refused."""
    answer = client.post(path, json=body, headers=instance.headers("alice"))
    expected = 200 if schema.is_valid(body) else 400
    assert answer.status_code == expected, (body, answer.json)


def test_predict_bodies_valid_against_the_document_are_served_and_others_refused(
    client: FlaskClient, instance: Instance
) -> None:
    digits = own(client, instance, "/v2/models/digits")
    schema = schema_of(digits, "PredictRequest")
    row = [0.5, 1, -2, FLOAT32_EDGE]
    bodies: list[dict[str, Any]] = [
        {"instances": [row]},
        {"instances": [row, row], "signature_name": "serving_default"},
        {"instances": [{"x": row}]},
        {"inputs": [row]},
        {"inputs": {"x": [row, row]}},
        {"instances": [row], "extra": 1},  # unknown keys are ignored, as TF Serving does
        {"instances": []},
        {"instances": [row[:3]]},
        {"instances": [[0.5, 1, -2, FLOAT32_OVER]]},
        {"instances": [["a", 1, 2, 3]]},
        {"instances": [row, {"x": row}]},
        {"instances": [{"x": row, "y": row}]},
        {"instances": [row], "inputs": [row]},
        {"instances": [row], "signature_name": "other"},
        {"inputs": {"x": [row], "y": [row]}},
        {"inputs": []},
    ]
    for body in bodies:
        agree(client, instance, "/v1/models/digits:predict", schema, body)
    multi = schema_of(own(client, instance, "/v2/models/multi"), "PredictRequest")
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0]
    for body in (
        {"instances": [{"a": a, "b": b}, {"a": a, "b": b}]},
        {"inputs": {"a": [a, a], "b": [b, b]}},
        {"inputs": {"a": [a, a], "b": [b]}},  # rows differ
        {"instances": [a]},
        {"instances": [{"a": a}]},
        {"inputs": {"a": [b], "b": [a]}},
    ):
        agree(client, instance, "/v1/models/multi:predict", multi, body)


def test_infer_bodies_valid_against_the_document_are_served_and_others_refused(
    client: FlaskClient, instance: Instance
) -> None:
    multi = schema_of(own(client, instance, "/v2/models/multi"), "InferRequest")

    def tensor(name: str, rows: int, width: int, **extra: Any) -> dict[str, Any]:
        data = [0.25] * (rows * width)
        return {"name": name, "shape": [rows, width], "datatype": "FP32", "data": data, **extra}

    for body in (
        {"inputs": [tensor("a", 2, 3), tensor("b", 2, 2)]},
        {"inputs": [tensor("a", 1, 3), tensor("b", 1, 2)], "id": "r1", "outputs": []},
        {"inputs": [tensor("a", 1, 3), tensor("b", 1, 2)], "id": None, "parameters": None},
        {
            "inputs": [tensor("a", 1, 3), tensor("b", 1, 2, parameters={"x": 1})],
            "outputs": [{"name": "gate"}, {"name": "score", "parameters": {"binary_data": False}}],
        },
        {"inputs": [tensor("a", 2, 3), tensor("b", 1, 2)]},  # rows differ
        {"inputs": [tensor("a", 1, 3)]},  # b missing
        {"inputs": [tensor("a", 1, 3), tensor("a", 1, 3)]},
        {"inputs": [tensor("a", 1, 3), tensor("b", 1, 3)]},
        {"inputs": [tensor("a", 1, 3), {**tensor("b", 1, 2), "data": [1.0]}]},
        {"inputs": [tensor("a", 1, 3), tensor("b", 1, 2)], "id": 7},
        {"inputs": [tensor("a", 1, 3), tensor("b", 1, 2)], "outputs": [{"name": "gate"}] * 2},
        {
            "inputs": [tensor("a", 1, 3), tensor("b", 1, 2)],
            "outputs": [{"name": "gate", "parameters": {"classification": 2}}],
        },
        {
            "inputs": [tensor("a", 1, 3), tensor("b", 1, 2, parameters={"binary_data_size": 8})],
        },
        {"inputs": [tensor("a", 1, 3), tensor("b", 1, 2)], "parameters": {"binary_data_output": 1}},
    ):
        agree(client, instance, "/v2/models/multi/infer", multi, body)


def test_classify_bodies_valid_against_the_document_are_served_and_others_refused(
    client: FlaskClient, instance: Instance
) -> None:
    schema = schema_of(own(client, instance, "/v2/models/digits"), "ExamplesRequest")
    row = [0.5, 1, -2, FLOAT32_EDGE]
    bodies: list[dict[str, Any]] = [
        {"examples": [{"x": row}, {"x": row}]},
        {"examples": [{}, {}], "context": {"x": row}},
        {"examples": [{"x": row}], "context": {}, "signature_name": ""},
        {"examples": []},
        {"examples": [{"x": row[:3]}]},
        {"examples": [{"x": row}], "context": {"x": row}},
        {"examples": [{"x": row, "y": 1}]},
        {"examples": [{"x": [[0.5, 1], [2, 3]]}]},
        {"examples": [{"x": [0.5, 1, -2, FLOAT32_OVER]}]},
        {"examples": [{"x": row}], "context": None},
        {"context": {"x": row}},
    ]
    for body in bodies:
        agree(client, instance, "/v1/models/digits:classify", schema, body)
