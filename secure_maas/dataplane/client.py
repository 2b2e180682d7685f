"""The workers' side of the socket: `RemoteDataPlane` (models) and `InstanceAudit` (audit).

Each worker thread keeps its own connection to the model process (thread-local, opened on
first use, reopened after a failure), so calls never queue behind another thread's. A call
that cannot reach the model process raises `DataPlaneUnavailable`, a `ModelUnavailable`: the
request fails closed with 503 and is audited like any refusal. Replies carrying an error are
raised as the exception the model process caught (`ModelNotFound`, `BatchRefused`, ...).

`InstanceAudit` sends each event to the instance's one writer, so the events of all workers
share its transactions, and returns once it is committed. When the model process cannot be
reached before the event was handed over (not running, restarting), the event is written by a
local writer instead, to the same chain: a 503 caused by a dead model process is audited too.
When the event was handed over but no answer came, it may or may not be committed: the caller
gets `AuditUnconfirmed` (an `AuditUnavailable`) and fails closed; the pipeline then records
its 503 as a new event (an answer the caller got is never unaudited when the log takes writes;
the unconfirmed event, if it was committed, stays beside it with the same request id).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path

from secure_maas.audit import AuditEvent, AuditSink, AuditUnavailable
from secure_maas.dataplane import events
from secure_maas.dataplane.batcher import BatchRefused, QueueFull
from secure_maas.dataplane.devices import route
from secure_maas.dataplane.loaded import ModelState, ModelUnavailable, VersionState
from secure_maas.dataplane.loads import current_request_id
from secure_maas.dataplane.plane import Array, Fallback, Served
from secure_maas.dataplane.statistics import Key, VersionStatistics
from secure_maas.dataplane.wire import Head, WireError, receive, send
from secure_maas.db import DatabaseUnavailable
from secure_maas.keys import KeyringError
from secure_maas.registry.catalog import ModelNotFound, ModelRef

log = logging.getLogger(__name__)

#: How long a call waits for its answer (a model call, an audit commit, a model load).
CALL_TIMEOUT_S = 120.0


class AuditUnconfirmed(AuditUnavailable):
    """An audit event was handed to the model process, which died before confirming it: it may
    or may not be committed. `record_locally` writes another event with this process's own
    writer (the model process may still be dying: a new connection can reach it too)."""

    def __init__(self, message: str, record_locally: Callable[[AuditEvent], object]) -> None:
        super().__init__(message)
        self.record_locally = record_locally


class DataPlaneUnavailable(ModelUnavailable):
    """The model process could not be reached, or did not answer."""


class NotDelivered(DataPlaneUnavailable):
    """The frame was not handed over: the model process has not seen it."""


_RAISED: dict[str, Callable[[str], Exception]] = {
    "not_found": ModelNotFound,
    "refused": BatchRefused,
    "busy": QueueFull,
    "unavailable": ModelUnavailable,
    "audit": AuditUnavailable,
    "database": DatabaseUnavailable,
    "keys": KeyringError,
}


class RemoteDataPlane:
    """A `DataPlane` served by the model process listening on `path`."""

    def __init__(self, path: Path, *, timeout: float = CALL_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        self._all: set[socket.socket] = set()
        self._lock = threading.Lock()

    def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, Array],
        allowed: Collection[int],
        request_id: str | None = None,
    ) -> Served | Fallback:
        head = {
            "op": "predict",
            "ref": str(ref),
            "allowed": sorted(allowed),
            "request_id": request_id,
        }
        reply, outputs = self.call(head, inputs)
        if "fallback" in reply:
            return Fallback(int(reply["fallback"]))
        return Served(outputs, int(reply["version"]))

    def ready(self, ref: ModelRef, *, load: bool = False) -> bool:
        reply, _ = self.call({"op": "ready", "ref": str(ref), "load": load})
        return bool(reply["ready"])

    def state(self, ref: ModelRef, *, load: bool = False) -> VersionState:
        reply, _ = self.call({"op": "state", "ref": str(ref), "load": load})
        return _state(reply)

    def load(self, ref: ModelRef) -> VersionState:
        """Have the model process load `ref` now (its `model:load` event carries the id of
        the request that asked)."""
        request_id = current_request_id.get()
        return _state(self.call({"op": "load", "ref": str(ref), "request_id": request_id})[0])

    def unload(self, ref: ModelRef) -> VersionState:
        request_id = current_request_id.get()
        return _state(self.call({"op": "unload", "ref": str(ref), "request_id": request_id})[0])

    def stats(self, keys: Iterable[Key] | None = None) -> list[VersionStatistics]:
        """The model process's counts (every worker's requests), of `keys` or every version."""
        wanted = None if keys is None else [list(key) for key in keys]
        reply, _ = self.call({"op": "stats", "keys": wanted})
        try:
            return [VersionStatistics.from_wire(item) for item in reply["stats"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataPlaneUnavailable(f"the model process sent no statistics: {exc}") from None

    def preload(self, refs: Iterable[str]) -> dict[str, str | None]:
        reply, _ = self.call({"op": "preload", "refs": [str(ref) for ref in refs]})
        results: dict[str, str | None] = reply["results"]
        return results

    def audit(self, event: AuditEvent, request_id: str | None = None) -> None:
        """Have the instance's writer commit `event` (returns once it is committed)."""
        self.call({"op": "audit", "event": events.to_wire(event), "request_id": request_id})

    def ping(self) -> Head:
        """The model process's pid and loaded models (raises if it does not answer)."""
        reply, _ = self.call({"op": "ping"})
        return reply

    def call(
        self, head: Mapping[str, object], arrays: Mapping[str, Array] | None = None
    ) -> tuple[Head, dict[str, Array]]:
        """Send one frame and read its answer; raise the error it reports."""
        sock = self._connection()
        try:
            send(sock, head, arrays)
        except WireError as exc:
            self._drop(sock)
            raise NotDelivered(f"the model process did not take the call: {exc}") from None
        try:
            frame = receive(sock)
        except WireError as exc:
            self._drop(sock)
            raise DataPlaneUnavailable(f"the model process did not answer: {exc}") from None
        if frame is None:
            self._drop(sock)
            raise DataPlaneUnavailable("the model process closed the connection")
        reply, outputs = frame
        if not reply.get("ok"):
            kind, message = str(reply.get("error")), str(reply.get("message"))
            raised = _RAISED.get(kind)
            if raised is None:
                raise RuntimeError(f"model process error ({kind}): {message}")
            raise raised(message)
        return reply, outputs

    def close(self) -> None:
        """Close every thread's connection (the model process keeps running)."""
        with self._lock:
            socks, self._all = list(self._all), set()
        for sock in socks:
            sock.close()

    def _connection(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is not None:
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise NotDelivered(f"the model process is not reachable: {exc}") from None
        self._local.sock = sock
        with self._lock:
            self._all.add(sock)
        return sock

    def _drop(self, sock: socket.socket) -> None:
        self._local.sock = None
        with self._lock:
            self._all.discard(sock)
        sock.close()


class RoutedDataPlane:
    """The `DataPlane` of an instance with several model processes (one per accelerator): each
    model's calls go to the one process `devices.route` names for it; audit events go to the
    first, which hosts the instance's writer."""

    def __init__(self, paths: Sequence[Path], *, timeout: float = CALL_TIMEOUT_S) -> None:
        if not paths:
            raise ValueError("an instance has at least one model process")
        self.planes = [RemoteDataPlane(path, timeout=timeout) for path in paths]

    def plane_of(self, name: str) -> RemoteDataPlane:
        """The model process that holds the model `name`."""
        return self.planes[route(name, len(self.planes))]

    def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, Array],
        allowed: Collection[int],
        request_id: str | None = None,
    ) -> Served | Fallback:
        return self.plane_of(ref.name).predict(ref, inputs, allowed, request_id)

    def ready(self, ref: ModelRef, *, load: bool = False) -> bool:
        return self.plane_of(ref.name).ready(ref, load=load)

    def state(self, ref: ModelRef, *, load: bool = False) -> VersionState:
        return self.plane_of(ref.name).state(ref, load=load)

    def load(self, ref: ModelRef) -> VersionState:
        return self.plane_of(ref.name).load(ref)

    def unload(self, ref: ModelRef) -> VersionState:
        return self.plane_of(ref.name).unload(ref)

    def stats(self, keys: Iterable[Key] | None = None) -> list[VersionStatistics]:
        """Every model process's counts (each model lives in one), by name and version."""
        if keys is None:
            found = [item for plane in self.planes for item in plane.stats()]
        else:
            by_plane: dict[int, list[Key]] = {}
            for key in keys:
                by_plane.setdefault(route(key[0], len(self.planes)), []).append(key)
            found = [
                item for index, some in by_plane.items() for item in self.planes[index].stats(some)
            ]
        return sorted(found, key=lambda item: (item.name, item.version))

    def preload(self, refs: Iterable[str]) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        for ref in refs:
            results.update(self.plane_of(ModelRef.parse(ref).name).preload([ref]))
        return results

    def audit(self, event: AuditEvent, request_id: str | None = None) -> None:
        self.planes[0].audit(event, request_id)

    def ping(self) -> list[Head]:
        """Every model process's answer (raises if one does not answer)."""
        return [plane.ping() for plane in self.planes]

    def close(self) -> None:
        for plane in self.planes:
            plane.close()


