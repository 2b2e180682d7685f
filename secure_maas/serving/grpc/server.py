"""The gRPC server of one serving process: `GrpcServer.start(services, host, port, threads)`.

It runs grpc's asyncio server on an event loop thread of its own, and each RPC's pipeline work
(token, rules, audit, the model call: all blocking) on a pool of `threads` threads. That
split is what keeps slow senders off the threads: grpc hands a handler nothing until the
whole request message has arrived (decompressed, if it came compressed), and with the asyncio
server the wait costs a coroutine and a buffer, where grpc's thread-pool server would park a
pool thread on it for as long as the sender takes. At most `max_concurrent` RPCs are in
progress at once, receiving or running; more are refused by grpc with RESOURCE_EXHAUSTED
before they send anything, which bounds the memory their messages can take.

Message size: grpc's own receive limit is `max_body_bytes + GRACE_BYTES`. A message within
the grace gets to the pipeline, which refuses what is over `max_body_bytes` exactly as HTTP
does (413, here RESOURCE_EXHAUSTED) and audits it; one past the grace is refused by grpc
core itself (RESOURCE_EXHAUSTED, "received message larger than max") before any of our code
runs, so that refusal is not in the audit log: no principal, no model and no digest could be
recorded for it anyway, as with a body the HTTP server refuses before the app. The limit
applies to the decompressed message. Responses are not limited (a client sets its own).

Under gunicorn every worker starts one (`gunicorn_app`, after the fork: grpc must not cross
one) on the same port with `SO_REUSEPORT`, so the kernel spreads connections over the
workers; the development server runs one next to werkzeug.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from grpc import aio

from secure_maas.serving.grpc import tfserving, triton
from secure_maas.serving.grpc.calls import REQUEST_ID_KEY, Answer, Rpc, answer
from secure_maas.serving.services import Services

log = logging.getLogger(__name__)

#: How far past `max_body_bytes` a message may be for the pipeline to refuse it (audited).
GRACE_BYTES = 1 << 20
#: RPCs in progress per worker thread (receiving or running) before grpc refuses more.
RPCS_PER_THREAD = 8


def rpcs() -> tuple[Rpc, ...]:
    """Every method served."""
    return (*triton.RPCS, *tfserving.RPCS)


@dataclass(frozen=True)
class Endpoint:
    """Where to listen: `host` (an address, as `serve --host`) and `port` (0: any free one)."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _handlers(services: Services, pool: ThreadPoolExecutor) -> list[grpc.GenericRpcHandler]:
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for rpc in rpcs():
        behaviour = partial(_serve, services, pool, rpc)
        handler = grpc.unary_unary_rpc_method_handler(behaviour)  # bytes in, bytes out
        by_service.setdefault(rpc.service, {})[rpc.method] = handler
    return [
        grpc.method_handlers_generic_handler(name, methods) for name, methods in by_service.items()
    ]


async def _serve(
    services: Services, pool: ThreadPoolExecutor, rpc: Rpc, raw: bytes, context: Any
) -> bytes:
    metadata = tuple(context.invocation_metadata() or ())
    loop = asyncio.get_running_loop()
    found: Answer = await loop.run_in_executor(
        pool, answer, services, rpc, raw, metadata, context.peer()
    )
    await context.send_initial_metadata(((REQUEST_ID_KEY, found.request_id),))
    if found.body is not None:
        return found.body
    await context.abort(found.code, found.details, trailing_metadata=found.trailing)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class GrpcServer:
    """A running gRPC server and the event loop thread it runs on."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        server: aio.Server,
        pool: ThreadPoolExecutor,
        port: int,
    ) -> None:
        self._loop, self._thread, self._server, self._pool = loop, thread, server, pool
        self.port = port

    @classmethod
    def start(
        cls, services: Services, endpoint: Endpoint, *, threads: int, reuse_port: bool = True
    ) -> GrpcServer:
        """Listen on `endpoint` and serve until `stop`; raises `OSError` if it cannot bind."""
        limit = services.settings.max_body_bytes + GRACE_BYTES
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="grpc-loop", daemon=True)
        thread.start()

        async def begin() -> tuple[aio.Server, int]:
            server = aio.server(
                handlers=_handlers(services, pool),
                options=options,
                maximum_concurrent_rpcs=threads * RPCS_PER_THREAD,
            )
            try:
                port = server.add_insecure_port(endpoint.address)
            except RuntimeError:  # grpc's word for a failed bind
                port = 0
            if port == 0:
                raise OSError(f"gRPC could not listen on {endpoint.address} (in use?)")
            await server.start()
            return server, port

        try:
            server, port = asyncio.run_coroutine_threadsafe(begin(), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            pool.shutdown(wait=False)
            raise
        log.info("gRPC on %s", Endpoint(endpoint.host, port).address)
        return cls(loop, thread, server, pool, port)

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking RPCs, let those in progress finish for `grace` seconds, then close."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result(grace + 5)
        except Exception as exc:  # stopping anyway: the process is going
            log.warning("gRPC server did not stop cleanly: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)


def method_paths() -> Iterable[str]:
    """`/service/method` of every method served (the docs test holds the README to them)."""
    return [rpc.path for rpc in rpcs()]
