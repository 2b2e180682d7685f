"""The frames HTTP workers and the model process exchange over their Unix socket.

A frame is an 8-byte prefix (`!II`: head length, body length), a head (a UTF-8 JSON object)
and a body: the raw bytes of the frame's arrays back to back, in the order the head's
`arrays` list names them (`[name, dtype, shape]`). Tensors are never turned into JSON or
pickled: a worker sends the bytes its parser produced, the model process reads them into one
buffer and views each array in it (`numpy.frombuffer`), so a row costs one copy per side.
Only fixed-size numeric and boolean dtypes cross; anything else is a `WireError`.

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
#: Numpy kinds that cross: booleans, signed and unsigned integers, floats.
KINDS = frozenset("biuf")


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


def _arrays(described: object, body: bytearray) -> dict[str, Array]:
    if not isinstance(described, list):
        raise WireError("frame 'arrays' is not a list")
    arrays: dict[str, Array] = {}
    offset = 0
    for item in described:
        try:
            name, dtype_text, shape = item
            dtype = np.dtype(dtype_text)
            dims = tuple(int(n) for n in shape)
        except (TypeError, ValueError) as exc:
            raise WireError(f"frame array description {item!r} is malformed") from exc
        if not isinstance(name, str) or name in arrays:
            raise WireError(f"frame array name {name!r} is not a new string")
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
