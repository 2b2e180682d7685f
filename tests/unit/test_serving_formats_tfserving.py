"""TF Serving REST bodies: the documented examples, the response shapes, and every refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from secure_maas.registry.signature import ServingSignature
from secure_maas.serving.formats.tfserving import (
    BadRequest,
    RequestFormat,
    model_metadata,
    model_status,
    parse_predict,
    predict_response,
)


def signature(
    inputs: dict[str, tuple[list[int | None], str]], outputs: list[str]
) -> ServingSignature:
    return ServingSignature.from_dict(
        {
            "inputs": [{"name": n, "shape": s, "dtype": d} for n, (s, d) in inputs.items()],
            "outputs": [{"name": n, "shape": [None, 1], "dtype": "float32"} for n in outputs],
        }
    )


ONE = signature({"x": ([None, 4], "float32")}, ["y"])
SCALAR = signature({"x": ([None], "float32")}, ["y"])
# The docs' example model, less the string input ("tag"), which secure-maas models cannot have.
NAMED = signature({"signal": ([None, 5], "int32"), "sensor": ([None, 2, 2], "float32")}, ["y"])


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def test_documented_half_plus_three_example() -> None:
    request = parse_predict(b'{"instances": [1.0, 2.0, 5.0]}', SCALAR)
    assert request.format is RequestFormat.ROW and request.rows == 3
    assert request.inputs["x"].dtype == np.float32
    outputs = {"y": request.inputs["x"] * 0.5 + 3}
    assert predict_response(request, outputs) == {"predictions": [3.5, 4.0, 5.5]}


def test_documented_named_inputs_row_and_columnar_read_the_same() -> None:
    rows = parse_predict(
        body(
            {
                "signature_name": "serving_default",
                "instances": [
                    {"signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
                    {"signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
                ],
            }
        ),
        NAMED,
    )
    columns = parse_predict(
        body(
            {
                "inputs": {
                    "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
                    "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]],
                }
            }
        ),
        NAMED,
    )
    assert (rows.format, columns.format) == (RequestFormat.ROW, RequestFormat.COLUMNAR)
    assert rows.rows == columns.rows == 2
    for name in ("signal", "sensor"):
        np.testing.assert_array_equal(rows.inputs[name], columns.inputs[name])
    assert rows.inputs["signal"].dtype == np.int32 and rows.inputs["sensor"].shape == (2, 2, 2)


def test_one_input_may_be_named_in_each_instance_or_bare_in_columns() -> None:
    named = parse_predict(b'{"instances": [{"x": [1, 2, 3, 4]}]}', ONE)
    bare = parse_predict(b'{"inputs": [[1, 2, 3, 4]]}', ONE)
    np.testing.assert_array_equal(named.inputs["x"], bare.inputs["x"])
    assert parse_predict('{"instances": [[1, 2, 3, 4]]}', ONE).rows == 1  # str bodies too


def test_response_shapes_for_one_and_several_outputs() -> None:
    one = {"y": np.array([[0.5], [1.5]], np.float32)}
    two = {"p": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "k": np.array([7, 8], np.int64)}
    assert predict_response(RequestFormat.ROW, one) == {"predictions": [[0.5], [1.5]]}
    assert predict_response(RequestFormat.COLUMNAR, one) == {"outputs": [[0.5], [1.5]]}
    assert predict_response(RequestFormat.ROW, two) == {
        "predictions": [{"p": [1.0, 2.0], "k": 7}, {"p": [3.0, 4.0], "k": 8}]
    }
    assert predict_response(RequestFormat.COLUMNAR, two) == {
        "outputs": {"p": [[1.0, 2.0], [3.0, 4.0]], "k": [7, 8]}
    }


def test_float32_outputs_round_trip_through_json() -> None:
    values = np.random.default_rng(3).normal(size=(16, 5)).astype(np.float32)
    text = json.dumps(predict_response(RequestFormat.ROW, {"y": values}))
    back = np.array(json.loads(text)["predictions"], dtype=np.float32)
    np.testing.assert_allclose(back, values, rtol=0, atol=1e-6)
    assert np.array_equal(back, values)  # in fact exactly


def test_nan_passes_only_when_the_model_accepts_it() -> None:
    text = b'{"instances": [[1, NaN, Infinity, -Infinity]]}'
    with pytest.raises(BadRequest, match="NaN is not allowed"):
        parse_predict(text, ONE)
    accepted = parse_predict(text, ONE, allow_nan=True).inputs["x"][0]
    assert np.isnan(accepted[1]) and np.isposinf(accepted[2]) and np.isneginf(accepted[3])


@pytest.mark.parametrize(
    ("text", "sig", "message"),
    [
        (b"", ONE, "The document is empty"),
        (b"{", ONE, "JSON Parse error"),
        (b"\xff\xfe", ONE, "not UTF-8"),
        (b"[[1, 2, 3, 4]]", ONE, "Is not object"),
        (b'{"instances": [[1,2,3,4]], "inputs": [[1,2,3,4]]}', ONE, "not both"),
        (b'{"rows": [[1,2,3,4]]}', ONE, "Missing 'inputs' or 'instances' key"),
        (b'{"instances": []}', ONE, "No values in 'instances'"),
        (b'{"instances": {"x": [1,2,3,4]}}', ONE, "to be a list"),
        (b'{"instances": [[1,2,3,4],[5,6,7]]}', ONE, r"instances\[1\]: a list of 3 .* ragged"),
        (b'{"instances": [[1,2,3,"4"]]}', ONE, r"instances\[0\]\[3\]: .*String.* float32"),
        (b'{"instances": [[1,2,3,true]]}', ONE, r"Boolean\) is not of expected type"),
        (b'{"instances": [[1,2,3,null]]}', ONE, r"Null\) is not of expected type"),
        (b'{"instances": [[1,2,3,Infinity]]}', ONE, "Infinity is not allowed"),
        (b'{"instances": [[1,2,3,1e999]]}', ONE, "number 1e999 is too large for a double"),
        (b'{"instances": [[1,2,3,1e39]]}', ONE, "out of range for float32"),
        (b'{"instances": [[1,2,3]]}', ONE, r"must have shape \[4\], got \[3\]"),
        (b'{"instances": [[[1,2,3,4]]]}', ONE, "too many dimensions"),
        (b'{"instances": [1, 2]}', ONE, r"instances\[0\]: found Number 1 .*too few"),
        (b'{"instances": [[1,2,3,4], {"x": [1,2,3,4]}]}', ONE, "got an object at item 1"),
        (b'{"instances": [{"x": [1,2,3,4]}, [1,2,3,4]]}', ONE, "expecting an object"),
        (b'{"instances": [{"x": [1,2,3,4], "z": 1}]}', ONE, r"keys must .*unknown input\(s\) z"),
        (b'{"instances": [{"signal": [1,2,3,4,5]}]}', NAMED, r"missing input\(s\) sensor"),
        (b'{"instances": [[1,2,3,4,5]]}', NAMED, "plain list, but expecting a list of objects"),
        (b'{"instances": [{"signal": [1,2,3,4,5.5], "sensor": [[1,2],[3,4]]}]}', NAMED,
         r"instances\[0\]\.signal\[4\]: JSON value 5\.5 \(Number\) .* int32"),
        (b'{"instances": [{"signal": [1,2,3,4,3000000000], "sensor": [[1,2],[3,4]]}]}', NAMED,
         "integer 3000000000 is out of range for int32"),
        (b'{"inputs": {"signal": [[1,2,3,4,5]]}}', NAMED, "Missing named input: sensor"),
        (b'{"inputs": {"signal": [[1,2,3,4,5]], "sensor": [[[1,2],[3,4]]], "z": 1}}', NAMED,
         r"unknown input\(s\) in 'inputs' object: z"),
        (b'{"inputs": {"signal": [[1,2,3,4,5],[1,2,3,4,5]], "sensor": [[[1,2],[3,4]]]}}', NAMED,
         "same number of rows"),
        (b'{"inputs": [[1,2,3,4,5]]}', NAMED, "plain value/list, but expecting an object"),
        (b'{"inputs": [[1,2,3]]}', ONE, r"input 'x' has shape \[1,3\], .* \[-1,4\]"),
        (b'{"inputs": []}', ONE, "no rows"),
        (b'{"inputs": 3}', ONE, "too few dimensions"),
        (b'{"signature_name": "other", "instances": [[1,2,3,4]]}', ONE, '"other" not found'),
        (b'{"signature_name": 7, "instances": [[1,2,3,4]]}', ONE, "must be a string"),
        (b'{"instances": [[1,2,3,4]], "instances": [[5,6,7,8]]}', ONE, "duplicate key"),
        (b"[" * 100_000, ONE, "JSON Parse error"),
    ],
)  # fmt: skip
def test_bad_bodies_are_refused_with_a_clear_message(
    text: bytes, sig: ServingSignature, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_predict(text, sig)


def test_model_status_as_tf_serving_reports_it() -> None:
    assert model_status([1, 2], states={2: "LOADING"}) == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}},
            {"version": "2", "state": "LOADING",
             "status": {"error_code": "OK", "error_message": ""}},
        ]
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown model version state"):
        model_status([1], states={1: "READY"})


def test_metadata_in_tf_serving_shape_with_the_guarantee() -> None:
    guarantee = {"privacy": "dp", "dp": {"epsilon": 1.5, "delta": 1e-5}}
    document = model_metadata("digits", 3, NAMED, secure_maas=guarantee)
    assert document["model_spec"] == {"name": "digits", "signature_name": "", "version": "3"}
    definition = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert definition["method_name"] == "tensorflow/serving/predict"
    assert definition["inputs"]["signal"]["dtype"] == "DT_INT32"
    assert definition["inputs"]["sensor"] == {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "2", "name": ""},
                    {"size": "2", "name": ""}],
            "unknown_rank": False,
        },
        "name": "serving_default_sensor:0",
    }  # fmt: skip
    assert set(definition["outputs"]) == {"y"}
    assert document["secure_maas"] == guarantee
    assert "secure_maas" not in model_metadata("digits", 3, NAMED)


def test_nan_and_infinity_are_read_for_floats_and_refused_by_name_for_integers() -> None:
    """TF Serving's JSON tokens: a float input takes them, an integer one says why it cannot."""
    document = b'{"instances": [{"signal": [1, 2, 3, 4, 5], "sensor": [[NaN, Infinity],'
    document += b" [-Infinity, 0.5]]}]}"
    parsed = parse_predict(document, NAMED, allow_nan=True)
    sensor = parsed.inputs["sensor"][0]
    assert np.isnan(sensor[0, 0]) and sensor[0, 1] == np.inf and sensor[1, 0] == -np.inf
    refused = b'{"instances": [{"signal": [1, NaN, 3, 4, 5], "sensor": [[1, 2], [3, 4]]}]}'
    with pytest.raises(BadRequest, match="NaN is not a valid int32: NaN and Infinity are accepted"):
        parse_predict(refused, NAMED, allow_nan=True)
    with pytest.raises(BadRequest, match="too large for a double"):
        parse_predict(b'{"instances": [[1e999, 1, 2, 3]]}', ONE, allow_nan=True)
