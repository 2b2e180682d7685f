"""The frames between workers and the model process, and audit events as they cross: every
dtype and shape comes back bit for bit; a frame a stranger could send (cut short, lying about
its sizes, naming arrays that overrun the body or leave bytes over, object dtypes) is refused
with `WireError`, never read past its end."""

from __future__ import annotations

import json
import socket
import struct
import threading
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from secure_maas.actions import Action
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent
from secure_maas.audit.events import InvalidAuditEvent
from secure_maas.dataplane import events
from secure_maas.dataplane.wire import MAX_HEAD_BYTES, PREFIX, WireError, receive, send


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def roundtrip(head: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    left, right = pair()
    right.settimeout(60)  # a sender that failed must not leave the reader waiting forever
    with left, right:
        sender = threading.Thread(target=send, args=(left, head, arrays))
        sender.start()  # a large frame fills the socket buffer: read while it is written
        got = receive(right)
        sender.join()
    return got


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([[np.nan, np.inf, -0.0]], dtype=np.float64),
        np.array([True, False]),
        np.arange(6, dtype=np.int64).reshape(2, 3, 1)[::-1],  # not contiguous: sent as if it were
        np.zeros((0, 4), dtype=np.float32),
        np.array(7, dtype=np.uint8),
        np.arange(4, dtype=">i4"),  # big-endian stays big-endian
        np.random.default_rng(1).normal(size=(512, 1024)).astype(np.float32),  # 2 MiB
    ],
    ids=["f32", "nonfinite", "bool", "strided", "empty", "scalar", "bigendian", "large"],
)
def test_arrays_come_back_identical(array: np.ndarray) -> None:
    got = roundtrip({"op": "x", "n": 1}, {"x": array, "y": np.ones(2, np.float16)})
    assert got is not None
    head, arrays = got
    assert head == {"op": "x", "n": 1}
    assert list(arrays) == ["x", "y"]
    assert arrays["x"].dtype == array.dtype and arrays["x"].shape == array.shape
    np.testing.assert_array_equal(arrays["x"], array)
    np.testing.assert_array_equal(arrays["y"], np.ones(2, np.float16))


def test_a_clean_close_between_frames_is_none_and_mid_frame_an_error() -> None:
    left, right = pair()
    left.close()
    assert receive(right) is None
    right.close()
    left, right = pair()
    left.sendall(PREFIX.pack(10, 0) + b'{"op"')
    left.close()
    with pytest.raises(WireError, match="closed mid-frame"):
        receive(right)
    right.close()


def raw_frame(head: bytes, body: bytes = b"", *, sizes: tuple[int, int] | None = None) -> bytes:
    head_size, body_size = sizes or (len(head), len(body))
    return struct.pack("!II", head_size, body_size) + head + body


def described(items: list[Any]) -> bytes:
    return json.dumps({"op": "x", "arrays": items}).encode()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (raw_frame(b"", sizes=(MAX_HEAD_BYTES + 1, 0)), "too large"),
        (raw_frame(b"", sizes=(2, 2**31)), "too large"),
        (raw_frame(b"not json"), "not JSON"),
        (raw_frame(b"[1, 2]"), "not a JSON object"),
        (raw_frame(b'{"arrays": 5}'), "not a list"),
        (raw_frame(described([["x", "<f4", [4]]]), b"\0" * 8), "runs past the body"),
        (raw_frame(described([["x", "<f4", [1]]]), b"\0" * 8), "no array accounts for"),
        (raw_frame(described([["x", "|O", [1]]]), b"\0" * 8), "refused"),
        (raw_frame(described([["x", "<f4", [-1]]]), b""), "refused"),
        (raw_frame(described([["x", "<f4", [1]], ["x", "<f4", [1]]]), b"\0" * 8), "not a new"),
        (raw_frame(described([["x", "<f4"]]), b""), "malformed"),
        (raw_frame(described([[1, "<f4", [1]]]), b"\0" * 4), "not a new string"),
        (raw_frame(described([["x", "nonsense", [1]]]), b"\0" * 4), "malformed"),
    ],
    ids=["head-size", "body-size", "json", "list-head", "arrays-type", "overrun", "leftover",
         "object", "negative", "duplicate", "short-description", "name-type", "dtype"],
)  # fmt: skip
def test_malformed_frames_are_refused(frame: bytes, message: str) -> None:
    left, right = pair()
    with left, right:
        threading.Thread(target=left.sendall, args=(frame,), daemon=True).start()
        with pytest.raises(WireError, match=message):
            receive(right)


def test_object_and_string_arrays_are_not_sent() -> None:
    left, right = pair()
    with left, right, pytest.raises(WireError, match="cannot cross"):
        send(left, {"op": "x"}, {"x": np.array(["a"], dtype=object)})


def event(**extra: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "action": Action.MODEL_PREDICT,
        "actor": "alice\x1b[31m",
        "actor_kind": ActorKind.USER,
        "decision": AuditDecision.DENY,
        "model": "digits",
        "model_version": 2,
        "reason_code": "not_visible",
        "reason": "why\nnot \u202e and \\x1b",
        "http_status": 404,
        "client": "127.0.0.1",
        "latency_ms": 1.234567,
        "rows": 3,
        "body_sha256": "ab" * 32,
        "request_id": "r-1",
        "detail": {"jti": "j", "n": 5},
        "at": datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=UTC),
    }
    fields.update(extra)
    return AuditEvent(**fields)


@pytest.mark.parametrize("made", [event(), event(at=None, detail=None, latency_ms=None)])
def test_audit_events_cross_unchanged(made: AuditEvent) -> None:
    wire = json.loads(json.dumps(events.to_wire(made)))
    assert events.from_wire(wire) == made
    assert events.from_wire(wire).detail == made.detail


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ([1, 2], WireError),
        ({"action": "model:predict"}, WireError),
        ({**events.to_wire(event()), "extra": 1}, WireError),
        ({**events.to_wire(event()), "at": "2026-12-04"}, WireError),
        ({**events.to_wire(event()), "action": "nope"}, InvalidAuditEvent),
        ({**events.to_wire(event()), "actor": "a\x00b"}, InvalidAuditEvent),
    ],
    ids=["list", "missing-fields", "extra-field", "time-text", "unknown-action", "nul"],
)
def test_what_is_not_an_audit_event_is_refused(data: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        events.from_wire(data)
