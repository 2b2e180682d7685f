"""The model process's side of the socket: one thread per worker connection, one data plane.

`DataPlaneServer` holds a `ModelHost`: the instance's only `ModelCache` that loads models (so
TensorFlow, decryption and the GPU live here alone) and the instance's audit writer, so the
events of every worker's requests share its group commits. Each connection (one per worker
thread) gets a thread that reads a frame, does what it asks and answers:

- `predict` (ref, allowed versions, request id; arrays) -> outputs and the serving version, or
  the version to decide on first (`Fallback`); the concurrent calls of all workers meet in
  the model's micro-batcher;
- `audit` (an event) -> acknowledged once committed (`AuditWriter.append`);
- `state` (ref, load) -> the version's state and whether its artifact was refused;
- `load`, `unload` (ref, request id) -> the same, once the version is in memory (or refused)
  or out of it;
- `stats` (keys or none) -> what each version ran here (`statistics`), for every worker;
- `ready`, `preload`, `ping`.

An error is answered as `{"ok": false, "error": KIND, "message": ...}`, KIND one of `ERRORS`;
the client raises the matching exception (state it could not read, such as the database, is a
503 at the worker as it is in a single process). Model events (`model:load`) are audited here with
the id of the request that caused them, as in a single process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from secure_maas.audit import AuditUnavailable
from secure_maas.config import Settings
from secure_maas.dataplane import events
from secure_maas.dataplane.batcher import BatcherClosed, BatchRefused, QueueFull
from secure_maas.dataplane.devices import VISIBLE
from secure_maas.dataplane.host import ModelHost
from secure_maas.dataplane.loaded import ModelUnavailable
from secure_maas.dataplane.loads import current_request_id
from secure_maas.dataplane.plane import Array, Fallback, LocalDataPlane
from secure_maas.dataplane.wire import Head, WireError, receive, send
from secure_maas.db import DatabaseUnavailable
from secure_maas.keys import KeyringError
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.registry.store import InvalidName

log = logging.getLogger(__name__)

#: Error kinds a reply may carry, by the exception that causes them (first match wins).
ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (ModelNotFound, "not_found"),
    (InvalidName, "not_found"),
    (BatchRefused, "refused"),
    (QueueFull, "busy"),
    (BatcherClosed, "unavailable"),
    (ModelUnavailable, "unavailable"),
    (AuditUnavailable, "audit"),
    (DatabaseUnavailable, "database"),
    (SQLAlchemyError, "database"),
    (KeyringError, "keys"),
)
#: Kinds that are state the model process could not read (503, logged without a traceback).
UNREADABLE = frozenset({"database", "keys"})


class DataPlaneServer:
    """Serves `LocalDataPlane` and the audit writer of `host` on a Unix socket."""

    def __init__(self, host: ModelHost, path: Path) -> None:
        self.host = host
        self.plane = LocalDataPlane(host.cache)
        self.path = path
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._handlers: dict[str, Callable[[Head, dict[str, Array]], tuple[Head, dict[str, Array]]]]
        self._handlers = {
            "predict": self._predict,
            "audit": self._audit,
            "ready": self._ready,
            "state": self._state,
            "load": self._load,
            "unload": self._unload,
            "stats": self._stats,
            "preload": self._preload,
            "ping": self._ping,
        }

    @classmethod
    def build(cls, settings: Settings, path: Path) -> DataPlaneServer:
        return cls(ModelHost.build(settings), path)

    def listen(self) -> None:
        """Bind the socket (replacing a stale one left by a killed predecessor)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(256)
        self._listener = listener

    def preload(self, refs: Iterable[str]) -> None:
        for ref, problem in self.plane.preload(refs).items():
            if problem is None:
                log.info("preloaded %s", ref)
            else:
                log.error("could not preload %s: %s", ref, problem)

    def serve_forever(self) -> None:
        """Accept connections until `stop()`; each gets its own thread."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("serve_forever() before listen()")
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        """Stop accepting; connections end after their current frame; nothing is closed yet."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)

    def close(self) -> None:
        """Unload the models and write every queued audit event."""
        self.stop()
        self.host.close()

    # -- one connection ----------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                frame = receive(conn)
                if frame is None:
                    return
                head, arrays = frame
                reply, outputs = self._answer(head, arrays)
                send(conn, reply, outputs)
        except WireError as exc:
            if not self._stopping.is_set():
                log.warning("data plane connection dropped: %s", exc)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _answer(self, head: Head, arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        handler = self._handlers.get(str(head.get("op")))
        if handler is None:
            return {"ok": False, "error": "bad", "message": f"unknown op {head.get('op')!r}"}, {}
        request_id = head.get("request_id")
        token = current_request_id.set(request_id if isinstance(request_id, str) else None)
        try:
            return handler(head, arrays)
        except Exception as exc:
            for kind, name in ERRORS:
                if isinstance(exc, kind):
                    if name in UNREADABLE:
                        log.warning("data plane %s failed closed: %s", head.get("op"), exc)
                    return {"ok": False, "error": name, "message": str(exc)}, {}
            log.exception("data plane %s failed", head.get("op"))
            return {"ok": False, "error": "internal", "message": type(exc).__name__}, {}
        finally:
            current_request_id.reset(token)

    def _predict(self, head: Head, arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        ref = _ref(head)
        allowed = [int(v) for v in head.get("allowed", [])]
        result = self.plane.predict(ref, arrays, allowed)
        if isinstance(result, Fallback):
            return {"ok": True, "fallback": result.version}, {}
        return {"ok": True, "version": result.version}, result.outputs

    def _audit(self, head: Head, _arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        self.host.audit.append(events.from_wire(head["event"]))
        return {"ok": True}, {}

    def _ready(self, head: Head, _arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        return {"ok": True, "ready": self.plane.ready(_ref(head), load=bool(head.get("load")))}, {}

    def _state(self, head: Head, _arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        found = self.plane.state(_ref(head), load=bool(head.get("load")))
        return {"ok": True, "state": found.state.value, "refused": found.refused}, {}

    def _load(self, head: Head, _arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        found = self.plane.load(_ref(head))
        return {"ok": True, "state": found.state.value, "refused": found.refused}, {}

    def _unload(self, head: Head, _arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        found = self.plane.unload(_ref(head))
        return {"ok": True, "state": found.state.value, "refused": found.refused}, {}

    def _stats(self, head: Head, _arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        wanted = head.get("keys")
        keys = None if wanted is None else [(str(name), int(v)) for name, v in wanted]
        return {"ok": True, "stats": [item.to_wire() for item in self.plane.stats(keys)]}, {}

    def _preload(self, head: Head, _arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        refs = [str(ref) for ref in head.get("refs", [])]
        return {"ok": True, "results": self.plane.preload(refs)}, {}

    def _ping(self, _head: Head, _arrays: dict[str, Array]) -> tuple[Head, dict[str, Array]]:
        loaded = [list(k) for k in self.loaded()]
        accelerator = os.environ.get(VISIBLE)
        return {"ok": True, "pid": os.getpid(), "loaded": loaded, "accelerator": accelerator}, {}

    def loaded(self) -> list[tuple[str, int]]:
        return self.host.cache.loaded()


def _ref(head: Head) -> ModelRef:
    found: Any = head.get("ref")
    if not isinstance(found, str):
        raise InvalidName("no model reference")
    return ModelRef.parse(found)
