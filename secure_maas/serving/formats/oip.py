"""Open Inference Protocol v2 (KServe v2, Triton's HTTP API), with binary tensor data.

Request (`POST /v2/models/NAME[/versions/V]/infer`)::

    {"id": "r1",                                              # optional, echoed back
     "parameters": {"binary_data_output": false},             # optional
     "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                 "data": [1, 2, 3, 4, 5, 6, 7, 8]}],          # flat row-major, or nested
     "outputs": [{"name": "probs", "parameters": {"binary_data": false}}]}   # optional

Response: `{"model_name", "model_version", "id"?, "outputs": [{"name", "shape", "datatype",
"data"}]}` with every output, or only those asked for, in the order asked.

Triton's binary tensor data extension is supported, because `tritonclient` uses it by default
(`InferInput.set_data_from_numpy(binary_data=True)`, `InferRequestedOutput(binary_data=True)`,
and `"binary_data_output": true` when no outputs are named). When the request carries the
`Inference-Header-Content-Length` header, the body is that many bytes of JSON followed by the
raw little-endian data of each input whose parameters give `binary_data_size`, in input order.
A compressed body (`Content-Encoding`, `serving.encodings`) is decoded before it gets here, so
the header counts the JSON part of the decoded body: what `tritonclient` measures before it
compresses and what Triton reads after it decompresses.
Outputs asked for as binary come back the same way, with that header set on the response.
Shared memory and the classification extension are refused.

BYTES tensors (the model's `string` dtype) are JSON strings in `data` (their UTF-8 bytes), and
in binary data each element is a 4-byte little-endian length then its bytes, as tritonclient's
`serialize_byte_tensor` writes them; each element is bounded by `max_string_bytes`. A BYTES
output asked for as JSON whose bytes are not UTF-8 cannot be a JSON string: it comes back as
binary data instead (its `binary_data_size` says so, as tritonclient reads any output).

A request datatype may differ from the model's where no value can change meaning (FP64 data
for an FP32 input, INT32 for INT64, integers for floats); see `tensors.cast_input`.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from secure_maas.registry.signature import ServingSignature, TensorSpec, numpy_dtype_name
from secure_maas.serving.formats.tensors import (
    MAX_STRING_BYTES,
    Array,
    BadRequest,
    Buffer,
    batch_rows,
    cast_input,
    check_floats,
    check_shape,
    decode_json,
    json_type,
    preview,
    read_tensor,
    shape_text,
)

__all__ = [
    "BINARY_CONTENT_TYPE",
    "DATATYPES",
    "EXTENSIONS",
    "HEADER_LENGTH",
    "JSON_CONTENT_TYPE",
    "BadRequest",
    "InferRequest",
    "InferResponse",
    "RequestedOutput",
    "datatype_of",
    "infer_response",
    "model_metadata",
    "model_ready",
    "parse_infer",
    "server_metadata",
]

#: The request and response header giving the length of the JSON part of a binary body.
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
#: Triton's extensions served, as `GET /v2` lists them (model_configuration: `formats.triton`).
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
)
PLATFORM = "tensorflow_savedmodel"

#: OIP datatype -> numpy dtype name. BF16 has no numpy dtype and is refused.
DATATYPES = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}
_LENGTH_PREFIX = struct.Struct("<I")
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
#: The header's value: ASCII digits (`str.isdigit()` also takes `²`, which `int()` refuses),
#: few enough for `int()` (it refuses more than 4300) and far more than any body holds; spaces
#: and tabs around them are HTTP's optional whitespace.
_LENGTH = re.compile(r"[ \t]*([0-9]{1,19})[ \t]*")


def datatype_of(dtype: str | np.dtype[Any]) -> str:
    """The OIP datatype of a numpy or signature dtype (`float32` -> `FP32`, `string` -> `BYTES`)."""
    name = np.dtype(numpy_dtype_name(dtype) if isinstance(dtype, str) else dtype).name
    if name not in _BY_DTYPE:
        raise ValueError(f"dtype {name} has no Open Inference Protocol datatype")
    return _BY_DTYPE[name]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """An infer body checked against the signature: arrays by input name, in its dtypes."""

    id: str | None
    inputs: dict[str, Array]
    outputs: tuple[RequestedOutput, ...]

    @property
    def rows(self) -> int:
        """Rows in the request (the batch dimension): what quotas and row limits count."""
        return int(next(iter(self.inputs.values())).shape[0])


def parse_infer(
    body: Buffer | str,
    signature: ServingSignature,
    *,
    header_length: int | str | None = None,
    allow_nan: bool = False,
    max_string_bytes: int = MAX_STRING_BYTES,
) -> InferRequest:
    """Read an infer body for a model with `signature`, or raise `BadRequest`.

    `header_length` is the request's `Inference-Header-Content-Length` header, if any;
    `max_string_bytes` bounds each element of a BYTES input.
    """
    head, tail = _split(body, header_length)
    document = decode_json(head, allow_nan=allow_nan)
    if not isinstance(document, dict):
        raise BadRequest(f"the inference request must be a JSON object, not {json_type(document)}")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _parameters(document.get("parameters"), "'parameters'")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest("parameter 'binary_data_output' must be true or false")
    inputs = _inputs(document.get("inputs"), signature, tail, allow_nan, max_string_bytes)
    outputs = _outputs(document.get("outputs"), signature, binary_default)
    return InferRequest(request_id, inputs, outputs)


def _split(body: Buffer | str, header_length: int | str | None) -> tuple[Buffer | str, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if isinstance(body, str):
        body = body.encode("utf-8")
    view = memoryview(body)
    match = _LENGTH.fullmatch(str(header_length))
    size = int(match.group(1)) if match else 0
    if not 0 < size <= len(view):
        raise BadRequest(
            f"{HEADER_LENGTH} must be the length in bytes of the JSON part of the body "
            f"(1 to {len(view)}), got {preview(str(header_length))}"
        )
    return view[:size], view[size:]


def _parameters(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


def _inputs(
    value: object,
    signature: ServingSignature,
    tail: memoryview,
    allow_nan: bool,
    max_string_bytes: int,
) -> dict[str, Array]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'inputs' must be a non-empty list of input tensors")
    specs = {spec.name: spec for spec in signature.inputs}
    found: dict[str, Array] = {}
    offset = 0
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadRequest(f"inputs[{index}] must be an object with name, shape, datatype, data")
        name = item.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"inputs[{index}]: 'name' must be a string")
        if name not in specs:
            raise BadRequest(
                f"unexpected inference input {name!r}: the model takes "
                f"{', '.join(signature.input_names)}"
            )
        if name in found:
            raise BadRequest(f"input {name!r} is given more than once")
        shape, datatype = _shape(item.get("shape"), name), _datatype(item.get("datatype"), name)
        # Before any array is built from it: a claimed shape of another rank or fixed size
        # than the model's (40 dimensions, [0, 10**20] for [-1, 4]) is refused right away.
        check_shape(shape, specs[name], what=f"input {name!r}")
        parameters = _parameters(item.get("parameters"), f"parameters of input {name!r}")
        if any(key in parameters for key in _SHARED_MEMORY):
            raise BadRequest(f"input {name!r}: shared memory is not supported")
        if "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            if "data" in item:
                raise BadRequest(f"input {name!r} has both 'data' and binary_data_size")
            if type(size) is not int or size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a byte count")
            if offset + size > len(tail):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(tail) - offset} bytes of binary data left)"
                )
            chunk = tail[offset : offset + size]
            array = (
                _reshape(_bytes_elements(chunk, shape, name, max_string_bytes), shape, name)
                if datatype == "BYTES"
                else _from_binary(chunk, datatype, shape, name, allow_nan)
            )
            offset += size
        elif "data" in item:
            array = _from_json(item["data"], datatype, shape, name, allow_nan, max_string_bytes)
        else:
            raise BadRequest(f"input {name!r} has no 'data'")
        spec = specs[name]
        check_shape(array.shape, spec, what=f"input {name!r}")
        found[name] = cast_input(array, spec, allow_nan=allow_nan, what=f"input {name!r}")
    if offset != len(tail):
        raise BadRequest(
            f"{len(tail) - offset} byte(s) of binary data follow the inputs without an input "
            "claiming them (binary_data_size)"
        )
    missing = [name for name in signature.input_names if name not in found]
    if missing:
        raise BadRequest(f"missing input(s) {', '.join(missing)}: the model takes all of them")
    ordered = {name: found[name] for name in signature.input_names}
    batch_rows(ordered)
    return ordered


def _shape(value: object, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(value)


def _datatype(value: object, name: str) -> str:
    if value == "BF16":
        raise BadRequest(f"input {name!r}: datatype BF16 is not supported")
    if not isinstance(value, str) or value not in DATATYPES:
        raise BadRequest(
            f"input {name!r}: unknown datatype {preview(value)}; use one of {', '.join(DATATYPES)}"
        )
    return value


def _from_json(
    data: object,
    datatype: str,
    shape: tuple[int, ...],
    name: str,
    allow_nan: bool,
    max_string_bytes: int,
) -> Array:
    prefix = f"input {name!r} data"
    nested = isinstance(data, list) and bool(data) and isinstance(data[0], list)
    array = read_tensor(
        data,
        dtype=DATATYPES[datatype],
        rank=len(shape) if nested else 1,
        allow_nan=allow_nan,
        where=lambda index: prefix + "".join(f"[{i}]" for i in index),
        max_string_bytes=max_string_bytes,
    )
    if nested:
        if array.shape != shape:
            raise BadRequest(
                f"input {name!r}: data nested as {shape_text(array.shape)} does not match "
                f"its shape {shape_text(shape)}"
            )
        return array
    if array.size != math.prod(shape):
        raise BadRequest(
            f"input {name!r}: shape {shape_text(shape)} needs {math.prod(shape)} value(s), "
            f"data has {array.size}"
        )
    return _reshape(array, shape, name)


def _reshape(array: Array, shape: tuple[int, ...], name: str) -> Array:
    """`array` in `shape`; a shape numpy cannot make (an empty tensor whose other dimensions
    overflow its size arithmetic, such as [0, 2**62, 2**62]) is refused as the caller's."""
    try:
        return array.reshape(shape)
    except ValueError:
        raise BadRequest(f"input {name!r}: shape {shape_text(shape)} is out of range") from None


