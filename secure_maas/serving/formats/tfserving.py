"""TF Serving's REST API: predict bodies in, predictions and model status/metadata out.

Request (`POST /v1/models/NAME[/versions/V|/labels/L]:predict`), as TF Serving documents it::

    {"signature_name": "serving_default",        # optional
     "instances": [...]}                          # row format, or
     "inputs": <tensor> | {name: <tensor>, ...}}  # columnar format (never both)

Row format: one element per row; for a one-input model an element is the row's value (a
number or a nested list), for any model it may be an object naming every input. Columnar
format: the whole batch of the one input, or an object of every input's batch. The response
mirrors the request: `{"predictions": [...]}` for rows (the row's value for a one-output model,
else an object per row), `{"outputs": ...}` for columns (the tensor for a one-output model,
else an object of tensors).

String inputs (`DT_STRING`) take JSON strings (their UTF-8 bytes) and `{"b64": "..."}` objects
for binary values, anywhere in the tensor, as TF Serving's `json_tensor.cc` reads them; a b64
object for any other input is refused. String outputs are written as TF Serving writes them:
`{"b64": ...}` for an output whose name ends in `_bytes`, else the string itself, except that
bytes which are not UTF-8 (which TF Serving would write into its JSON as they are) become a
`{"b64": ...}` object too, so the body stays JSON.

Where this is stricter than TF Serving, it says so: NaN/Infinity are refused unless the model
accepts them, every input of the batch must have the same number of rows, an unknown input
name in a columnar object is refused rather than ignored, and an empty batch is refused.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from secure_maas.registry.signature import STRING, ServingSignature, TensorSpec
from secure_maas.serving.formats.tensors import (
    B64_KEY,
    MAX_STRING_BYTES,
    Array,
    BadRequest,
    Buffer,
    batch_rows,
    check_shape,
    decode_json,
    preview,
    quoted,
    read_tensor,
    shape_text,
    shown,
)

__all__ = [
    "DEFAULT_SIGNATURE",
    "BadRequest",
    "PredictRequest",
    "RequestFormat",
    "model_metadata",
    "model_status",
    "parse_predict",
    "predict_response",
    "signature_name",
]

#: The one signature a secure-maas model has, under TF Serving's default name.
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
MODEL_STATES = frozenset({"UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"})
OK_STATUS = {"error_code": "OK", "error_message": ""}
#: The status of a version whose artifact was refused: TF Serving's words for a failed load,
#: with no reason (invariant: the reason goes to the audit log only).
REFUSED_STATUS = {
    "error_code": "UNAVAILABLE",
    "error_message": "the model version could not be loaded",
}

#: TF Serving writes a string output whose name ends so as base64 objects (`json_tensor.cc`).
BYTES_SUFFIX = "_bytes"

_TF_DTYPES = {
    STRING: "DT_STRING",
    "bool": "DT_BOOL",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
}


class RequestFormat(StrEnum):
    ROW = "row"  # "instances" -> "predictions"
    COLUMNAR = "columnar"  # "inputs" -> "outputs"


@dataclass(frozen=True)
class PredictRequest:
    """A predict body checked against the signature: arrays by input name, in its dtypes."""

    format: RequestFormat
    inputs: dict[str, Array]
    signature_name: str

    @property
    def rows(self) -> int:
        """Rows in the request (the batch dimension): what quotas and row limits count."""
        return int(next(iter(self.inputs.values())).shape[0])


def parse_predict(
    body: Buffer | str,
    signature: ServingSignature,
    *,
    allow_nan: bool = False,
    max_string_bytes: int = MAX_STRING_BYTES,
) -> PredictRequest:
    """Read a predict body for a model with `signature`, or raise `BadRequest`.

    `allow_nan` lets NaN and Infinity through for a model that takes them (default: refused);
    `max_string_bytes` bounds each element of a string input.
    """
    limits = _Limits(allow_nan, max_string_bytes)
    document = decode_json(body, allow_nan=allow_nan)
    if not isinstance(document, dict):
        raise BadRequest(f"JSON Value: {preview(document)} Is not object")
    signature_name(document)
    if "instances" in document and "inputs" in document:
        raise BadRequest("expecting only one of 'inputs' or 'instances' keys to exist, not both")
    if "instances" in document:
        inputs = _rows(document["instances"], signature, limits)
        fmt = RequestFormat.ROW
    elif "inputs" in document:
        inputs = _columns(document["inputs"], signature, limits)
        fmt = RequestFormat.COLUMNAR
    else:
        raise BadRequest("Missing 'inputs' or 'instances' key")
    batch_rows(inputs)
    return PredictRequest(fmt, inputs, DEFAULT_SIGNATURE)


def signature_name(document: Mapping[str, Any]) -> str:
    """The body's `signature_name`, which must name the one signature a model has (absent or
    empty: that one), or raise `BadRequest` in TF Serving's words."""
    name = document.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str):
        raise BadRequest("'signature_name' key must be a string value")
    if name not in ("", DEFAULT_SIGNATURE):
        raise BadRequest(f"Serving signature name: {quoted(name)} not found in signature def")
    return DEFAULT_SIGNATURE


