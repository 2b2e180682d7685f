"""The frames HTTP workers and the model process exchange over their Unix socket.

A frame is an 8-byte prefix (`!II`: head length, body length), a head (a UTF-8 JSON object)
and a body: the raw bytes of the frame's arrays back to back, in the order the head's
`arrays` list names them (`[name, dtype, shape]`). Tensors are never turned into JSON or
pickled: a worker sends the bytes its parser produced, the model process reads them into one
buffer and views each array in it (`numpy.frombuffer`), so a row costs one copy per side.
Fixed-size numeric and boolean dtypes cross as raw bytes. A string tensor (an object array of
`bytes`, described with dtype `"bytes"`) crosses as its elements in row-major order, each a
4-byte little-endian length then its bytes (Triton's BYTES layout); it is read back into a new
object array, every length checked against what is left of the body before anything is copied.
Nothing else crosses (no pickle): any other dtype, or an object array holding anything but
`bytes`, is a `WireError`.

The socket is private to the instance (a 0700 folder), yet a frame is still checked as if a
stranger had sent it: head and body are bounded, the head must be a JSON object, the arrays
must account for the body exactly. `receive` returns `None` when the peer closed cleanly
between frames; a frame cut short raises `WireError`.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from secure_maas.errors import SecureMaasError

Array = npt.NDArray[Any]
Head = dict[str, Any]

PREFIX = struct.Struct("!II")
MAX_HEAD_BYTES = 1 << 20
#: The largest body a frame may carry (the prefix could say up to 4 GiB).
MAX_BODY_BYTES = (1 << 31) - 1
#: Numpy kinds that cross as raw bytes: booleans, signed and unsigned integers, floats.
KINDS = frozenset("biuf")
#: The dtype a frame names for an object array of `bytes` (length-prefixed elements).
BYTES = "bytes"
_LENGTH = struct.Struct("<I")


class WireError(SecureMaasError):
    """A frame could not be sent, or what arrived is not a well-formed frame."""


def send(
    sock: socket.socket, head: Mapping[str, Any], arrays: Mapping[str, Array] | None = None
) -> None:
    """Write one frame: `head` (JSON) and `arrays` (raw bytes, C order)."""
    arrays = arrays or {}
    buffers: list[memoryview] = []
    described: list[list[Any]] = []
    for name, array in arrays.items():
        if array.dtype.kind == "O":
            described.append([name, BYTES, list(array.shape)])
            # One buffer: sendmsg takes at most IOV_MAX (1024) buffers per call.
            buffers.append(memoryview(b"".join(_byte_parts(name, array))))
            continue
        if array.dtype.kind not in KINDS:
            raise WireError(f"array {name!r} has dtype {array.dtype}, which cannot cross")
        contiguous = array if array.flags.c_contiguous else array.copy(order="C")
        described.append([name, contiguous.dtype.str, list(contiguous.shape)])
        if contiguous.size:
            buffers.append(memoryview(contiguous.reshape(-1).view(np.uint8).data))
    encoded = json.dumps({**head, "arrays": described}, separators=(",", ":")).encode()
    body = sum(len(view) for view in buffers)
    if len(encoded) > MAX_HEAD_BYTES or body > MAX_BODY_BYTES:
        raise WireError(f"frame too large: head {len(encoded)} bytes, body {body} bytes")
    parts: list[bytes | memoryview] = [PREFIX.pack(len(encoded), body), encoded, *buffers]
    try:
        _send_all(sock, parts)
    except OSError as exc:
        raise WireError(f"send failed: {exc}") from exc


def receive(sock: socket.socket) -> tuple[Head, dict[str, Array]] | None:
    """Read one frame: its head and its arrays (views into one buffer). None when the peer
    closed before a new frame began."""
    prefix = bytearray(PREFIX.size)
    if not _receive_into(sock, memoryview(prefix), allow_eof=True):
        return None
    head_size, body_size = PREFIX.unpack(prefix)
    if head_size > MAX_HEAD_BYTES or body_size > MAX_BODY_BYTES:
        raise WireError(f"frame too large: head {head_size} bytes, body {body_size} bytes")
    head_bytes = bytearray(head_size)
    _receive_into(sock, memoryview(head_bytes))
    body = bytearray(body_size)
    _receive_into(sock, memoryview(body))
    try:
        head = json.loads(head_bytes)
    except ValueError as exc:
        raise WireError(f"frame head is not JSON: {exc}") from None
    if not isinstance(head, dict):
        raise WireError("frame head is not a JSON object")
    return head, _arrays(head.pop("arrays", []), body)


def _byte_parts(name: str, array: Array) -> list[bytes]:
    """Each element's length prefix and bytes, row-major."""
    parts: list[bytes] = []
    for value in array.ravel(order="C"):
        if not isinstance(value, bytes):
            raise WireError(f"array {name!r} holds a {type(value).__name__}, which cannot cross")
        if len(value) > MAX_BODY_BYTES:
            raise WireError(f"array {name!r} holds an element of {len(value)} bytes")
        parts += (_LENGTH.pack(len(value)), value)
    return parts


