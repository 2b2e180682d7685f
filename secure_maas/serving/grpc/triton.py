"""Triton's (KServe v2's) `inference.GRPCInferenceService`, through the one pipeline.

Served: ServerLive, ServerReady, ServerMetadata (no token, as `GET /v2/health/*` and `GET /v2`),
ModelReady, ModelMetadata, ModelConfig (`model:metadata`), ModelStatistics (`model:stats`),
ModelInfer (`model:predict`). Every other method of the service (streaming, repository, shared
memory, trace and log settings) answers UNIMPLEMENTED: gRPC does for a method no handler
serves.

ModelInfer reads `raw_input_contents` (one entry per input, all inputs raw, or none: Triton's
rule) or each input's typed `contents`, and becomes the body the HTTP infer reads: the JSON
head with each input's `binary_data_size` followed by its raw data (typed contents are turned
into that little-endian layout first, BYTES with Triton's 4-byte length prefixes). So shapes,
datatypes, BYTES elements, NaN, casts and the limits are checked by the very parser HTTP uses,
with its messages. Outputs always come back in `raw_output_contents` (what tritonclient reads
first), in the order asked, every output when none is named.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from secure_maas import __version__
from secure_maas.actions import Action
from secure_maas.dataplane.facts import VersionFacts
from secure_maas.dataplane.statistics import VersionStatistics
from secure_maas.registry.catalog import ModelRef
from secure_maas.serving.formats.oip import (
    DATATYPES,
    InferRequest,
    datatype_of,
    model_metadata,
    parse_infer,
    serialize_bytes,
    server_metadata,
)
from secure_maas.serving.formats.tensors import Array, BadRequest
from secure_maas.serving.formats.triton import model_config, model_statistics
from secure_maas.serving.grpc import schema
from secure_maas.serving.grpc.calls import Rpc, decode
from secure_maas.serving.pipeline import Call
from secure_maas.serving.readiness import failed_checks
from secure_maas.serving.refs import Api
from secure_maas.serving.services import Services

SERVICE = schema.TRITON_SERVICE
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
#: Each datatype's field of `InferTensorContents` and the numpy type its values have there.
_CONTENTS = {
    "BOOL": ("bool_contents", "bool"),
    "INT8": ("int_contents", "int32"),
    "INT16": ("int_contents", "int32"),
    "INT32": ("int_contents", "int32"),
    "INT64": ("int64_contents", "int64"),
    "UINT8": ("uint_contents", "uint32"),
    "UINT16": ("uint_contents", "uint32"),
    "UINT32": ("uint_contents", "uint32"),
    "UINT64": ("uint64_contents", "uint64"),
    "FP32": ("fp32_contents", "float32"),
    "FP64": ("fp64_contents", "float64"),
    "BYTES": ("bytes_contents", "object"),
}


def _message(name: str, **fields: Any) -> Message:
    return schema.message(f"inference.{name}")(**fields)


def _bytes(message: Message) -> bytes:
    serialized: bytes = message.SerializeToString()
    return serialized


def _from_dict(name: str, document: dict[str, Any]) -> Message:
    made = _message(name)
    json_format.ParseDict(document, made)
    return made


# -- open methods -----------------------------------------------------------------------------


def server_live(_services: Services, _raw: bytes) -> bytes:
    return _bytes(_message("ServerLiveResponse", live=True))


def server_ready(services: Services, _raw: bytes) -> bytes:
    ready = not failed_checks(services)
    return _bytes(_message("ServerReadyResponse", ready=ready))


def server_metadata_rpc(_services: Services, _raw: bytes) -> bytes:
    return _bytes(_from_dict("ServerMetadataResponse", server_metadata(__version__)))


# -- models -----------------------------------------------------------------------------------


def _version(text: str) -> str | None:
    return text or None


def model_ready(call: Call, raw: bytes) -> bytes:
    request: Any = decode(call, raw, schema.message("inference.ModelReadyRequest"))
    version = _version(request.version)
    facts = call.model(request.name, version)
    ref = ModelRef(facts.name, version=facts.version if version is not None else None)
    loaded = call.services.models.ready(ref, load=True)
    return _bytes(_message("ModelReadyResponse", ready=loaded))


def metadata(call: Call, raw: bytes) -> bytes:
    request: Any = decode(call, raw, schema.message("inference.ModelMetadataRequest"))
    version = _version(request.version)
    facts = call.model(request.name, version)
    if version is not None:
        versions = [facts.version]
    else:
        every = call.services.cache.versions(facts.name)
        versions = [v.version for v in every if v.active and call.may_see(v)]
    document = model_metadata(facts.name, versions, facts.signature)
    return _bytes(_from_dict("ModelMetadataResponse", document))


def config(call: Call, raw: bytes) -> bytes:
    request: Any = decode(call, raw, schema.message("inference.ModelConfigRequest"))
    facts = call.model(request.name, _version(request.version))
    settings = call.services.settings
    document = model_config(
        facts.name,
        facts.signature,
        max_batch_size=settings.batch_max_size,
        max_queue_delay_us=settings.batch_max_wait_us,
    )
    made = _message("ModelConfigResponse")
    json_format.ParseDict({"config": document}, made)
    return _bytes(made)


def statistics(call: Call, raw: bytes) -> bytes:
    """A model's statistics, or with no name those of every version the caller may list and
    read statistics of (as `GET /v2/models[/NAME[/versions/V]]/stats`)."""
    request: Any = decode(call, raw, schema.message("inference.ModelStatisticsRequest"))
    if not request.name:
        active = [facts for facts in call.services.cache.models() if facts.active]
        shown = call.visible(f for f in active if _may_read_stats(call, f))
        return _statistics(call, shown)
    version = _version(request.version)
    facts = call.model(request.name, version)
    if version is not None:
        return _statistics(call, [facts])
    every = call.services.cache.versions(facts.name)
    return _statistics(call, [v for v in every if v.active and _may_read_stats(call, v)])


def _may_read_stats(call: Call, facts: VersionFacts) -> bool:
    return call.decide(Action.MODEL_STATS, facts, rows=0).allowed


def _statistics(call: Call, versions: Iterable[VersionFacts]) -> bytes:
    keys = [(facts.name, facts.version) for facts in versions]
    counted = {(s.name, s.version): s for s in call.services.models.stats(keys)}
    found = [counted.get(key) or VersionStatistics(*key) for key in keys]
    return _bytes(_from_dict("ModelStatisticsResponse", model_statistics(found)))


# -- inference --------------------------------------------------------------------------------


def infer(call: Call, raw: bytes) -> bytes:
    request: Any = decode(call, raw, schema.message("inference.ModelInferRequest"))
    facts = call.model(request.model_name, _version(request.model_version))
    limit = call.services.settings.max_string_bytes

    def parse(_body: bytes) -> InferRequest:
        head, tail = infer_body(request)
        return parse_infer(
            head + tail,
            facts.signature,
            header_length=len(head),
            allow_nan=True,
            max_string_bytes=limit,
        )

    parsed = call.parse(parse, frozenset())
    outputs, served = call.predict(parsed)
    return infer_response(request.id, parsed, outputs, served.name, served.version)


def infer_body(request: Any) -> tuple[bytes, bytes]:
    """The HTTP infer body of a `ModelInferRequest`: its JSON head and its binary data."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} input(s): "
            "give every input's data there, or none"
        )
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if any(key in tensor.parameters for key in _SHARED_MEMORY):
            raise BadRequest(f"input {name!r}: shared memory is not supported")
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"input {name!r} has both contents and raw_input_contents")
            data = raw[index]
        else:
            data = _typed(tensor)
        entry = {
            "name": name,
            "shape": list(tensor.shape),
            "datatype": tensor.datatype,
            "parameters": {"binary_data_size": len(data)},
        }
        inputs.append(entry)
        blobs.append(data)
    outputs = []
    for wanted in request.outputs:
        if any(key in wanted.parameters for key in _SHARED_MEMORY):
            raise BadRequest(f"output {wanted.name!r}: shared memory is not supported")
        if "classification" in wanted.parameters:
            raise BadRequest(
                f"output {wanted.name!r}: the classification extension is not supported"
            )
        outputs.append({"name": wanted.name})
    document: dict[str, Any] = {"inputs": inputs}
    if outputs:
        document["outputs"] = outputs
    head = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return head, b"".join(blobs)


