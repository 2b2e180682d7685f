"""TF Serving's Classify and Regress REST API: examples in, class scores or values out.

Request (`POST /v1/models/NAME[/versions/V|/labels/L]:classify` or `:regress`), as TF Serving
documents it::

    {"signature_name": "serving_default",         # optional
     "context": {"feature": <value>|<list>, ...},  # optional: features shared by every example
     "examples": [{"feature": <value>|<list>, ...}, ...]}

TF Serving hands the examples to a signature that parses `tf.Example` protos. A secure-maas
model takes tensors instead, so each example is mapped onto the model's inputs by name, as
`tf.io.parse_example` with a `FixedLenFeature` per input would: a feature is a value or a flat
list, row-major, of exactly as many values as one example of the input holds (one for an
input of shape `[-1]`, four for `[-1, 4]`, six for `[-1, 2, 3]`); an input of shape `[-1, -1]`
takes a list of any length, the same in every example. Every input must be given, in the
example or in `context`, never in both; a feature that is no input is refused (where
`tf.Example` parsing would ignore it). Values follow the input's dtype as in `:predict`
(NaN and Infinity for floats; strings and `{"b64": ...}` byte values for a string input,
as a `bytes_list` feature; a b64 value for any other input is refused).

Which models fit: for `:classify`, a model with one output of class scores, shape
`[batch, num_classes]` and floating point; for `:regress`, one output of shape `[batch]` or
`[batch, 1]`, floating point. Anything else is a 400 that says why.

Response: `{"results": [[["0", 0.1], ["1", 0.9]], ...]}` for classify (every class, in the
order of the scores tensor, as TF Serving gives them), `{"results": [1.5, ...]}` for regress,
one entry per example. The key is `results`, which TF Serving's server writes
(`json_tensor.cc`, `kClassifyRegressResponseKey`), although its REST documentation shows
`result`: clients were written against the server. A class's label is its index as a string:
the signed artifact carries no class names (TF Serving would answer `""` for a model without a
`classes` output, which tells a client nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from secure_maas.registry.signature import STRING, ServingSignature, TensorSpec
from secure_maas.serving.formats.tensors import (
    MAX_STRING_BYTES,
    Array,
    BadRequest,
    Buffer,
    decode_json,
    is_b64,
    json_type,
    preview,
    read_tensor,
    shape_text,
    shown,
)
from secure_maas.serving.formats.tfserving import signature_name

__all__ = [
    "ExamplesRequest",
    "Method",
    "classify_response",
    "fitting_output",
    "parse_examples",
    "regress_response",
]


class Method(StrEnum):
    CLASSIFY = "classify"
    REGRESS = "regress"


@dataclass(frozen=True)
class ExamplesRequest:
    """A classify or regress body mapped onto the model's inputs, and the output it reads."""

    method: Method
    inputs: dict[str, Array]
    output: str
    signature_name: str

    @property
    def rows(self) -> int:
        """The number of examples: what quotas and row limits count."""
        return int(next(iter(self.inputs.values())).shape[0])


def fitting_output(signature: ServingSignature, method: Method) -> TensorSpec:
    """The output `method` reads from a model with `signature`, or `BadRequest` saying why the
    model does not fit it."""
    outputs = signature.outputs
    if len(outputs) != 1:
        what = "class scores" if method is Method.CLASSIFY else "regression values"
        raise BadRequest(
            f"this model cannot {method.value}: it has {len(outputs)} outputs "
            f"({', '.join(shown(o.name) for o in outputs)}), where {method.value} needs one "
            f"output of {what}; use :predict"
        )
    output = outputs[0]
    shape = output.shape
    if method is Method.CLASSIFY:
        if len(shape) != 2:
            raise BadRequest(
                f"this model cannot classify: expected its output {shown(output.name)} to have "
                f"shape [batch_size, num_classes] but got {shape_text(shape)}; use :predict"
            )
    elif not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise BadRequest(
            f"this model cannot regress: expected its output {shown(output.name)} to have "
            f"shape [batch_size] or [batch_size, 1] but got {shape_text(shape)}; use :predict"
        )
    if np.dtype(output.dtype).kind != "f":
        raise BadRequest(
            f"this model cannot {method.value}: its output {shown(output.name)} is "
            f"{output.dtype}, where {method.value} needs floating-point values; use :predict"
        )
    return output


