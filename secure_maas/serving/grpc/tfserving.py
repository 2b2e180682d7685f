"""TF Serving's `tensorflow.serving.PredictionService`, through the one pipeline.

Served: `Predict` (`model:predict`) and `GetModelMetadata` (`model:metadata`), by
`model_spec` name and `version` or `version_label`, as TF Serving reads them; the one
signature a model has is `serving_default` (an empty `signature_name` means it).
`Classify`, `Regress` and `MultiInference` answer UNIMPLEMENTED (their messages need TF's
Example protos; the HTTP API has :classify and :regress).

Predict checks the inputs by name against the signature (every input, no other), converts
each `TensorProto` (`tensorproto`) and then checks it as HTTP does (shape, dtype casts, rows);
`output_filter` names the outputs wanted (all when empty). GetModelMetadata answers the
`signature_def` field as TF Serving does (a `SignatureDefMap` packed in `google.protobuf.Any`)
and adds the DP guarantee that HTTP's metadata carries as a `secure_maas` entry (a
`google.protobuf.Struct`), which TF Serving's clients, reading `signature_def`, pass over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from secure_maas.actions import Action
from secure_maas.registry.signature import ServingSignature, TensorSpec
from secure_maas.serving.errors import ApiError
from secure_maas.serving.formats.tensors import (
    Array,
    BadRequest,
    batch_rows,
    cast_input,
    check_shape,
    quoted,
)
from secure_maas.serving.formats.tfserving import DEFAULT_SIGNATURE, PREDICT_METHOD, signature_name
from secure_maas.serving.grpc import schema
from secure_maas.serving.grpc.calls import Rpc, decode
from secure_maas.serving.grpc.tensorproto import from_array, tf_dtype, to_array
from secure_maas.serving.pipeline import Call
from secure_maas.serving.refs import Api

SERVICE = schema.TFSERVING_SERVICE
SIGNATURE_DEF = "signature_def"
SECURE_MAAS = "secure_maas"
TYPE_URL = "type.googleapis.com/"


@dataclass(frozen=True)
class PredictInputs:
    """A Predict request's inputs, checked against the signature (the pipeline's `Parsed`)."""

    inputs: dict[str, Array]
    rows: int


def _spec(request: Any) -> tuple[str, str | None, str | None]:
    """The model, version and label a `ModelSpec` names."""
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    version = str(spec.version.value) if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def _model_spec(out: Any, name: str, version: int) -> None:
    out.name = name
    out.version.value = version
    out.signature_name = DEFAULT_SIGNATURE


def predict(call: Call, raw: bytes) -> bytes:
    request: Any = decode(call, raw, schema.message("tensorflow.serving.PredictRequest"))
    facts = call.model(*_spec(request))
    limit = call.services.settings.max_string_bytes
    signature = facts.signature

    def parse(_body: bytes) -> PredictInputs:
        signature_name({"signature_name": request.model_spec.signature_name})
        inputs = read_inputs(request.inputs, signature, limit)
        return PredictInputs(inputs, batch_rows(inputs))

    parsed = call.parse(parse, frozenset())
    wanted = _output_filter(list(request.output_filter), signature)
    outputs, served = call.predict(parsed)
    response: Any = schema.message("tensorflow.serving.PredictResponse")()
    _model_spec(response.model_spec, served.name, served.version)
    for name in wanted:
        from_array(outputs[name], response.outputs[name])
    serialized: bytes = response.SerializeToString()
    return serialized


def read_inputs(given: Any, signature: ServingSignature, limit: int) -> dict[str, Array]:
    """The request's input tensors by name, in the signature's order and dtypes."""
    specs = {spec.name: spec for spec in signature.inputs}
    unknown = sorted(name for name in given if name not in specs)
    if unknown:
        raise BadRequest(
            f"input tensor alias not found in signature: {quoted(unknown[0])}. Inputs "
            f"expected to be in the set {{{','.join(signature.input_names)}}}."
        )
    missing = [name for name in signature.input_names if name not in given]
    if missing:
        raise BadRequest(
            f"input size does not match signature: {len(given)}!={len(specs)} len({{"
            f"{','.join(sorted(given))}}}) != len({{{','.join(signature.input_names)}}}). "
            f"Missing: {', '.join(missing)}"
        )
    found: dict[str, Array] = {}
    for name in signature.input_names:
        spec = specs[name]
        what = f"input {name!r}"
        array = to_array(given[name], spec, max_string_bytes=limit, what=what)
        check_shape(array.shape, spec, what=what)
        found[name] = cast_input(array, spec, allow_nan=True, what=what)
    return found


def _output_filter(names: list[str], signature: ServingSignature) -> list[str]:
    if not names:
        return list(signature.output_names)
    known = set(signature.output_names)
    seen: set[str] = set()
    for name in names:
        if name not in known:
            raise ApiError(400, f"output tensor alias not found in signature: {quoted(name)}")
        if name in seen:
            raise ApiError(400, f"duplicate output tensor alias in output_filter: {quoted(name)}")
        seen.add(name)
    return names


def metadata(call: Call, raw: bytes) -> bytes:
    request: Any = decode(call, raw, schema.message("tensorflow.serving.GetModelMetadataRequest"))
    facts = call.model(*_spec(request))
    fields = list(request.metadata_field)
    if not fields:
        raise ApiError(400, "GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF:
            raise ApiError(400, f"Metadata field {quoted(field)} is not supported")
    response: Any = schema.message("tensorflow.serving.GetModelMetadataResponse")()
    _model_spec(response.model_spec, facts.name, facts.version)
    response.model_spec.ClearField("signature_name")
    signatures = signature_def_map(facts.signature)
    _pack(response.metadata[SIGNATURE_DEF], signatures)
    guarantee: Any = schema.message("google.protobuf.Struct")()
    json_format.ParseDict(facts.guarantee(), guarantee)
    _pack(response.metadata[SECURE_MAAS], guarantee)
    serialized: bytes = response.SerializeToString()
    return serialized


def _pack(out: Any, message: Any) -> None:
    out.type_url = TYPE_URL + message.DESCRIPTOR.full_name
    out.value = message.SerializeToString()


def signature_def_map(signature: ServingSignature) -> Any:
    """The `SignatureDefMap` of a model's one signature, as TF Serving reports a SavedModel's."""
    found: Any = schema.message("tensorflow.serving.SignatureDefMap")()
    definition = found.signature_def[DEFAULT_SIGNATURE]
    definition.method_name = PREDICT_METHOD
    for spec in signature.inputs:
        _tensor_info(definition.inputs[spec.name], spec)
    for spec in signature.outputs:
        _tensor_info(definition.outputs[spec.name], spec)
    return found


def _tensor_info(out: Any, spec: TensorSpec) -> None:
    out.name = f"{DEFAULT_SIGNATURE}_{spec.name}:0"
    out.dtype = tf_dtype(spec.dtype)
    for size in spec.shape:
        out.tensor_shape.dim.add().size = -1 if size is None else size


RPCS = (
    Rpc(SERVICE, "Predict", Api.TFSERVING, Action.MODEL_PREDICT, predict),
    Rpc(SERVICE, "GetModelMetadata", Api.TFSERVING, Action.MODEL_METADATA, metadata),
)
