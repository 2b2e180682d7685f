"""Tensors out of JSON: strict decoding, dense nested lists, and the dtype rules both APIs share.

A JSON value becomes an array only when it is a dense (rectangular) nested list of exactly the
expected depth whose leaves all have the JSON type the dtype calls for: `true`/`false` for bool,
integers for the integer dtypes, numbers for the floating dtypes, strings for strings (OIP's
BYTES, TF Serving's DT_STRING: the UTF-8 bytes of the string; TF Serving also takes
`{"b64": "..."}` for binary values, decoded as its `json_tensor.cc` does). Integers
must fit the dtype and numbers the floating type. The `NaN`, `Infinity` and `-Infinity` tokens
are read when the caller allows them (the serving views do, as TF Serving's `json_tensor.cc`
does) and only for floating dtypes: an integer or boolean input refuses them by name. A literal
such as `1e999` that overflows a double is refused, as TF Serving's parser refuses it. Every
refusal is a `BadRequest`
that says where in the body the problem is; a string element longer than `max_string_bytes`
(once encoded or decoded) is refused too, before its bytes are made. The whole request is
bounded by the body limit (413) already: decoded strings are never longer than their JSON.
A name or key the caller sent appears in a message escaped
(`shown`, `audit.text.quote`), never with its raw control characters.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from secure_maas.audit.text import escape_controls, quote
from secure_maas.errors import SecureMaasError
from secure_maas.registry.signature import STRING, TensorSpec, numpy_dtype_name

Array = npt.NDArray[Any]
Buffer = bytes | bytearray | memoryview
Locate = Callable[[tuple[int, ...]], str]

#: How much of a caller's name or key an error message shows.
SHOWN_CHARS = 80
#: The longest one string element may be, in bytes (the request as a whole is bounded by the
#: body limit): text and image-bytes models take far less; a tokenizer fed one huge element
#: would spend memory out of proportion to the body.
MAX_STRING_BYTES = 1 << 20
#: TF Serving's key for a binary (base64) string value: `{"b64": "..."}`.
B64_KEY = "b64"
_ALLOWED: dict[str, frozenset[type]] = {
    "b": frozenset({bool}),
    "i": frozenset({int}),
    "u": frozenset({int}),
    "f": frozenset({int, float}),
    "O": frozenset({str}),
}
_EXPECTED = {
    "b": "a boolean",
    "i": "an integer",
    "u": "an integer",
    "f": "a number",
    "O": "a string",
}


class BadRequest(SecureMaasError):
    """The request body is malformed or does not fit the model's signature (HTTP 400).

    The message is written for the caller: it names the key, element or input at fault.
    """


def decode_json(body: Buffer | str, *, allow_nan: bool = False) -> Any:
    """Parse a request body as strict UTF-8 JSON.

    Refuses `NaN`/`Infinity` tokens unless `allow_nan`, and an object that repeats a key (two
    readers of one body must never disagree on what it says: the audit digest covers the body).
    """
    try:
        text = body if isinstance(body, str) else str(body, "utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"JSON Parse error: the body is not UTF-8 ({exc.reason})") from exc
    if not text.strip():
        raise BadRequest("JSON Parse error: The document is empty")

    def constant(token: str) -> float:
        if not allow_nan:
            raise BadRequest(
                f"JSON Parse error: {token} is not allowed: this model takes finite numbers only"
            )
        return float(token)

    def number(token: str) -> float:
        value = float(token)
        if value in (math.inf, -math.inf):
            raise BadRequest(
                f"JSON Parse error: number {token[:40]} is too large for a double: finite "
                "numbers only (Infinity is written Infinity)"
            )
        return value

    try:
        return json.loads(
            text, parse_constant=constant, parse_float=number, object_pairs_hook=_unique_keys
        )
    except json.JSONDecodeError as exc:
        raise BadRequest(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from exc
    except RecursionError as exc:
        raise BadRequest("JSON Parse error: the document is nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise BadRequest(f"JSON Parse error: {exc}") from exc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(f"JSON Parse error: duplicate key {quoted(key)} in an object")
            seen.add(key)
    return found


def shown(text: str) -> str:
    """A caller's name or key as a message lists it: escaped, cut at `SHOWN_CHARS`."""
    text = escape_controls(text)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def quoted(text: str) -> str:
    """A caller's value as a message quotes it: `"..."`, escaped, cut at `SHOWN_CHARS`."""
    return quote(text, limit=SHOWN_CHARS)


def json_type(value: object) -> str:
    """The JSON type of a decoded value, as TF Serving names it in errors."""
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int | float):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, dict):
        return "Object"
    return "Null"


def preview(value: object, limit: int = 40) -> str:
    """A short JSON rendering of `value` for an error message."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shape_text(shape: Iterable[int | None]) -> str:
    """`[-1,4]`: a shape as the APIs print it, -1 for a free dimension."""
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


def is_b64(value: object) -> bool:
    """Whether `value` is TF Serving's binary string object: exactly `{"b64": <string>}`."""
    return type(value) is dict and len(value) == 1 and type(value.get(B64_KEY)) is str