def _state(reply: Head) -> VersionState:
    try:
        return VersionState(ModelState(reply["state"]), refused=bool(reply["refused"]))
    except (KeyError, ValueError) as exc:
        raise DataPlaneUnavailable(f"the model process sent no state: {exc}") from None


class InstanceAudit:
    """The audit sink of a worker: the instance's writer, a local one when it is unreachable."""

    def __init__(
        self, plane: RemoteDataPlane | RoutedDataPlane, local: Callable[[], AuditSink]
    ) -> None:
        self._plane = plane
        self._make_local = local
        self._local: AuditSink | None = None
        self._lock = threading.Lock()

    def append(self, event: AuditEvent) -> None:
        """Return once `event` is committed (`AuditUnavailable` otherwise)."""
        try:
            self._plane.audit(event, event.request_id)
        except NotDelivered as exc:
            log.warning("instance audit writer unreachable (%s): writing locally", exc)
            self._fallback().append(event)
        except DataPlaneUnavailable as exc:
            message = f"audit write not confirmed: {exc}"
            raise AuditUnconfirmed(message, lambda again: self._fallback().append(again)) from None

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            local = self._local
        if local is not None:
            local.close(timeout)

    def _fallback(self) -> AuditSink:
        with self._lock:
            if self._local is None:
                self._local = self._make_local()
            return self._local