def _is_named(value: object) -> bool:
    return isinstance(value, dict) and set(value) != {"b64"}


@dataclass(frozen=True)
class _Limits:
    allow_nan: bool
    max_string_bytes: int


def _rows(instances: object, signature: ServingSignature, limits: _Limits) -> dict[str, Array]:
    if not isinstance(instances, list):
        raise BadRequest("expecting 'instances' to be a list/array")
    if not instances:
        raise BadRequest("No values in 'instances' array: send at least one instance")
    specs = signature.inputs
    names = signature.input_names
    if not _is_named(instances[0]):
        if len(specs) > 1:
            raise BadRequest(
                "instances is a plain list, but expecting a list of objects as the model "
                f"takes several inputs: {', '.join(names)}"
            )
        for index, item in enumerate(instances):
            if _is_named(item):
                raise BadRequest(f"expecting a value/list but got an object at item {index}")
        return {specs[0].name: _row_tensor(instances, specs[0], limits, named=False)}
    wanted = set(names)
    for index, item in enumerate(instances):
        if not _is_named(item):
            raise BadRequest(f"expecting an object but got {preview(item)} at item {index}")
        if set(item) != wanted:
            missing = sorted(wanted - set(item))
            extra = [shown(key) for key in sorted(set(item) - wanted)]
            detail = "; ".join(
                part
                for part in (
                    f"missing input(s) {', '.join(missing)}" if missing else "",
                    f"unknown input(s) {', '.join(extra)}" if extra else "",
                )
                if part
            )
            raise BadRequest(
                f"instances[{index}]: keys must be equal to: {','.join(names)} ({detail})"
            )
    return {
        spec.name: _row_tensor([item[spec.name] for item in instances], spec, limits, named=True)
        for spec in specs
    }


def _row_tensor(values: list[Any], spec: TensorSpec, limits: _Limits, *, named: bool) -> Array:
    def where(index: tuple[int, ...]) -> str:
        head = f"instances[{index[0]}]" if index else "instances"
        if named:
            head += f".{spec.name}"
        return head + "".join(f"[{i}]" for i in index[1:])

    array = read_tensor(
        values,
        dtype=spec.dtype,
        rank=len(spec.shape),
        allow_nan=limits.allow_nan,
        where=where,
        b64=True,
        max_string_bytes=limits.max_string_bytes,
    )
    if len(array.shape) != len(spec.shape) or any(
        want is not None and got != want
        for got, want in zip(array.shape[1:], spec.shape[1:], strict=True)
    ):
        raise BadRequest(
            f"each instance of input {spec.name!r} must have shape {shape_text(spec.shape[1:])}, "
            f"got {shape_text(array.shape[1:])}"
        )
    return array


def _columns(value: object, signature: ServingSignature, limits: _Limits) -> dict[str, Array]:
    specs = signature.inputs
    if not _is_named(value):
        if len(specs) > 1:
            raise BadRequest(
                "inputs is a plain value/list, but expecting an object as the model takes "
                f"several inputs: {', '.join(signature.input_names)}"
            )
        return {specs[0].name: _column_tensor(value, specs[0], limits, "inputs")}
    if not isinstance(value, dict):  # narrowed for the type checker; _is_named said so
        raise BadRequest("'inputs' must be an object")
    for spec in specs:
        if spec.name not in value:
            raise BadRequest(f"Missing named input: {spec.name} in 'inputs' object")
    extra = [shown(key) for key in sorted(set(value) - set(signature.input_names))]
    if extra:
        raise BadRequest(
            f"unknown input(s) in 'inputs' object: {', '.join(extra)}; the model takes "
            f"{', '.join(signature.input_names)}"
        )
    return {
        spec.name: _column_tensor(value[spec.name], spec, limits, f"inputs.{spec.name}")
        for spec in specs
    }


