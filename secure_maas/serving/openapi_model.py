"""The OpenAPI document of one model as a caller may use it, built from its serving signature.

`/openapi.json` describes every route for any model, so it cannot say what a model's body
holds: a body valid against it may still not fit the signature (a 400). The document of a
model (`GET /v2/models/NAME[/versions/V]/openapi.json`, `model:metadata`, guarded and audited
as model metadata is) is that document's model operations with the name (and version) in
their paths and the bodies made exact: input names, dtypes as JSON types with their ranges,
each row's shape, the batch dimension, and what the parsers refuse, so that a body valid
against it is one the model takes (200, or the caller's own rule: 403 over its max_rows, 429
over its quota) and one that is not is a 400. A version's document also has the TF Serving
paths of the labels on that version.

Where JSON Schema cannot tie two parts of a body together, the document enumerates: the rows
of every input of an OIP request (`shape` and the length of `data`) and of a columnar TF
Serving request with several inputs are the same `n`, for `n` from 1 to the instance's
`max_batch_size` (Triton's `max_batch_size` of the model configuration; a larger request is
served too, in parts), at most `MAX_LISTED_ROWS` (the setting goes to 4096: a document that
large would cost more to build and read than it tells). What it does not say: OIP datatypes
other than the input's own that `tensors.cast_input` converts, nested `data`, binary tensors
and the limits of the whole body (`/openapi.json` has them); the length of a free dimension
other than the batch. Requested outputs are enumerated for models of up to
`MAX_LISTED_OUTPUTS` outputs (every ordered choice without repetition); a model with more is
described one requested output at a time.
`:classify` and `:regress` are in it for a model that fits them (`fitting_output`) and whose
every input takes a fixed number of values per example, with every way of splitting the inputs
between `context` and the examples for models of up to `MAX_LISTED_INPUTS` inputs.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from secure_maas.registry.signature import STRING, ServingSignature, TensorSpec, numpy_dtype_name
from secure_maas.serving.formats.oip import HEADER_LENGTH, datatype_of
from secure_maas.serving.formats.tensors import BadRequest
from secure_maas.serving.formats.tfserving import DEFAULT_SIGNATURE
from secure_maas.serving.formats.tfserving_examples import Method, fitting_output
from secure_maas.serving.openapi import JSON, LABEL_AND_SCORE, NUMBER_OR_NON_FINITE, document

#: The most rows an enumerated batch is described with, whatever `max_batch_size` says.
MAX_LISTED_ROWS = 64
#: Up to this many outputs, the `outputs` an OIP request may ask for are listed in full.
MAX_LISTED_OUTPUTS = 4
#: Where a float of each width stops: a value at or past it rounds to infinity (refused).
_FLOAT_BOUNDS = {
    "float16": 65520.0,
    "float32": 3.4028235677973366e38,
}
#: Standard base64 as `tensors._string_bytes` decodes it (padded with `=`, then Python's strict
#: base64): padding optional, and any run of `=` after a whole number of 4-character groups.
B64_PATTERN = (
    "^(?:(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}={0,2}|[A-Za-z0-9+/]{3}=?)"
    "|(?:[A-Za-z0-9+/]{4})+=*)?$"
)
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
#: What the parsers read as "not asked for" (`parameters.get(...)` is falsy).
_FALSY = [False, 0, "", None, [], {}]
_TENSOR_PARAMETERS = {
    "type": ["object", "null"],
    "properties": {"binary_data_size": False, **{key: False for key in _SHARED_MEMORY}},
}
_MODEL_PREFIXES = ("/v1/models/{name}", "/v2/models/{name}")
_LEFT_OUT = ("/openapi.json",)
#: Up to this many inputs, every split of them between `context` and the examples is listed.
MAX_LISTED_INPUTS = 4


def model_document(
    name: str,
    version: int | None,
    labels: Iterable[str],
    signature: ServingSignature,
    *,
    max_batch_size: int,
    max_string_bytes: int,
) -> dict[str, Any]:
    """The document of `name` (its bare paths) or of its `version` (that version's paths and
    those of its `labels`), with bodies exact for `signature`."""
    generic = document()
    paths: dict[str, dict[str, Any]] = {}
    for template, item in generic["paths"].items():
        if not template.startswith(_MODEL_PREFIXES) or template.endswith(_LEFT_OUT):
            continue
        verb = template.rpartition(":")[2] if ":" in template else None
        if verb is not None and verb != "predict" and examples_fit(signature, verb) is None:
            continue
        for path in _concrete(template, name, version, sorted(labels)):
            paths[path] = {method: _fixed(op) for method, op in item.items()}
    schemas = generic["components"]["schemas"]
    listed = min(max_batch_size, MAX_LISTED_ROWS)
    rows = range(1, listed + 1)
    schemas["ExamplesRequest"] = _examples_request(signature, max_string_bytes)
    classify = examples_fit(signature, Method.CLASSIFY.value)
    if classify is not None:
        schemas["ClassifyResponse"] = _classify_response(classify)
    schemas["RegressResponse"] = {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": NUMBER_OR_NON_FINITE}},
    }
    schemas["PredictRequest"] = _predict_request(signature, rows, max_string_bytes)
    schemas["PredictResponse"] = _predict_response(signature)
    schemas["InferRequest"] = _infer_request(signature, rows, max_string_bytes)
    schemas["InferResponse"] = _infer_response(name, signature)
    which = name if version is None else f"{name} version {version}"
    generic["info"]["title"] = f"secure-maas: {which}"
    generic["info"]["description"] = (
        f"The operations on {which} with its request bodies exact for its signature: a body "
        "valid against this document is one the model takes. Rows: at least one; an OIP "
        f"request or a columnar one of several inputs is described up to {listed} rows "
        "(the model configuration's max_batch_size, at most 64; more are served too). :classify "
        "and :regress are here only if the model fits them. Binary tensors, other OIP "
        "datatypes that convert without loss and the body limit are in /openapi.json."
    )
    generic["paths"] = paths
    return generic


def _concrete(template: str, name: str, version: int | None, labels: list[str]) -> list[str]:
    """The paths of `template` in the document of `name` (and `version`)."""
    path = template.replace("{name}", name)
    if version is None:
        return [] if "{version}" in path or "{label}" in path else [path]
    if "{version}" in path:
        return [path.replace("{version}", str(version))]
    if "{label}" in path:
        return [path.replace("{label}", label) for label in labels]
    return []


def _fixed(operation: dict[str, Any]) -> dict[str, Any]:
    """`operation` with its path parameters filled in and the binary request body left out."""
    fixed = copy.deepcopy(operation)
    parameters = [
        p for p in fixed.get("parameters", ()) if p["in"] != "path" and p["name"] != HEADER_LENGTH
    ]
    if parameters:
        fixed["parameters"] = parameters
    else:
        fixed.pop("parameters", None)
    if "requestBody" in fixed:
        content = fixed["requestBody"]["content"]
        fixed["requestBody"]["content"] = {JSON: content[JSON]}
    return fixed


# -- values ----------------------------------------------------------------------------------


def _leaf(dtype: str, *, b64: bool, max_string_bytes: int) -> dict[str, Any]:
    """One element of a request tensor of `dtype` as `tensors.read_tensor` takes it."""
    if dtype == STRING:
        text = {"type": "string", "maxLength": max_string_bytes}
        if not b64:
            return text
        binary = {
            "type": "object",
            "required": ["b64"],
            "additionalProperties": False,
            "properties": {"b64": {"type": "string", "pattern": B64_PATTERN}},
        }
        return {"anyOf": [text, binary]}
    target = np.dtype(numpy_dtype_name(dtype))
    if target.kind == "b":
        return {"type": "boolean"}
    if target.kind in "iu":
        info = np.iinfo(target)
        return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    bound = _FLOAT_BOUNDS.get(target.name)
    if bound is None:
        return {"type": "number"}
    return {"type": "number", "exclusiveMinimum": -bound, "exclusiveMaximum": bound}


def _out_leaf(dtype: str) -> dict[str, Any]:
    """One element of an output tensor (floats may be NaN or Infinity: numbers too)."""
    if dtype == STRING:
        binary = {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string"}}}
        return {"anyOf": [{"type": "string"}, binary]}
    kind = np.dtype(numpy_dtype_name(dtype)).kind
    if kind == "f":
        return NUMBER_OR_NON_FINITE
    return {"type": {"b": "boolean", "i": "integer", "u": "integer"}.get(kind, "number")}


def _nested(dims: tuple[int | None, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    """A dense nested list of `dims` (a free dimension: any length) of `leaf`."""
    schema = leaf
    for size in reversed(dims):
        schema = {"type": "array", "items": schema}
        if size is not None:
            schema.update(minItems=size, maxItems=size)
    return schema


def _batch(row: dict[str, Any], rows: int | None = None) -> dict[str, Any]:
    """A list of rows: at least one, or exactly `rows`."""
    batch = {"type": "array", "items": row, "minItems": rows or 1}
    if rows is not None:
        batch["maxItems"] = rows
    return batch


def _named(specs: tuple[TensorSpec, ...], value: Any) -> dict[str, Any]:
    """An object of every input, each `value(spec)`, and nothing else."""
    return {
        "type": "object",
        "required": [spec.name for spec in specs],
        "additionalProperties": False,
        "properties": {spec.name: value(spec) for spec in specs},
    }


# -- TF Serving predict ---------------------------------------------------------------------


def _predict_request(
    signature: ServingSignature, batches: range, max_string_bytes: int
) -> dict[str, Any]:
    specs = signature.inputs

    def row(spec: TensorSpec) -> dict[str, Any]:
        leaf = _leaf(spec.dtype, b64=True, max_string_bytes=max_string_bytes)
        return _nested(spec.shape[1:], leaf)

    named_rows = _batch(_named(specs, row))
    if len(specs) == 1:
        instances: dict[str, Any] = {"oneOf": [_batch(row(specs[0])), named_rows]}
        columns: dict[str, Any] = {
            "oneOf": [_batch(row(specs[0])), _named(specs, lambda s: _batch(row(s)))]
        }
    else:
        instances = named_rows
        columns = {"oneOf": [_named(specs, lambda s, n=n: _batch(row(s), n)) for n in batches]}
    signature_name = {"type": "string", "enum": ["", DEFAULT_SIGNATURE]}
    return {
        "description": "Exactly one of instances (rows: each row's value, or an object of "
        "every input's) or inputs (columns: the batch, or an object of every input's batch), "
        "for this model's inputs "
        + ", ".join(f"{s.name} {s.dtype} {_shape(s.shape)}" for s in specs),
        "oneOf": [
            {
                "type": "object",
                "required": ["instances"],
                "properties": {
                    "signature_name": signature_name,
                    "instances": instances,
                    "inputs": False,
                },
            },
            {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "signature_name": signature_name,
                    "inputs": columns,
                    "instances": False,
                },
            },
        ],
    }


def _predict_response(signature: ServingSignature) -> dict[str, Any]:
    outputs = signature.outputs

    def row(spec: TensorSpec) -> dict[str, Any]:
        return _nested(spec.shape[1:], _out_leaf(spec.dtype))

    if len(outputs) == 1:
        rows = _batch(row(outputs[0]))
        columns = rows
    else:
        rows = _batch(_named(outputs, row))
        columns = _named(outputs, lambda s: _batch(row(s)))
    return {
        "oneOf": [
            {"type": "object", "required": ["predictions"], "properties": {"predictions": rows}},
            {"type": "object", "required": ["outputs"], "properties": {"outputs": columns}},
        ]
    }


# -- TF Serving classify and regress --------------------------------------------------------


def examples_fit(signature: ServingSignature, verb: str) -> TensorSpec | None:
    """The output `:classify` or `:regress` (`verb`) reads from a model with `signature`, or
    None when the model does not fit it or an input takes no fixed number of values per
    example (a `[-1, -1]` input: its length must match across examples, which no schema
    says)."""
    try:
        output = fitting_output(signature, Method(verb))
    except BadRequest:
        return None
    if any(len(spec.shape) < 1 or None in spec.shape[1:] for spec in signature.inputs):
        return None
    return output


def _examples_request(signature: ServingSignature, max_string_bytes: int) -> dict[str, Any]:
    specs = signature.inputs
    names = [spec.name for spec in specs]

    def feature(spec: TensorSpec) -> dict[str, Any]:
        leaf = _leaf(spec.dtype, b64=True, max_string_bytes=max_string_bytes)
        size = math.prod(d for d in spec.shape[1:] if d is not None)
        values = {"type": "array", "items": leaf, "minItems": size, "maxItems": size}
        return {"anyOf": [leaf, values]} if size == 1 else values

    def features(chosen: list[str]) -> dict[str, Any]:
        return _named(tuple(s for s in specs if s.name in chosen), feature)

    splits: list[list[str]] = [[]]
    if len(specs) <= MAX_LISTED_INPUTS:
        splits = [list(c) for n in range(len(names) + 1) for c in itertools.combinations(names, n)]
    branches = []
    for shared in splits:
        own = [name for name in names if name not in shared]
        branch: dict[str, Any] = {
            "type": "object",
            "required": ["examples"] + (["context"] if shared else []),
            "properties": {
                "signature_name": {"type": "string", "enum": ["", DEFAULT_SIGNATURE]},
                "context": features(shared),
                "examples": {"type": "array", "minItems": 1, "items": features(own)},
            },
        }
        branches.append(branch)
    return {
        "description": "Each input a feature of every example or of context (shared by every "
        "example), never both; a feature is a value or a flat list of one example's values "
        "in row-major order: " + ", ".join(f"{s.name} {s.dtype} {_shape(s.shape)}" for s in specs),
        "oneOf": branches,
    }


def _classify_response(output: TensorSpec) -> dict[str, Any]:
    classes = output.shape[1]
    one: dict[str, Any] = {"type": "array", "items": LABEL_AND_SCORE}
    if classes is not None:
        one.update(minItems=classes, maxItems=classes)
    return {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": one}},
    }


# -- Open Inference Protocol infer ----------------------------------------------------------


def _infer_request(
    signature: ServingSignature, batches: range, max_string_bytes: int
) -> dict[str, Any]:
    specs = signature.inputs

    def tensor(spec: TensorSpec, rows: int) -> dict[str, Any]:
        dims = spec.shape[1:]
        leaf = _leaf(spec.dtype, b64=False, max_string_bytes=max_string_bytes)
        data: dict[str, Any] = {"type": "array", "items": leaf}
        if None not in dims:
            count = rows * math.prod(d for d in dims if d is not None)
            data.update(minItems=count, maxItems=count)
        shape: dict[str, Any] = {"type": "array", "prefixItems": [{"const": rows}], "items": False}
        shape["prefixItems"] += [
            {"type": "integer", "minimum": 0} if d is None else {"const": d} for d in dims
        ]
        shape.update(minItems=len(spec.shape), maxItems=len(spec.shape))
        return {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"const": spec.name},
                "shape": shape,
                "datatype": {"const": datatype_of(spec.dtype)},
                "data": data,
                "parameters": _TENSOR_PARAMETERS,
            },
        }

    inputs = [
        {
            "type": "array",
            "prefixItems": [tensor(spec, n) for spec in specs],
            "items": False,
            "minItems": len(specs),
            "maxItems": len(specs),
        }
        for n in batches
    ]
    return {
        "type": "object",
        "required": ["inputs"],
        "description": "Every input once (here in the signature's order; any order is taken), "
        "each with the same rows, data flat in row-major order: "
        + ", ".join(f"{s.name} {datatype_of(s.dtype)} {_shape(s.shape)}" for s in specs),
        "properties": {
            "id": {"type": ["string", "null"]},
            "parameters": {
                "type": ["object", "null"],
                "properties": {"binary_data_output": {"type": "boolean"}},
            },
            "inputs": {"oneOf": inputs},
            "outputs": _requested_outputs(signature.output_names),
        },
    }


def _requested_outputs(names: list[str]) -> dict[str, Any]:
    """The `outputs` a request may name: each output at most once, in any order."""
    output: dict[str, Any] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"enum": names},
            "parameters": {
                "type": ["object", "null"],
                "properties": {
                    "binary_data": {"type": "boolean"},
                    "classification": {"enum": _FALSY},
                    **{key: False for key in _SHARED_MEMORY},
                },
            },
        },
    }
    if len(names) > MAX_LISTED_OUTPUTS:
        return {"type": ["array", "null"], "items": output, "maxItems": 1}
    choices: list[dict[str, Any]] = [{"type": "null"}, {"type": "array", "maxItems": 0}]
    for count in range(1, len(names) + 1):
        for chosen in itertools.permutations(names, count):
            items = []
            for name in chosen:
                one = copy.deepcopy(output)
                one["properties"]["name"] = {"const": name}
                items.append(one)
            choices.append(
                {
                    "type": "array",
                    "prefixItems": items,
                    "items": False,
                    "minItems": count,
                    "maxItems": count,
                }
            )
    return {"oneOf": choices}


def _infer_response(name: str, signature: ServingSignature) -> dict[str, Any]:
    def output(spec: TensorSpec) -> dict[str, Any]:
        rank = len(spec.shape)
        return {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"const": spec.name},
                "datatype": {"const": datatype_of(spec.dtype)},
                "shape": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0},
                    "minItems": rank,
                    "maxItems": rank,
                },
                "data": {"type": "array", "items": _out_leaf(spec.dtype)},
                "parameters": {"type": "object"},
            },
        }

    return {
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": {"const": name},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {"anyOf": [output(s) for s in signature.outputs]},
            },
        },
    }


def _shape(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"