def parse_examples(
    body: Buffer | str,
    signature: ServingSignature,
    method: Method,
    *,
    allow_nan: bool = True,
    max_string_bytes: int = MAX_STRING_BYTES,
) -> ExamplesRequest:
    """Read a classify or regress body for a model with `signature`, or raise `BadRequest`
    (first if the model does not fit `method`, whatever the body)."""
    output = fitting_output(signature, method)
    for spec in signature.inputs:
        _example_shape(spec)  # refuse a model whose inputs no flat feature can fill
    document = decode_json(body, allow_nan=allow_nan)
    if not isinstance(document, dict):
        raise BadRequest(f"JSON Value: {preview(document)} Is not object")
    name = signature_name(document)
    context = document.get("context", {})
    if not isinstance(context, dict):
        raise BadRequest(f"'context' must be a JSON object but got JSON {json_type(context)}")
    if "examples" not in document:
        raise BadRequest(
            f"When method is {method.value}, key 'examples' is expected and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise BadRequest("Expecting 'examples' value to be an list/array")
    if not examples:
        raise BadRequest("'examples' value is an empty array")
    names = signature.input_names
    _check_features("context", context, names)
    for index, example in enumerate(examples):
        if not isinstance(example, dict):
            raise BadRequest(
                f"examples[{index}]: Example must be JSON object but got JSON {json_type(example)}"
            )
        _check_features(f"examples[{index}]", example, names)
        shared = sorted(set(example) & set(context))
        if shared:
            raise BadRequest(
                f"examples[{index}]: feature(s) {', '.join(shown(k) for k in shared)} also in "
                "'context': a feature given in 'context' must not appear in examples"
            )
        missing = [n for n in names if n not in example and n not in context]
        if missing:
            raise BadRequest(
                f"examples[{index}]: missing feature(s) {', '.join(shown(n) for n in missing)} "
                f"(neither in the example nor in 'context'); the model takes {', '.join(names)}"
            )
    rows = len(examples)
    limits = (allow_nan, max_string_bytes)
    inputs = {
        spec.name: (
            np.repeat(_tensor([context[spec.name]], spec, limits, "context"), rows, axis=0)
            if spec.name in context
            else _tensor([e[spec.name] for e in examples], spec, limits, "examples")
        )
        for spec in signature.inputs
    }
    return ExamplesRequest(method, inputs, output.name, name)


def _check_features(where: str, features: Mapping[str, Any], names: list[str]) -> None:
    extra = [shown(key) for key in sorted(set(features) - set(names))]
    if extra:
        raise BadRequest(
            f"{where}: unknown feature(s) {', '.join(extra)}; the model takes {', '.join(names)}"
        )


def _example_shape(spec: TensorSpec) -> tuple[int, ...] | None:
    """One example's shape of the input (None: a free length, for a `[-1, -1]` input)."""
    if not spec.shape:
        raise BadRequest(f"input {shown(spec.name)} has no batch dimension; use :predict")
    dims = spec.shape[1:]
    if len(dims) == 1 and dims[0] is None:
        return None
    if any(d is None for d in dims):
        raise BadRequest(
            f"input {shown(spec.name)} has shape {shape_text(spec.shape)}: a feature is a flat "
            "list, which fills an input whose only free dimensions are the batch and, for a "
            "[-1, -1] input, the list's length; use :predict"
        )
    return tuple(d for d in dims if d is not None)


def _tensor(values: list[Any], spec: TensorSpec, limits: tuple[bool, int], part: str) -> Array:
    """The input's batch from one feature value per example (`part[i].name`), each a value or
    a flat list."""

    def head(index: int) -> str:
        return f"context.{spec.name}" if part == "context" else f"{part}[{index}].{spec.name}"

    flat: list[list[Any]] = []
    for index, value in enumerate(values):
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict) and set(item) == {"b64"} and spec.dtype != STRING:
                raise BadRequest(
                    f'{head(index)}: a binary {{"b64": ...}} value, but the model takes no '
                    f"string input ({shown(spec.name)} is {spec.dtype})"
                )
            if (
                isinstance(item, list)
                or item is None
                or (isinstance(item, dict) and not is_b64(item))
            ):
                raise BadRequest(
                    f"Feature: {head(index)} has element with unexpected JSON type: "
                    f"{json_type(item)} (a feature is a value or a flat list of values)"
                )
        flat.append(items)
    shape = _example_shape(spec)
    size = None if shape is None else math.prod(shape)
    for index, items in enumerate(flat):
        wanted = len(flat[0]) if size is None else size
        if len(items) != wanted:
            what = (
                f"{wanted}, as in the first example (input {shown(spec.name)} has shape "
                f"{shape_text(spec.shape)})"
                if size is None
                else f"{wanted} for input {shown(spec.name)} of shape {shape_text(spec.shape)}"
            )
            raise BadRequest(f"{head(index)}: {len(items)} value(s) where one example takes {what}")
    array = read_tensor(
        flat,
        dtype=spec.dtype,
        rank=2,
        allow_nan=limits[0],
        max_string_bytes=limits[1],
        where=lambda index: head(index[0]) + "".join(f"[{i}]" for i in index[1:]),
        b64=True,
    )
    rows = len(flat)
    return array.reshape((rows, *(shape if shape is not None else (array.shape[1],))))


def classify_response(request: ExamplesRequest, outputs: Mapping[str, Array]) -> dict[str, Any]:
    """`{"results": [[[label, score], ...], ...]}`: every class of every example, labelled
    with its index, in the order of the scores."""
    scores = _output(request, outputs)
    if scores.ndim != 2:
        raise ValueError(f"class scores of shape {scores.shape}, expected [batch, classes]")
    labels = [str(index) for index in range(scores.shape[1])]
    return {
        "results": [
            [[label, score] for label, score in zip(labels, row, strict=True)]
            for row in scores.tolist()
        ]
    }


def regress_response(request: ExamplesRequest, outputs: Mapping[str, Array]) -> dict[str, Any]:
    """`{"results": [value, ...]}`: one value per example."""
    values = _output(request, outputs)
    if values.size != request.rows:
        raise ValueError(f"regression output of shape {values.shape} for {request.rows} rows")
    return {"results": values.reshape(-1).tolist()}


def _output(request: ExamplesRequest, outputs: Mapping[str, Array]) -> Array:
    if request.output not in outputs:
        raise ValueError(f"a model call returned no output {request.output!r}")
    array = np.asarray(outputs[request.output])
    if not array.ndim or array.shape[0] != request.rows:
        raise ValueError(f"output of shape {array.shape} for {request.rows} rows")
    return array