def read_tensor(
    value: object,
    *,
    dtype: str | np.dtype[Any],
    rank: int,
    allow_nan: bool,
    where: Locate,
    b64: bool = False,
    max_string_bytes: int = MAX_STRING_BYTES,
) -> Array:
    """Turn a dense nested list of depth `rank` into an array of `dtype`, or raise `BadRequest`.

    `where(index)` names the element at `index` in error messages. A rank-0 value is a scalar.
    `dtype` "string" (or numpy's object) reads JSON strings as their UTF-8 bytes into an object
    array; with `b64` (TF Serving) a `{"b64": ...}` object is read as the bytes it encodes.
    """
    target = np.dtype(numpy_dtype_name(dtype) if isinstance(dtype, str) else dtype)
    leaves, shape = _flatten(value, rank, where)
    kind = target.kind if target.kind in _ALLOWED else "O"
    allowed = _ALLOWED[kind] | ({dict} if b64 and kind == "O" else set())
    if not set(map(type, leaves)) <= allowed:
        position = next(i for i, leaf in enumerate(leaves) if type(leaf) not in allowed)
        leaf = leaves[position]
        at = where(_unravel(position, shape))
        if isinstance(leaf, float) and not math.isfinite(leaf):
            token = "NaN" if leaf != leaf else ("Infinity" if leaf > 0 else "-Infinity")
            raise BadRequest(
                f"{at}: {token} is not a valid {target.name}: NaN and Infinity are accepted "
                "for floating-point inputs only"
            )
        if isinstance(leaf, list):
            raise BadRequest(
                f"{at}: found a list where {_EXPECTED[kind]} was expected (too many dimensions)"
            )
        if is_b64(leaf):
            raise BadRequest(
                f'{at}: a binary {{"b64": ...}} value where {_EXPECTED[kind]} '
                f"({STRING if kind == 'O' else target.name}) was expected: "
                + (
                    "BYTES data are JSON strings (base64 objects are TF Serving's form)"
                    if kind == "O"
                    else "base64 values are for string inputs only"
                )
            )
        raise BadRequest(
            f"{at}: JSON value {preview(leaf)} ({json_type(leaf)}) is not of expected type "
            f"{STRING if kind == 'O' else target.name}"
        )
    if kind == "b":
        array = np.array(leaves, dtype=bool)
    elif kind in "iu":
        array = _integers(leaves, target, shape, where)
    elif kind == "f":
        array = _floats(leaves, target, shape, where, allow_nan=allow_nan)
    else:
        array = np.empty(len(leaves), dtype=object)
        array[:] = [
            _string_bytes(leaf, max_string_bytes, lambda at: where(_unravel(at, shape)), i)
            for i, leaf in enumerate(leaves)
        ]
    return array.reshape(shape)


def _string_bytes(
    leaf: str | dict[str, Any], limit: int, locate: Callable[[int], str], position: int
) -> bytes:
    """One string element's bytes: a JSON string's UTF-8, or a b64 object's decoded bytes,
    refused past `limit` bytes before they are made."""
    if isinstance(leaf, dict):
        if not is_b64(leaf):
            raise BadRequest(
                f"{locate(position)}: JSON object {preview(leaf)} is not a binary value: write "
                '{"b64": "<base64>"} with the one key b64 and a string'
            )
        text = leaf[B64_KEY]
        if len(text) // 4 * 3 > limit + 3:
            raise BadRequest(f"{locate(position)}: a string of more than {limit} bytes")
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                f"{locate(position)}: Unable to base64 decode {preview(text)}"
            ) from None
    else:
        if len(leaf) > limit:
            raise BadRequest(f"{locate(position)}: a string of more than {limit} bytes")
        try:
            data = leaf.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                f"{locate(position)}: the string is not valid Unicode (a lone surrogate escape)"
            ) from None
    if len(data) > limit:
        raise BadRequest(f"{locate(position)}: a string of {len(data)} bytes, more than {limit}")
    return data


def _flatten(value: object, rank: int, where: Locate) -> tuple[list[Any], tuple[int, ...]]:
    """The leaves of a dense nested list, row-major, and its shape (TF Serving's reading)."""
    shape: list[int] = []
    probe = value
    while len(shape) < rank and isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    if len(shape) < rank and (not shape or shape[-1] != 0):
        _locate_shape_error(value, shape, rank, where)
    shape.extend([0] * (rank - len(shape)))
    level: list[Any] = [value]
    for size in shape:
        following: list[Any] = []
        for item in level:
            if type(item) is not list or len(item) != size:
                _locate_shape_error(value, shape, rank, where)
            following.extend(item)
        level = following
    return level, tuple(shape)