def _from_binary(
    chunk: memoryview, datatype: str, shape: tuple[int, ...], name: str, allow_nan: bool
) -> Array:
    count = math.prod(shape)
    dtype = np.dtype(DATATYPES[datatype])
    wire = np.dtype("u1") if datatype == "BOOL" else dtype.newbyteorder("<")
    if len(chunk) != count * wire.itemsize:
        raise BadRequest(
            f"input {name!r}: binary_data_size {len(chunk)} does not match shape "
            f"{shape_text(shape)} of {datatype} ({count * wire.itemsize} bytes)"
        )
    raw = np.frombuffer(chunk, dtype=wire)
    if datatype == "BOOL":
        if raw.size and raw.max() > 1:
            raise BadRequest(f"input {name!r}: BOOL binary data must hold bytes 0 or 1")
        return _reshape(raw.astype(bool), shape, name)
    array = raw.astype(dtype)  # a native-order copy the caller owns
    if dtype.kind == "f":
        array = check_floats(
            array, dtype, where=lambda i: f"input {name!r} element {i}", allow_nan=allow_nan
        )
    return _reshape(array, shape, name)


def _bytes_elements(chunk: memoryview, shape: tuple[int, ...], name: str, limit: int) -> Array:
    """Triton's BYTES layout: each element a 4-byte little-endian length, then the bytes.

    Every length is checked against `limit` and the bytes left before anything is copied, and
    the array is made only once the elements are all there (a claimed shape of 10**12 elements
    over a few bytes allocates nothing)."""
    count = math.prod(shape)
    elements: list[bytes] = []
    offset = 0
    while offset < len(chunk) and len(elements) < count:
        if offset + _LENGTH_PREFIX.size > len(chunk):
            break
        (length,) = _LENGTH_PREFIX.unpack_from(chunk, offset)
        if length > limit:
            raise BadRequest(
                f"input {name!r} element {len(elements)}: a string of {length} bytes, more "
                f"than {limit}"
            )
        offset += _LENGTH_PREFIX.size
        if offset + length > len(chunk):
            break
        elements.append(bytes(chunk[offset : offset + length]))
        offset += length
    if len(elements) != count or offset != len(chunk):
        raise BadRequest(
            f"input {name!r}: BYTES binary data does not hold exactly {count} length-prefixed "
            f"element(s) for shape {shape_text(shape)}"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def _outputs(
    value: object, signature: ServingSignature, binary_default: bool
) -> tuple[RequestedOutput, ...]:
    if value is None or value == []:
        return tuple(RequestedOutput(name, binary_default) for name in signature.output_names)
    if not isinstance(value, list):
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects")
    known = set(signature.output_names)
    wanted: list[RequestedOutput] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"outputs[{index}] must be an object with a 'name'")
        name = item["name"]
        if name not in known:
            raise BadRequest(
                f"unexpected inference output {name!r}: the model returns "
                f"{', '.join(signature.output_names)}"
            )
        if any(out.name == name for out in wanted):
            raise BadRequest(f"output {name!r} is asked for more than once")
        parameters = _parameters(item.get("parameters"), f"parameters of output {name!r}")
        if any(key in parameters for key in _SHARED_MEMORY):
            raise BadRequest(f"output {name!r}: shared memory is not supported")
        if parameters.get("classification"):
            raise BadRequest(f"output {name!r}: the classification extension is not supported")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"output {name!r}: parameter 'binary_data' must be true or false")
        wanted.append(RequestedOutput(name, binary))
    return tuple(wanted)


