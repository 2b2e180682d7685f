"""A gRPC call through the one pipeline: the request as `pipeline.Call` reads it, and the
answer as gRPC sends it.

`GrpcInbound` is the gRPC side of `pipeline.Inbound`: the bearer token comes from the
`authorization` metadata, the request id from `x-request-id` (echoed in the initial
metadata), the client is the peer's address, and the body is the serialized request message,
whole (gRPC hands a handler nothing until its message has arrived, decompressed if it came
compressed). Its size is checked first, as a declared Content-Length is; its digest is the
audit event's `body_sha256` once the caller is authenticated and the message parsed.

`answer` runs one RPC: unguarded ones (liveness, readiness, server metadata: no token over
HTTP either) directly, guarded ones through `Call.execute`, whose result or `Refusal` is
audited (`Call.record`) before anything is sent; a failed audit write answers UNAVAILABLE. A
refusal's HTTP status becomes the gRPC status code below, its message the details, and its
headers (`Retry-After`, `WWW-Authenticate`) trailing metadata in lower case. The same
metrics count it, under the endpoint `grpc.<Service>.<Method>`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from secure_maas.actions import Action
from secure_maas.dataplane.loads import current_request_id
from secure_maas.serving.encodings import Coding
from secure_maas.serving.errors import ApiError
from secure_maas.serving.headers import request_id
from secure_maas.serving.pipeline import INTERNAL, UNAVAILABLE, Call, Refusal
from secure_maas.serving.refs import Api
from secure_maas.serving.services import Services

log = logging.getLogger(__name__)

MessageT = TypeVar("MessageT", bound=Message)
Metadata = Sequence[tuple[str, str | bytes]]
REQUEST_ID_KEY = "x-request-id"

#: The gRPC status of each HTTP status the pipeline answers (gRPC's own HTTP mapping, read
#: backwards, and its documented choices for quota and size: RESOURCE_EXHAUSTED).
CODES: dict[int, grpc.StatusCode] = {
    200: grpc.StatusCode.OK,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


def code_of(status: int) -> grpc.StatusCode:
    """The gRPC status code of an HTTP status (UNKNOWN for one the pipeline never gives)."""
    return CODES.get(status, grpc.StatusCode.UNKNOWN)


def peer_address(peer: str) -> str | None:
    """The address of a gRPC peer (`ipv4:127.0.0.1:5000` -> `127.0.0.1`, `ipv6:[::1]:5000`
    -> `::1`), as HTTP's remote address records it; other kinds of peer as they are."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] or rest
        return host.strip("[]").split("%")[0]
    return peer[:64] or None


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


@dataclass(frozen=True)
class GrpcInbound:
    """One gRPC request as the pipeline reads it (see the module docstring)."""

    endpoint: str
    request_id: str
    client: str | None
    raw: bytes
    metadata: Metadata

    @property
    def content_length(self) -> int:
        return len(self.raw)

    def authorization(self) -> list[str]:
        return [_text(value) for key, value in self.metadata if key == "authorization"]

    def content_coding(self, call: Call, content_types: frozenset[str]) -> Coding | None:
        return None  # gRPC decompressed the message before the handler got it

    def read_body(self, call: Call) -> None:
        if call.body_sha256 is None:
            call.take_body(self.raw)


def decode(call: Call, raw: bytes, kind: type[MessageT]) -> MessageT:
    """The request message (400 if it is not one), its digest now recorded."""
    try:
        found: MessageT = kind.FromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        call.reason = f"not a {kind.DESCRIPTOR.full_name} message: {exc}"
        raise ApiError(400, f"malformed {kind.DESCRIPTOR.name} message") from None
    call.inbound.read_body(call)
    return found


@dataclass(frozen=True)
class Answer:
    """What to send: the serialized response (OK) or a status, details and trailing metadata,
    with the request id for the initial metadata; `status` is the HTTP equivalent (metrics)."""

    request_id: str
    body: bytes | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    trailing: tuple[tuple[str, str], ...] = ()
    status: int = 200


#: A guarded RPC's view: the call and the serialized request, its serialized response.
View = Callable[[Call, bytes], bytes]
#: An unguarded RPC: the services and the serialized request, its serialized response.
Open = Callable[[Services, bytes], bytes]


@dataclass(frozen=True)
class Rpc:
    """One method served: guarded (`action` and `view`) or open (`open`, no token)."""

    service: str
    method: str
    api: Api
    action: Action | None = None
    view: View | None = None
    open: Open | None = None

    @property
    def endpoint(self) -> str:
        return f"grpc.{self.service.rpartition('.')[2]}.{self.method}"

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


def answer(services: Services, rpc: Rpc, raw: bytes, metadata: Metadata, peer: str) -> Answer:
    """Run `rpc` on the serialized request `raw`; blocking (run it off the event loop)."""
    started = time.perf_counter()
    wanted = next((_text(v) for k, v in metadata if k == REQUEST_ID_KEY), None)
    rid = request_id(wanted)
    found = (
        _guarded(services, rpc, raw, metadata, peer, rid)
        if rpc.view
        else _open(services, rpc, raw, rid)
    )
    elapsed = time.perf_counter() - started
    services.metrics.observe_request(rpc.endpoint, "POST", found.status, elapsed)
    return found


def _open(services: Services, rpc: Rpc, raw: bytes, rid: str) -> Answer:
    if rpc.open is None:
        raise RuntimeError(f"{rpc.path} has neither a view nor an open handler")
    try:
        return Answer(rid, rpc.open(services, raw))
    except ApiError as error:
        return Answer(rid, None, code_of(error.status), error.message, status=error.status)
    except Exception:
        log.exception("unhandled error in %s", rpc.endpoint)
        return Answer(rid, None, grpc.StatusCode.INTERNAL, INTERNAL, status=500)


def _guarded(
    services: Services, rpc: Rpc, raw: bytes, metadata: Metadata, peer: str, rid: str
) -> Answer:
    if rpc.action is None or rpc.view is None:
        raise RuntimeError(f"{rpc.path} is guarded without an action")
    inbound = GrpcInbound(rpc.endpoint, rid, peer_address(peer), raw, metadata)
    call = Call(services, rpc.action, rpc.api, inbound)
    token = current_request_id.set(call.request_id)
    try:
        result = call.execute(rpc.view, {"raw": raw})
        status = result.status if isinstance(result, Refusal) else 200
        if not call.record(status):
            return Answer(rid, None, grpc.StatusCode.UNAVAILABLE, UNAVAILABLE, status=503)
    finally:
        current_request_id.reset(token)
    if isinstance(result, Refusal):
        trailing = tuple((name.lower(), value) for name, value in result.headers.items())
        return Answer(rid, None, code_of(result.status), result.message, trailing, result.status)
    return Answer(rid, result)
