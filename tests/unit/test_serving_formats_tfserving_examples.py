"""TF Serving's classify and regress bodies: examples onto inputs, which models fit, the results
and every refusal."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from secure_maas.registry.signature import ServingSignature
from secure_maas.serving.formats.tfserving import BadRequest
from secure_maas.serving.formats.tfserving_examples import (
    Method,
    classify_response,
    fitting_output,
    parse_examples,
    regress_response,
)

CLASSIFY, REGRESS = Method.CLASSIFY, Method.REGRESS
Shape = list[int | None]


def signature(
    inputs: dict[str, tuple[Shape, str]], outputs: dict[str, tuple[Shape, str]]
) -> ServingSignature:
    def specs(named: dict[str, tuple[Shape, str]]) -> list[dict[str, Any]]:
        return [{"name": n, "shape": s, "dtype": d} for n, (s, d) in named.items()]

    return ServingSignature.from_dict({"inputs": specs(inputs), "outputs": specs(outputs)})


CLASSIFIER = signature({"x": ([None, 4], "float32")}, {"probs": ([None, 3], "float32")})
# Several inputs: a scalar, a matrix per example, integers, a list of free length.
MIXED = signature(
    {
        "rooms": ([None], "float32"),
        "grid": ([None, 2, 3], "float64"),
        "year": ([None, 1], "int32"),
        "tags": ([None, None], "float32"),
    },
    {"price": ([None, 1], "float32")},
)
FLAT = signature({"x": ([None, 2], "float32")}, {"value": ([None], "float32")})


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def test_examples_map_onto_inputs_by_name_row_major() -> None:
    examples = [
        {"rooms": 3, "grid": [1, 2, 3, 4, 5, 6], "year": 1999, "tags": [0.5, 1.5]},
        {"rooms": [4.5], "grid": [6, 5, 4, 3, 2, 1], "year": [2001], "tags": [2, 3]},
    ]
    parsed = parse_examples(body({"examples": examples}), MIXED, REGRESS)
    assert parsed.rows == 2 and parsed.output == "price"
    assert parsed.signature_name == "serving_default"
    inputs = parsed.inputs
    assert list(inputs) == ["rooms", "grid", "year", "tags"]
    np.testing.assert_array_equal(inputs["rooms"], np.array([3, 4.5], np.float32))
    assert inputs["rooms"].dtype == np.float32
    np.testing.assert_array_equal(inputs["grid"][0], [[1, 2, 3], [4, 5, 6]])
    assert inputs["grid"].shape == (2, 2, 3) and inputs["grid"].dtype == np.float64
    np.testing.assert_array_equal(inputs["year"], np.array([[1999], [2001]], np.int32))
    assert inputs["year"].dtype == np.int32
    np.testing.assert_array_equal(inputs["tags"], [[0.5, 1.5], [2, 3]])


def test_context_features_apply_to_every_example() -> None:
    document = {
        "signature_name": "",
        "context": {"grid": [1, 2, 3, 4, 5, 6], "year": 2020},
        "examples": [{"rooms": 1, "tags": []}, {"rooms": 2, "tags": []}, {"rooms": 3, "tags": []}],
    }
    parsed = parse_examples(body(document), MIXED, REGRESS)
    assert parsed.rows == 3
    assert parsed.inputs["grid"].shape == (3, 2, 3)
    np.testing.assert_array_equal(parsed.inputs["grid"][2], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(parsed.inputs["year"], [[2020]] * 3)
    assert parsed.inputs["tags"].shape == (3, 0)


def test_nan_and_infinity_are_read_for_float_features() -> None:
    text = b'{"examples": [{"x": [NaN, Infinity, -Infinity, 1]}]}'
    x = parse_examples(text, CLASSIFIER, CLASSIFY).inputs["x"][0]
    assert np.isnan(x[0]) and np.isposinf(x[1]) and np.isneginf(x[2]) and x[3] == 1


def test_classify_gives_every_class_with_its_score_in_score_order() -> None:
    parsed = parse_examples(body({"examples": [{"x": [1, 2, 3, 4]}] * 2}), CLASSIFIER, CLASSIFY)
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    answer = classify_response(parsed, {"probs": scores})
    assert list(answer) == ["results"]
    first = [float(np.float32(v)) for v in (0.1, 0.7, 0.2)]
    assert answer["results"] == [
        [["0", first[0]], ["1", first[1]], ["2", first[2]]],
        [["0", 0.5], ["1", 0.25], ["2", 0.25]],
    ]
    # Each score is the double of the float32 the model gave: it reads back exactly.
    for row, want in zip(answer["results"], scores, strict=True):
        np.testing.assert_array_equal(np.array([s for _, s in row], np.float32), want)


def test_regress_gives_one_value_per_example_for_both_output_shapes() -> None:
    parsed = parse_examples(body({"examples": [{"x": [1, 2]}, {"x": [3, 4]}]}), FLAT, REGRESS)
    assert regress_response(parsed, {"value": np.array([1.5, -2.0], np.float32)}) == {
        "results": [1.5, -2.0]
    }
    column = parse_examples(
        body({"context": {"rooms": 1, "grid": [0] * 6, "year": 1}, "examples": [{"tags": [1]}]}),
        MIXED,
        REGRESS,
    )
    assert regress_response(column, {"price": np.array([[7.25]], np.float32)}) == {
        "results": [7.25]
    }


def test_a_model_call_that_returns_the_wrong_shape_is_an_internal_error() -> None:
    parsed = parse_examples(body({"examples": [{"x": [1, 2]}]}), FLAT, REGRESS)
    with pytest.raises(ValueError):
        regress_response(parsed, {"value": np.zeros((2,), np.float32)})
    with pytest.raises(ValueError):
        regress_response(parsed, {"other": np.zeros((1,), np.float32)})
    classified = parse_examples(body({"examples": [{"x": [1, 2, 3, 4]}]}), CLASSIFIER, CLASSIFY)
    with pytest.raises(ValueError):
        classify_response(classified, {"probs": np.zeros((1,), np.float32)})


@pytest.mark.parametrize(
    ("sig", "method", "message"),
    [
        (signature({"x": ([None, 4], "float32")},
                   {"a": ([None, 2], "float32"), "b": ([None, 1], "float32")}),
         CLASSIFY, r"cannot classify: it has 2 outputs \(a, b\)"),
        (signature({"x": ([None, 4], "float32")},
                   {"a": ([None, 2], "float32"), "b": ([None, 1], "float32")}),
         REGRESS, r"cannot regress: it has 2 outputs"),
        (CLASSIFIER, REGRESS, r"shape \[batch_size\] or \[batch_size, 1\] but got \[-1,3\]"),
        (signature({"x": ([None, 4], "float32")}, {"y": ([None, None], "float32")}), REGRESS,
         r"but got \[-1,-1\]"),
        (FLAT, CLASSIFY, r"shape \[batch_size, num_classes\] but got \[-1\]"),
        (signature({"x": ([None, 4], "float32")}, {"y": ([None, 2, 2], "float32")}), CLASSIFY,
         r"but got \[-1,2,2\]"),
        (signature({"x": ([None, 4], "float32")}, {"y": ([None, 3], "int64")}), CLASSIFY,
         "is int64, where classify needs floating-point"),
        (signature({"x": ([None, None, 3], "float32")}, {"y": ([None, 3], "float32")}),
         CLASSIFY, r"input x has shape \[-1,-1,3\]: a feature is a flat list"),
    ],
)  # fmt: skip
def test_models_that_do_not_fit_are_refused_whatever_the_body(
    sig: ServingSignature, method: Method, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_examples(b"not even JSON", sig, method)


def test_fitting_outputs() -> None:
    assert fitting_output(CLASSIFIER, CLASSIFY).name == "probs"
    assert fitting_output(FLAT, REGRESS).name == "value"
    assert fitting_output(MIXED, REGRESS).name == "price"
    # A one-unit sigmoid scores one class: TF Serving classifies it too.
    assert fitting_output(MIXED, CLASSIFY).name == "price"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "The document is empty"),
        (b"[]", "Is not object"),
        (b'{"instances": [[1,2,3,4]]}', "When method is classify, key 'examples' is expected"),
        (b'{"examples": {"x": [1,2,3,4]}}', "Expecting 'examples' value to be an list/array"),
        (b'{"examples": []}', "'examples' value is an empty array"),
        (b'{"examples": [[1,2,3,4]]}', r"examples\[0\]: Example must be JSON object .*Array"),
        (b'{"context": [1], "examples": [{"x": [1,2,3,4]}]}', "'context' must be a JSON object"),
        (b'{"examples": [{"x": [1,2,3,4]}, {}]}', r"examples\[1\]: missing feature\(s\) x"),
        (b'{"examples": [{"x": [1,2,3,4], "z": 1}]}', r"examples\[0\]: unknown feature\(s\) z"),
        (b'{"context": {"z": 1}, "examples": [{"x": [1,2,3,4]}]}',
         r"context: unknown feature\(s\) z; the model takes x"),
        (b'{"context": {"x": [1,2,3,4]}, "examples": [{"x": [1,2,3,4]}]}',
         r"examples\[0\]: feature\(s\) x also in 'context'"),
        (b'{"examples": [{"x": [1,2,3]}]}',
         r"examples\[0\]\.x: 3 value\(s\) where one example takes 4 for input x of shape \[-1,4\]"),
        (b'{"examples": [{"x": 1}]}', r"1 value\(s\) where one example takes 4"),
        (b'{"examples": [{"x": [[1,2],[3,4]]}]}',
         r"examples\[0\]\.x has element with unexpected JSON type: Array"),
        (b'{"examples": [{"x": [1,2,3,null]}]}', "unexpected JSON type: Null"),
        (b'{"examples": [{"x": [1,2,3,{"b64": "AAAA"}]}]}',
         r"examples\[0\]\.x: a binary \{\"b64\": ...\} value, but the model takes no string"),
        (b'{"context": {"x": {"b64": "AAAA"}}, "examples": [{}]}', r"context\.x: a binary"),
        (b'{"examples": [{"x": [1,2,3,"4"]}]}', r"examples\[0\]\.x\[3\]: .*String.* float32"),
        (b'{"examples": [{"x": [1,2,3,true]}]}', r"examples\[0\]\.x\[3\]: .*Boolean"),
        (b'{"examples": [{"x": [1,2,3,1e39]}]}', "out of range for float32"),
        (b'{"signature_name": "other", "examples": [{"x": [1,2,3,4]}]}', '"other" not found'),
        (b'{"examples": [{"x": [1,2,3,4], "x": [1,2,3,4]}]}', "duplicate key"),
    ],
)  # fmt: skip
def test_bad_bodies_are_refused_with_a_clear_message(text: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_examples(text, CLASSIFIER, CLASSIFY)


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        ([{"rooms": 1, "grid": [0] * 6, "year": 1.5, "tags": []}],
         r"examples\[0\]\.year\[0\]: JSON value 1\.5 .* int32"),
        ([{"rooms": 1, "grid": [0] * 6, "year": 3_000_000_000, "tags": []}],
         r"examples\[0\]\.year\[0\]: integer 3000000000 is out of range for int32"),
        ([{"rooms": 1, "grid": [0] * 6, "year": 1, "tags": [1, 2]},
          {"rooms": 1, "grid": [0] * 6, "year": 1, "tags": [1]}],
         r"examples\[1\]\.tags: 1 value\(s\) where one example takes 2, as in the first"),
        ([{"rooms": [1, 2], "grid": [0] * 6, "year": 1, "tags": []}],
         r"examples\[0\]\.rooms: 2 value\(s\) where one example takes 1 for input rooms"),
    ],
)  # fmt: skip
def test_feature_values_follow_the_input_dtype_and_shape(
    examples: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_examples(body({"examples": examples}), MIXED, REGRESS)
