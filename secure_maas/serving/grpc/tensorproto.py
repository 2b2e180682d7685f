"""TensorFlow's `TensorProto` to and from numpy, without TensorFlow (web workers never import
it), for TF Serving's gRPC Predict.

A request tensor is read from `tensor_content` (raw little-endian bytes, what
`tf.make_tensor_proto` writes for numbers) or from the typed field of its dtype (`float_val`,
`int_val`, `string_val`, ...). As TensorFlow reads a typed field, a single value fills the
whole shape; any other count than the shape's size (or one) is refused, where TensorFlow
would pad with the last value: a short tensor is more likely a mistake than a wish. Every
size is checked against the bytes or values actually sent before an array is made. Strings
are bounded per element by `max_string_bytes`, as on HTTP.

Responses carry numbers in `tensor_content` and strings in `string_val`, which
`tf.make_ndarray` and TF Serving's clients read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from secure_maas.registry.signature import STRING, TensorSpec
from secure_maas.serving.formats.tensors import Array, BadRequest, check_floats, shape_text
from secure_maas.serving.grpc import schema

DATA_TYPE = "tensorflow.DataType"
#: Our dtype -> (TensorFlow's DataType name, the typed field holding its values, that field's
#: numpy type). DT_HALF's typed values are the float16 bit patterns, in `half_val`.
DTYPES: dict[str, tuple[str, str, str]] = {
    STRING: ("DT_STRING", "string_val", "object"),
    "bool": ("DT_BOOL", "bool_val", "bool"),
    "int8": ("DT_INT8", "int_val", "int32"),
    "int16": ("DT_INT16", "int_val", "int32"),
    "int32": ("DT_INT32", "int_val", "int32"),
    "int64": ("DT_INT64", "int64_val", "int64"),
    "uint8": ("DT_UINT8", "int_val", "int32"),
    "uint16": ("DT_UINT16", "int_val", "int32"),
    "uint32": ("DT_UINT32", "uint32_val", "uint32"),
    "uint64": ("DT_UINT64", "uint64_val", "uint64"),
    "float16": ("DT_HALF", "half_val", "int32"),
    "float32": ("DT_FLOAT", "float_val", "float32"),
    "float64": ("DT_DOUBLE", "double_val", "float64"),
}
_BY_TF_NAME = {tf_name: dtype for dtype, (tf_name, _, _) in DTYPES.items()}
_NUMPY = {dtype: ("object" if dtype == STRING else dtype) for dtype in DTYPES}


def tf_dtype(dtype: str) -> int:
    """The `DataType` number of a signature dtype (`float32` -> DT_FLOAT)."""
    return schema.enum_value(DATA_TYPE, DTYPES[dtype][0])


def dtype_of(number: int, what: str) -> str:
    """The signature dtype of a `DataType` number, or a 400 naming what is not served."""
    name = schema.enum_name(DATA_TYPE, number)
    if name is None or name not in _BY_TF_NAME:
        raise BadRequest(f"{what}: dtype {name or number} is not supported")
    return _BY_TF_NAME[name]


def shape_of(tensor: Any, what: str) -> tuple[int, ...]:
    shape = tensor.tensor_shape
    if shape.unknown_rank:
        raise BadRequest(f"{what}: a tensor's shape must be known (unknown_rank is set)")
    dims = tuple(int(dim.size) for dim in shape.dim)
    if any(size < 0 for size in dims):
        raise BadRequest(f"{what}: shape {shape_text(dims)} has a negative dimension")
    return dims


def to_array(tensor: Any, spec: TensorSpec, *, max_string_bytes: int, what: str) -> Array:
    """The array a request `TensorProto` holds, in its own dtype (cast by the caller)."""
    dtype = dtype_of(tensor.dtype, what)
    shape = shape_of(tensor, what)
    count = math.prod(shape)
    numpy_dtype = np.dtype(_NUMPY[dtype])
    _, field, wire = DTYPES[dtype]
    if tensor.tensor_content:
        if dtype == STRING:
            raise BadRequest(f"{what}: DT_STRING values go in string_val, not tensor_content")
        size = count * numpy_dtype.itemsize
        if len(tensor.tensor_content) != size:
            raise BadRequest(
                f"{what}: tensor_content holds {len(tensor.tensor_content)} bytes, shape "
                f"{shape_text(shape)} of {DTYPES[dtype][0]} needs {size}"
            )
        layout = np.dtype("u1") if dtype == "bool" else numpy_dtype.newbyteorder("<")
        raw = np.frombuffer(tensor.tensor_content, dtype=layout)
        array = raw.astype(bool) if dtype == "bool" else raw.astype(numpy_dtype)
    else:
        values = getattr(tensor, field)
        if len(values) not in (count, 1) or (count == 0 and len(values)):
            raise BadRequest(
                f"{what}: {field} holds {len(values)} value(s), shape {shape_text(shape)} "
                f"needs {count} (or one, repeated)"
            )
        array = _typed(list(values), dtype, wire, numpy_dtype, max_string_bytes, what)
        if len(values) == 1 and count != 1:
            array = np.repeat(array, count)
    if array.dtype.kind == "f":
        array = check_floats(
            array, array.dtype, where=lambda i: f"{what} element {i}", allow_nan=True
        )
    try:
        return array.reshape(shape)
    except ValueError:
        raise BadRequest(f"{what}: shape {shape_text(shape)} is out of range") from None


def _typed(
    values: list[Any],
    dtype: str,
    wire: str,
    numpy_dtype: np.dtype[Any],
    max_string_bytes: int,
    what: str,
) -> Array:
    if dtype == STRING:
        for index, value in enumerate(values):
            if len(value) > max_string_bytes:
                raise BadRequest(
                    f"{what} element {index}: a string of {len(value)} bytes, more than "
                    f"{max_string_bytes}"
                )
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    found = np.array(values, dtype=wire)
    if dtype == "float16":
        if found.size and (int(found.min()) < 0 or int(found.max()) > 0xFFFF):
            raise BadRequest(f"{what}: half_val holds a value that is not a float16 bit pattern")
        return found.astype(np.uint16).view(np.float16)
    if numpy_dtype.kind in "iu" and found.size:
        info = np.iinfo(numpy_dtype)
        if int(found.min()) < info.min or int(found.max()) > info.max:
            raise BadRequest(f"{what}: a value is out of range for {numpy_dtype.name}")
    return found.astype(numpy_dtype)


def from_array(array: Array, out: Any) -> None:
    """Fill the `TensorProto` `out` with `array` (its dtype, shape and values)."""
    array = np.asarray(array)
    kind = "string" if array.dtype.kind in "OSV" else array.dtype.name
    if kind not in DTYPES:
        raise ValueError(f"dtype {array.dtype.name} has no TensorFlow DataType here")
    out.dtype = tf_dtype(kind)
    for size in array.shape:
        out.tensor_shape.dim.add().size = int(size)
    if kind == STRING:
        out.string_val.extend(bytes(value) for value in array.ravel())
        return
    wire = array.astype(np.uint8) if array.dtype == bool else array
    out.tensor_content = np.ascontiguousarray(wire, dtype=wire.dtype.newbyteorder("<")).tobytes()
