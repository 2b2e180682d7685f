"""Named arrays plus one JSON object, as bytes in the safetensors layout, without TensorFlow.

Layout (https://huggingface.co/docs/safetensors)::

    u64 little-endian N | N bytes of JSON header, padded with spaces | tensor data

The header maps each tensor name to {"dtype": "F32" | "I64" | ..., "shape": [...],
"data_offsets": [begin, end]}, offsets into the tensor data, which hold raw little-endian C-order
bytes and no gaps. It also holds "__metadata__": {"secure_maas": "<canonical JSON object>"}:
exactly one entry, because safetensors writes its metadata map in a random order and the bytes
must be the same for the same content (digests are compared).

Writing uses the safetensors library, so standard tools can read an artifact. Reading is done
here, in place: `unpack` takes a `bytearray` or `memoryview` as well as `bytes`, and its arrays
are views into that buffer, so plaintext weights are not copied (the library reads only `bytes`
and copies every tensor) and the caller can unmap or wipe the one buffer when done. It checks
what the library checks: header bounds, dtypes, shapes, and offsets that tile the data exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import safetensors.numpy

from secure_maas.registry.signature import InvalidModelData

Array = npt.NDArray[Any]
Buffer = bytes | bytearray | memoryview

METADATA_KEY = "secure_maas"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit safetensors itself applies
DTYPES = {  # safetensors dtype code -> little-endian numpy dtype
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
ENCODABLE = frozenset(dtype.name for dtype in DTYPES.values())


@dataclass(frozen=True)
class Unpacked:
    """What `unpack` found: the metadata object and the tensors, sorted by name."""

    metadata: dict[str, Any]
    tensors: list[tuple[str, Array]]


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces, no NaN: one text for one value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def pack(tensors: Mapping[str, Array], metadata: Mapping[str, Any]) -> bytes:
    """Lay out `tensors` (dtypes in `ENCODABLE`) and the JSON object `metadata` as bytes.

    Deterministic: safetensors orders tensors by dtype alignment then name, and the metadata
    is one canonical JSON string.
    """
    little_endian = {
        # not np.ascontiguousarray: it would turn a scalar (a layer's count) into shape (1,)
        name: np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
        for name, array in tensors.items()
    }
    return safetensors.numpy.save(little_endian, metadata={METADATA_KEY: canonical_json(metadata)})


def unpack(data: Buffer) -> Unpacked:
    """Check `data` and return its metadata and tensors (views into `data`, not copies).

    Anything malformed raises `InvalidModelData`, and nothing else does.
    """
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:  # not a buffer, or not a contiguous one
        raise InvalidModelData("model data must be a contiguous byte buffer") from exc
    if len(view) < 8:
        raise InvalidModelData("not a secure-maas model: shorter than its header length")
    size = int.from_bytes(view[:8], "little")
    if size > min(MAX_HEADER_BYTES, len(view) - 8):
        raise InvalidModelData("not a secure-maas model: header length exceeds the data")
    try:
        header = json.loads(bytes(view[8 : 8 + size]).decode("utf-8"))  # no encoding guessing
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidModelData(f"not a secure-maas model: header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidModelData("not a secure-maas model: header is not a JSON object")
    metadata = _metadata(header.pop("__metadata__", None))
    body = view[8 + size :]
    layout = sorted(
        ((_entry(name, info), name) for name, info in header.items()), key=lambda e: e[0][2]
    )
    position = 0
    tensors = []
    for (dtype, shape, begin, end), name in layout:
        count = math.prod(shape)
        if begin != position or end != begin + count * dtype.itemsize or end > len(body):
            raise InvalidModelData(f"tensor {name!r}: data offsets overlap, skip or mis-size")
        # np.frombuffer refuses an offset at the very end, even to read nothing
        array = np.frombuffer(body, dtype, count, begin) if count else np.empty(0, dtype)
        tensors.append((name, array.reshape(shape)))
        position = end
    if position != len(body):
        raise InvalidModelData("not a secure-maas model: tensor data is not fully covered")
    tensors.sort(key=lambda item: item[0])
    return Unpacked(metadata, tensors)


def _metadata(value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != {METADATA_KEY}:
        raise InvalidModelData("not a secure-maas model: its metadata is missing")
    text = value[METADATA_KEY]
    try:
        fields = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError) as exc:
        raise InvalidModelData(f"the artifact metadata is not JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise InvalidModelData("the artifact metadata is not a JSON object")
    return fields


def _entry(name: str, info: object) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise InvalidModelData(f"tensor {name!r}: expected dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidModelData(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
        raise InvalidModelData(f"tensor {name!r}: shape must be a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_size, offsets))):
        raise InvalidModelData(f"tensor {name!r}: data_offsets must be [begin, end]")
    begin, end = offsets
    if end < begin:
        raise InvalidModelData(f"tensor {name!r}: data_offsets end before they begin")
    return DTYPES[dtype], tuple(shape), begin, end


def _is_size(value: object) -> bool:
    return type(value) is int and value >= 0