def _byte_array(name: str, count: int, body: bytearray, offset: int) -> tuple[Array, int]:
    """`count` length-prefixed elements from `body` at `offset`, and the offset after them."""
    if count > (len(body) - offset) // _LENGTH.size:  # before any list or array is made
        raise WireError(f"frame array {name!r} claims more elements than the body holds")
    elements: list[bytes] = []
    for _ in range(count):
        if offset + _LENGTH.size > len(body):
            raise WireError(f"frame array {name!r} runs past the body")
        (length,) = _LENGTH.unpack_from(body, offset)
        offset += _LENGTH.size
        if length > len(body) - offset:
            raise WireError(f"frame array {name!r} runs past the body")
        elements.append(bytes(body[offset : offset + length]))
        offset += length
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array, offset


def _arrays(described: object, body: bytearray) -> dict[str, Array]:
    if not isinstance(described, list):
        raise WireError("frame 'arrays' is not a list")
    arrays: dict[str, Array] = {}
    offset = 0
    for item in described:
        try:
            name, dtype_text, shape = item
            dims = tuple(int(n) for n in shape)
            dtype = None if dtype_text == BYTES else np.dtype(dtype_text)
        except (TypeError, ValueError) as exc:
            raise WireError(f"frame array description {item!r} is malformed") from exc
        if not isinstance(name, str) or name in arrays:
            raise WireError(f"frame array name {name!r} is not a new string")
        if dtype is None:
            if any(n < 0 for n in dims):
                raise WireError(f"frame array {name!r}: shape {dims} refused")
            flat, offset = _byte_array(name, math.prod(dims), body, offset)
            try:
                arrays[name] = flat.reshape(dims)
            except ValueError:  # an empty shape numpy cannot make ([0, 2**62, 2**62])
                raise WireError(f"frame array {name!r}: shape {dims} refused") from None
            continue
        if dtype.kind not in KINDS or any(n < 0 for n in dims):
            raise WireError(f"frame array {name!r}: dtype {dtype} or shape {dims} refused")
        size = dtype.itemsize * math.prod(dims)
        if offset + size > len(body):
            raise WireError(f"frame array {name!r} runs past the body")
        arrays[name] = np.frombuffer(body, dtype, math.prod(dims), offset).reshape(dims)
        offset += size
    if offset != len(body):
        raise WireError(f"frame body has {len(body) - offset} bytes no array accounts for")
    return arrays


def _send_all(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    views = [memoryview(part) for part in parts if len(part)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def _receive_into(sock: socket.socket, view: memoryview, *, allow_eof: bool = False) -> bool:
    got = 0
    while got < len(view):
        try:
            n = sock.recv_into(view[got:])
        except OSError as exc:
            raise WireError(f"receive failed: {exc}") from exc
        if n == 0:
            if got == 0 and allow_eof:
                return False
            raise WireError(f"connection closed mid-frame ({got} of {len(view)} bytes)")
        got += n
    return True