@dataclass(frozen=True)
class InferResponse:
    """A response ready to send: `body` with `content_type` and `headers` (the binary header)."""

    document: dict[str, Any]
    body: bytes
    content_type: str
    headers: dict[str, str]


def infer_response(
    request: InferRequest,
    outputs: Mapping[str, Array],
    *,
    model_name: str,
    model_version: int,
) -> InferResponse:
    """The response to `request` from the model's `outputs` (arrays by output name)."""
    document: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request.id is not None:
        document["id"] = request.id
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for wanted in request.outputs:
        array = np.asarray(outputs[wanted.name])
        tensor: dict[str, Any] = {
            "name": wanted.name,
            "datatype": datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        data = None if wanted.binary else _json_data(array)
        if data is None:
            blob = _binary(array)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data
        tensors.append(tensor)
    document["outputs"] = tensors
    head = json.dumps(document, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return InferResponse(document, head, JSON_CONTENT_TYPE, {})
    return InferResponse(
        document,
        b"".join([head, *blobs]),
        BINARY_CONTENT_TYPE,
        {HEADER_LENGTH: str(len(head))},
    )


def serialize_bytes(array: Array) -> bytes:
    """A BYTES tensor in Triton's binary layout (row-major; each element's length, then it)."""
    parts: list[bytes] = []
    for value in np.asarray(array, dtype=object).ravel():
        if not isinstance(value, bytes):
            raise ValueError(f"a BYTES tensor holds a {type(value).__name__}, not bytes")
        parts += (_LENGTH_PREFIX.pack(len(value)), value)
    return b"".join(parts)


def _binary(array: Array) -> bytes:
    if array.dtype.kind in "OSV":
        return serialize_bytes(array)
    wire = array.astype(np.uint8) if array.dtype == bool else array
    return np.ascontiguousarray(wire, dtype=wire.dtype.newbyteorder("<")).tobytes()


def _json_data(array: Array) -> list[Any] | None:
    """The output's `data` (flat), or None for BYTES whose elements are not all UTF-8."""
    if array.dtype.kind not in "OSV":
        values: list[Any] = array.ravel().tolist()
        return values
    try:
        return [bytes(value).decode("utf-8") for value in array.ravel()]
    except UnicodeDecodeError:
        return None


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": datatype_of(spec.dtype),
        "shape": [-1 if d is None else d for d in spec.shape],
    }


def model_metadata(
    name: str,
    versions: Iterable[int],
    signature: ServingSignature,
    *,
    platform: str = PLATFORM,
    secure_maas: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`GET /v2/models/NAME[/versions/V]`: `$metadata_model_response` (-1 is a free dimension).

    `secure_maas`, when given, is added under that key (the DP guarantee and provenance).
    """
    document: dict[str, Any] = {
        "name": name,
        "versions": [str(version) for version in versions],
        "platform": platform,
        "inputs": [_tensor_metadata(spec) for spec in signature.inputs],
        "outputs": [_tensor_metadata(spec) for spec in signature.outputs],
    }
    if secure_maas is not None:
        document["secure_maas"] = dict(secure_maas)
    return document


def model_ready(name: str, version: int | None, ready: bool) -> dict[str, Any]:
    """The body of `GET /v2/models/NAME[/versions/V]/ready` (the status code says it too)."""
    document: dict[str, Any] = {"name": name, "ready": ready}
    if version is not None:
        document["version"] = str(version)
    return document


def server_metadata(version: str, *, name: str = "secure-maas") -> dict[str, Any]:
    """`GET /v2`: the server's name, version and the protocol extensions it supports."""
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}