def _locate_shape_error(value: object, shape: list[int], rank: int, where: Locate) -> None:
    """Find the first element that breaks the dense shape and raise a `BadRequest` naming it."""
    stack: list[tuple[object, tuple[int, ...]]] = [(value, ())]
    while stack:
        item, index = stack.pop()
        depth = len(index)
        if depth == rank:
            continue
        if not isinstance(item, list):
            raise BadRequest(
                f"{where(index)}: found {json_type(item)} {preview(item)} where a list was "
                "expected (too few dimensions)"
            )
        if depth < len(shape) and len(item) != shape[depth]:
            raise BadRequest(
                f"{where(index)}: a list of {len(item)} element(s) where {shape[depth]} were "
                "expected: every list at one depth must have the same length (no ragged lists)"
            )
        stack.extend((child, (*index, i)) for i, child in reversed(list(enumerate(item))))
    raise BadRequest(f"{where(())}: the value is not a dense {rank}-dimensional list")


def _unravel(position: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(position, shape)) if shape else ()


def _integers(
    leaves: list[Any], target: np.dtype[Any], shape: tuple[int, ...], where: Locate
) -> Array:
    info = np.iinfo(target)
    array = np.array(leaves) if leaves else np.zeros(0, dtype=target)
    if array.dtype == object or (
        array.size and (int(array.min()) < info.min or int(array.max()) > info.max)
    ):
        position = next((i for i, v in enumerate(leaves) if not info.min <= v <= info.max), None)
        if position is None:  # all in range, but numpy found no one type for them (uint64)
            return np.array(leaves, dtype=target)
        raise BadRequest(
            f"{where(_unravel(position, shape))}: integer {leaves[position]} is out of range "
            f"for {target.name}"
        )
    return array.astype(target)


def _floats(
    leaves: list[Any],
    target: np.dtype[Any],
    shape: tuple[int, ...],
    where: Locate,
    *,
    allow_nan: bool,
) -> Array:
    try:
        wide = np.array(leaves, dtype=np.float64)
    except OverflowError as exc:
        raise BadRequest(f"{where(())}: a number is too large for {target.name}") from exc
    return check_floats(
        wide, target, where=lambda i: where(_unravel(i, shape)), allow_nan=allow_nan
    )


def check_floats(
    wide: Array,
    target: np.dtype[Any],
    *,
    where: Callable[[int], str],
    allow_nan: bool,
) -> Array:
    """Cast floating `wide` to `target`, refusing NaN/Infinity (unless allowed) and overflow.

    `where(flat_position)` names the element at fault.
    """
    finite = np.isfinite(wide)
    if not allow_nan and not finite.all():
        position = int(np.argmin(finite.ravel()))
        value = float(wide.ravel()[position])
        token = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        raise BadRequest(
            f"{where(position)}: {token} is not allowed: this model takes finite numbers only"
        )
    with np.errstate(over="ignore"):
        narrow = wide.astype(target)
    overflow = np.isinf(narrow) & finite
    if overflow.any():
        position = int(np.argmax(overflow.ravel()))
        raise BadRequest(
            f"{where(position)}: {wide.ravel()[position]} is out of range for {target.name}"
        )
    return narrow


def check_shape(shape: Sequence[int], spec: TensorSpec, *, what: str) -> None:
    """Refuse `shape` unless it has the spec's rank and its fixed dimensions."""
    if len(shape) != len(spec.shape) or any(
        want is not None and got != want for got, want in zip(shape, spec.shape, strict=False)
    ):
        raise BadRequest(
            f"{what} has shape {shape_text(shape)}, but the model expects "
            f"{shape_text(spec.shape)} (-1: any size)"
        )


def batch_rows(arrays: dict[str, Array]) -> int:
    """The common first dimension of the inputs: at least one row, the same for every input."""
    sizes = {name: int(array.shape[0]) if array.ndim else 0 for name, array in arrays.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name!r} has {size}" for name, size in sizes.items())
        raise BadRequest(
            f"all inputs must have the same number of rows (first dimension): {listed}"
        )
    rows = next(iter(sizes.values()), 0)
    if rows == 0:
        raise BadRequest("the request holds no rows: send at least one instance")
    return rows


def cast_input(array: Array, spec: TensorSpec, *, allow_nan: bool, what: str) -> Array:
    """Convert a request tensor to the model's dtype when no value can change meaning.

    Allowed: the same dtype; integers to a wider or narrower integer type when every value
    fits; integers to floats; floats to another float type when no value overflows. Refused:
    floats to integers, anything to or from bool, and strings to or from numbers.
    """
    target = np.dtype(numpy_dtype_name(spec.dtype))
    source = array.dtype
    if source == target:
        return array
    if source.kind == "O" or target.kind == "O":
        raise BadRequest(
            f"{what}: values of type {'BYTES' if source.kind == 'O' else source.name} cannot "
            f"be used as {'BYTES' if target.kind == 'O' else target.name}"
        )
    if source.kind in "iu" and target.kind in "iu":
        info = np.iinfo(target)
        if array.size and (int(array.min()) < info.min or int(array.max()) > info.max):
            raise BadRequest(f"{what}: a value is out of range for {target.name}")
        return array.astype(target)
    if source.kind in "iu" and target.kind == "f":
        return array.astype(target)
    if source.kind == "f" and target.kind == "f":
        return check_floats(
            array, target, where=lambda i: f"{what} element {i}", allow_nan=allow_nan
        )
    raise BadRequest(f"{what}: values of type {source.name} cannot be used as {target.name}")