def _typed(tensor: Any) -> bytes:
    """An input's typed `contents` in Triton's binary layout (checked against its datatype)."""
    name, datatype = tensor.name, tensor.datatype
    if datatype not in _CONTENTS:
        shown = "BF16 or FP16" if datatype in ("BF16", "FP16") else "its datatype"
        if datatype in DATATYPES or datatype == "BF16":
            raise BadRequest(f"input {name!r}: {shown} has no typed contents: send it raw")
        return b""  # the parser names the unknown datatype
    field, wire = _CONTENTS[datatype]
    given = [found.name for found, _ in tensor.contents.ListFields()]
    if any(other != field for other in given):
        raise BadRequest(f"input {name!r}: a {datatype} tensor's contents go in {field}")
    values = getattr(tensor.contents, field)
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return serialize_bytes(array)
    target = np.dtype(DATATYPES[datatype])
    found = np.array(values, dtype=wire)
    if target.kind in "iu" and found.size:
        info = np.iinfo(target)
        if int(found.min()) < info.min or int(found.max()) > info.max:
            raise BadRequest(f"input {name!r}: a value is out of range for {datatype}")
    return _raw(found.astype(target))


def _raw(array: Array) -> bytes:
    if array.dtype.kind in "OSV":
        return serialize_bytes(array)
    wire = array.astype(np.uint8) if array.dtype == bool else array
    return np.ascontiguousarray(wire, dtype=wire.dtype.newbyteorder("<")).tobytes()


def infer_response(
    request_id: str,
    parsed: InferRequest,
    outputs: dict[str, Array],
    name: str,
    version: int,
) -> bytes:
    """The `ModelInferResponse`: every output asked for, in `raw_output_contents`."""
    response: Any = _message(
        "ModelInferResponse", model_name=name, model_version=str(version), id=request_id
    )
    for wanted in parsed.outputs:
        array = np.asarray(outputs[wanted.name])
        tensor = response.outputs.add()
        tensor.name = wanted.name
        tensor.datatype = datatype_of(array.dtype)
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(_raw(array))
    return _bytes(response)


RPCS = (
    Rpc(SERVICE, "ServerLive", Api.OIP, open=server_live),
    Rpc(SERVICE, "ServerReady", Api.OIP, open=server_ready),
    Rpc(SERVICE, "ServerMetadata", Api.OIP, open=server_metadata_rpc),
    Rpc(SERVICE, "ModelReady", Api.OIP, Action.MODEL_METADATA, model_ready),
    Rpc(SERVICE, "ModelMetadata", Api.OIP, Action.MODEL_METADATA, metadata),
    Rpc(SERVICE, "ModelConfig", Api.OIP, Action.MODEL_METADATA, config),
    Rpc(SERVICE, "ModelStatistics", Api.OIP, Action.MODEL_STATS, statistics),
    Rpc(SERVICE, "ModelInfer", Api.OIP, Action.MODEL_PREDICT, infer),
)