def _column_tensor(value: object, spec: TensorSpec, limits: _Limits, prefix: str) -> Array:
    array = read_tensor(
        value,
        dtype=spec.dtype,
        rank=len(spec.shape),
        allow_nan=limits.allow_nan,
        where=lambda index: prefix + "".join(f"[{i}]" for i in index),
        b64=True,
        max_string_bytes=limits.max_string_bytes,
    )
    if array.ndim and array.shape[0] == 0:
        raise BadRequest(f"input {spec.name!r} holds no rows: send at least one")
    check_shape(array.shape, spec, what=f"input {spec.name!r}")
    return array


def predict_response(
    request: PredictRequest | RequestFormat, outputs: Mapping[str, Array]
) -> dict[str, Any]:
    """The response body for `outputs` (arrays by output name, in signature order).

    Values become JSON numbers exactly: a float32 becomes the double of the same value, so it
    reads back as the same float32. Non-finite outputs become NaN/Infinity tokens, as TF
    Serving writes them. String outputs follow `string_values`.
    """
    fmt = request.format if isinstance(request, PredictRequest) else request
    if not outputs:
        raise ValueError("a model call returned no outputs")
    columns = {name: _json_ready(name, np.asarray(value)) for name, value in outputs.items()}
    if fmt is RequestFormat.COLUMNAR:
        if len(columns) == 1:
            return {"outputs": next(iter(columns.values())).tolist()}
        return {"outputs": {name: array.tolist() for name, array in columns.items()}}
    sizes = {array.shape[0] if array.ndim else -1 for array in columns.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(f"the outputs have inconsistent batch sizes: {sorted(sizes)}")
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values())).tolist()}
    lists = {name: array.tolist() for name, array in columns.items()}
    rows = sizes.pop()
    return {"predictions": [{name: lists[name][i] for name in lists} for i in range(rows)]}


def string_value(value: bytes, *, as_b64: bool = False) -> str | dict[str, str]:
    """One string output element as TF Serving writes it: the text when the bytes are UTF-8
    (and `as_b64` is false), else `{"b64": <standard base64>}`."""
    if not as_b64:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {B64_KEY: base64.b64encode(value).decode("ascii")}


def _json_ready(name: str, array: Array) -> Array:
    """`array` with its string elements made JSON values (`.tolist()` then nests them)."""
    if array.dtype.kind not in "OSV":
        return array
    as_b64 = name.endswith(BYTES_SUFFIX)
    ready = np.empty(array.shape, dtype=object)
    for index, value in np.ndenumerate(array):
        if not isinstance(value, bytes):
            raise ValueError(f"output {name!r} holds a {type(value).__name__}, not bytes")
        ready[index] = string_value(value, as_b64=as_b64)
    return ready


def model_status(
    versions: Iterable[int],
    *,
    states: Mapping[int, str] | None = None,
    refused: Collection[int] = (),
) -> dict[str, Any]:
    """`GET /v1/models/NAME[/versions/V]`: the state of each version (AVAILABLE unless given).

    A version in `refused` (END: its artifact could not be loaded) carries TF Serving's error
    status, opaque: why it was refused is for the audit log, never for the caller.
    """
    listed = []
    for version in versions:
        state = (states or {}).get(version, "AVAILABLE")
        if state not in MODEL_STATES:
            raise ValueError(f"unknown model version state {state!r}")
        status = REFUSED_STATUS if version in refused else OK_STATUS
        listed.append({"version": str(version), "state": state, "status": dict(status)})
    return {"model_version_status": listed}


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    return {
        "dtype": _TF_DTYPES[spec.dtype],
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape],
            "unknown_rank": False,
        },
        "name": f"{DEFAULT_SIGNATURE}_{spec.name}:0",
    }


def model_metadata(
    name: str,
    version: int,
    signature: ServingSignature,
    *,
    secure_maas: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`GET /v1/models/NAME[/versions/V]/metadata` in TF Serving's JSON shape.

    `secure_maas`, when given, is added under that top-level key (the DP guarantee and
    provenance); TF Serving clients read `model_spec` and `metadata` and ignore it.
    """
    document: dict[str, Any] = {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    DEFAULT_SIGNATURE: {
                        "inputs": {spec.name: _tensor_info(spec) for spec in signature.inputs},
                        "outputs": {spec.name: _tensor_info(spec) for spec in signature.outputs},
                        "method_name": PREDICT_METHOD,
                    }
                }
            }
        },
    }
    if secure_maas is not None:
        document["secure_maas"] = dict(secure_maas)
    return document
