"""Running the app under gunicorn (the production way), from `secure-maas serve --workers N`.

The master (`ServingArbiter`) starts the instance's model process (`secure_maas.dataplane`)
before any worker, waits until it answers (its `--preload` models loaded), restarts it when it
dies, and stops it after the workers on shutdown. The model process alone imports TensorFlow,
holds each model once and batches every worker's requests together; it also hosts the audit
writer all workers share. Each worker builds its own app after the fork (`preload_app` is off):
database pool, token verifier, policy and the registry view (no weights); its gthread threads
(M each) decide, then send tensors to the model process.
SIGTERM stops accepting connections and lets in-flight requests finish for up to
`graceful_timeout` seconds; then each worker closes its services, and then the model process
writes its queued audit events and unloads its models.

Slow clients. Stock gthread (gunicorn 27) hands a new connection to a thread, which waits up
to 5 s for a first byte and then reads the request head with blocking reads and no deadline,
so a few dozen connections that send half a head each hold every thread (slowloris); it also
lingers on a closing connection for up to 2 s in its event loop, and drains an unread body
for up to 5 s in a thread. `GuardedThreadWorker` keeps gthread (plain threads: the model
process's pipes, the audit writer and TensorFlow stay as they are, where gevent would
monkey-patch every one of them) and changes those three things:

- a connection waits in the event loop, costing a socket and a buffer, until its whole request
  head (request line and headers) has arrived; only then does it get a thread. A head not
  complete within `HEAD_TIMEOUT` seconds, on a new or a kept-alive connection, is dropped;
- the body is read by the app, only for a caller allowed to proceed and within
  `SECURE_MAAS_BODY_TIMEOUT` (see `pipeline`); a body the app did not read is drained for
  `DRAIN_TIMEOUT` at most, then the connection is closed, and the app can ask for the
  connection to be closed (`CLOSE_CONNECTION`), which stock gunicorn cannot be told;
- closing connections linger in the event loop (RFC 9112 section 9.6), never blocking it.

A caller with a valid token can still hold a thread while it sends its body slowly, for
`SECURE_MAAS_BODY_TIMEOUT` at most; a reverse proxy that buffers request bodies (nginx's
default `proxy_request_buffering on`) removes that too. TLS is the proxy's job: with gunicorn's
own TLS (or HTTP/2 prior knowledge) the worker falls back to stock gthread behaviour.

gRPC (`serve --grpc-port N`): each worker starts its own gRPC server after the fork (grpc's
threads and sockets must not cross a fork), in gunicorn's `post_worker_init` hook, once its app
and services are built, on the same port with `SO_REUSEPORT` so the kernel spreads
connections over the workers; it serves through the worker's own services (`serving.grpc`),
and stops in `worker_exit` before they are closed. The master and the model process never
import grpc. A worker that cannot bind the port exits, as one that cannot build its app does.

The access log (`--access-log`) and the error log never hold a query string: tokens sent as
`?access_token=` must not land in a log (`SafeLogger`).

Metrics: `secure-maas serve` names the instance's private folder in `PROMETHEUS_MULTIPROC_DIR`
before this module is imported; every worker writes there, and when one exits the master tells
prometheus_client (`mark_process_dead`, in gunicorn's `child_exit` hook) so that its live gauges
leave the sums while its counters stay in them (`serving.metrics`). The model processes write
there too (`dataplane.metrics`), and one that exits or is restarted is marked dead the same way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from flask import Flask
from gunicorn import glogging  # type: ignore[import-untyped]
from gunicorn import http as gunicorn_http
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from gunicorn.http.unreader import Unreader  # type: ignore[import-untyped]
from gunicorn.workers.gthread import TConn, ThreadWorker  # type: ignore[import-untyped]
from prometheus_client.multiprocess import mark_process_dead

from secure_maas.config import Settings
from secure_maas.dataplane.process import ModelProcesses
from secure_maas.serving.app import redact_queries
from secure_maas.serving.bodies import CLOSE_CONNECTION
from secure_maas.serving.metrics import shared_folder

#: Seconds a connection has to send its whole request head once it is accepted (or, kept
#: alive, once it sends the first byte of its next request).
HEAD_TIMEOUT = 10.0
#: Seconds spent draining a body the app did not read before keeping the connection alive;
#: what is not there by then closes the connection instead.
DRAIN_TIMEOUT = 0.1
#: How long, and for how many bytes, a closing connection is drained (RFC 9112 section 9.6:
#: closing with unread data would reset the connection and lose the answer).
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 64 * 1024

DEFAULTS: dict[str, Any] = {
    "worker_class": "secure_maas.serving.gunicorn_app.GuardedThreadWorker",
    "logger_class": "secure_maas.serving.gunicorn_app.SafeLogger",
    "preload_app": False,
    # Loading a model (decrypt, decode, TensorFlow start-up) counts against a worker's
    # heartbeat when it happens at boot (--preload): allow for it.
    "timeout": 120,
    "graceful_timeout": 30,
    # An idle kept-alive connection costs a socket in the event loop, not a thread.
    "keepalive": 5,
    # Connections (waiting for their head, kept alive or being served) per worker.
    "worker_connections": 1000,
    # Headers are small here; refuse oversized request lines and headers early. These also
    # bound what a connection may buffer while its head arrives (about 650 KiB).
    "limit_request_line": 8190,
    "limit_request_fields": 40,
    "limit_request_field_size": 16384,
    "accesslog": None,
    "errorlog": "-",
}
#: Set when this gunicorn knows them: its control socket (gunicorn 25+) would be a file outside
#: the instance's folders, shared by every instance of the same user.
IF_KNOWN: dict[str, Any] = {"control_socket_disable": True}


class ServingApplication(BaseApplication):  # type: ignore[misc]
    """A gunicorn application that serves `create_app(settings)`, one app per worker."""

    def __init__(
        self,
        settings: Settings,
        options: Mapping[str, Any],
        *,
        preload: Sequence[str] = (),
        app_factory: Callable[..., Flask] | None = None,
        grpc_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.grpc_port = grpc_port
        self.options = {**DEFAULTS, **options}
        self.preload = tuple(preload)
        self.app_factory = app_factory
        self.model_processes = ModelProcesses(settings, self.preload, on_exit=_process_dead)
        super().__init__()

    def run(self) -> None:
        """gunicorn's `run`, with the master that also keeps the model process."""
        try:
            ServingArbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key not in self.cfg.settings:
                raise ValueError(f"unknown gunicorn setting {key!r}")
            self.cfg.set(key, value)
        for key, value in IF_KNOWN.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)
        self.cfg.set("worker_exit", _worker_exit)
        if self.grpc_port is not None:
            self.cfg.set("post_worker_init", partial(_start_grpc, self))
        self.cfg.set("child_exit", _child_exit)

    def load(self) -> Flask:
        """Called in each worker after the fork."""
        factory = self.app_factory
        if factory is None:
            from secure_maas.serving.app import create_app

            factory = create_app
        return factory(self.settings, data_plane=self.model_processes.paths)


class ServingArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, which also starts, watches and stops the model processes."""

    #: How long the first start may take (TensorFlow's import, `--preload` models).
    START_TIMEOUT_S = 600.0

    def start(self) -> None:
        super().start()
        processes: ModelProcesses = self.app.model_processes
        keep_out = [listener.fileno() for listener in self.LISTENERS]
        keep_out += [fd for fd in getattr(self, "PIPE", []) if isinstance(fd, int)]
        processes.start(close_in_child=keep_out)
        if not processes.wait_ready(self.START_TIMEOUT_S):
            self.log.error("a model process did not start; workers will answer 503 until it does")

    def manage_workers(self) -> None:
        self.app.model_processes.check()
        super().manage_workers()

    def stop(self, graceful: bool = True) -> None:
        super().stop(graceful)
        self.app.model_processes.stop(timeout=float(self.cfg.graceful_timeout))


def _start_grpc(application: ServingApplication, worker: Any) -> None:
    """In a worker, once its app is built: its gRPC server, on the instance's gRPC port."""
    from secure_maas.serving.app import services_of
    from secure_maas.serving.grpc.server import Endpoint, GrpcServer

    host = str(application.options["bind"]).rpartition(":")[0].strip("[]")
    endpoint = Endpoint(host, int(application.grpc_port or 0))
    services = services_of(worker.flask_app)
    try:
        worker.grpc_server = GrpcServer.start(services, endpoint, threads=worker.cfg.threads)
    except OSError as exc:  # the worker fails to boot, and gunicorn stops: say why, once
        worker.log.error("%s", exc)
        raise


def _worker_exit(_server: Any, worker: Any) -> None:
    from secure_maas.serving.app import close_app

    grpc_server = getattr(worker, "grpc_server", None)
    if grpc_server is not None:
        grpc_server.stop(grace=float(worker.cfg.graceful_timeout))
    app = getattr(worker, "flask_app", None) or getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        close_app(app)


def _child_exit(_server: Any, worker: Any) -> None:
    """In the master, once a worker has exited: drop its live gauges from the metrics."""
    _process_dead(worker.pid)


def _process_dead(pid: int) -> None:
    """In the master, once a worker or model process has exited: drop its live gauges."""
    folder = shared_folder()
    if folder is not None:
        mark_process_dead(pid, path=str(folder))  # type: ignore[no-untyped-call]


# -- the worker ---------------------------------------------------------------------------------

#: What `GuardedThreadWorker` relies on in gunicorn's gthread worker (gunicorn 27): checked at
#: start, so that another gunicorn refuses to start rather than serve without the guard.
_GTHREAD_API = ("accept", "enqueue_req", "finish_request", "murder_pending", "_keepalive_after")


def head_end(data: bytes | bytearray, resume: int = 0) -> tuple[bool, int]:
    """Whether `data` holds a whole HTTP/1 request head (an empty line ends it), and where a
    later search over more data may resume, so a head sent a byte at a time is scanned once.
    The one empty line RFC 9112 lets come before the request line does not end it."""
    start = 2 if data.startswith(b"\r\n") else 1 if data.startswith(b"\n") else 0
    since = max(start, resume)
    found = data.find(b"\n\r\n", since) >= 0 or data.find(b"\n\n", since) >= 0
    return found, max(start, len(data) - 2)


class GuardedConn(TConn):  # type: ignore[misc]
    """gthread's connection, whose graceful close lingers in the worker's event loop."""

    def __init__(self, worker: GuardedThreadWorker, *args: Any) -> None:
        super().__init__(*args)
        self.worker = worker
        self.head = bytearray()
        self.scanned = 0
        self.head_ready = False
        self.drained = 0

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self)
        else:
            super().close()


class GuardedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread that hands a connection to a thread only once its request head is complete,
    drains unread bodies briefly, and closes connections without blocking its event loop."""

    wsgi: Any  # the app gunicorn calls (set by `load_wsgi`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heading: deque[GuardedConn] = deque()
        self.lingering: deque[GuardedConn] = deque()
        self.flask_app: Flask | None = None
        cfg = self.cfg
        self.max_head = (
            (cfg.limit_request_line or 8190)
            + (cfg.limit_request_fields or 100) * ((cfg.limit_request_field_size or 8190) + 2)
            + 4
        )
        # gunicorn's own TLS, or HTTP/2 prior-knowledge sniffing, must see the connection first.
        sniffing = getattr(cfg, "http2_cleartext", "off") in ("prior-knowledge", "both")
        self.guarded = not cfg.is_ssl and not sniffing

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        missing = [name for name in _GTHREAD_API if not hasattr(ThreadWorker, name)]
        if not hasattr(Unreader, "take_buffered"):
            missing.append("Unreader.take_buffered")
        if missing:
            raise RuntimeError(
                "this gunicorn's gthread worker lacks "
                + ", ".join(missing)
                + ": secure-maas's slow-client guard needs gunicorn 27"
            )
        super().check_config(cfg, log)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        if isinstance(self.wsgi, Flask):
            self.flask_app = self.wsgi
            self.wsgi = closing_when_asked(self.wsgi)

    # -- a connection gets a thread once its head is in -----------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = GuardedConn(self, self.cfg, client, address, listener.getsockname())
        self.enqueue_req(conn)

    def enqueue_req(self, conn: GuardedConn) -> None:
        """Give `conn` a thread if its request head is complete; else wait for it here."""
        if not self.guarded or conn.head_ready:
            conn.head_ready = False
            super().enqueue_req(conn)
            return
        if conn.parser is not None:  # kept alive, or bytes read ahead by the last request
            conn.head += conn.parser.unreader.take_buffered()
        conn.timeout = time.monotonic() + HEAD_TIMEOUT
        if self._head_in(conn):
            self._dispatch(conn)
            return
        conn.sock.setblocking(False)
        self.heading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._head_bytes, conn))

    def _head_bytes(self, conn: GuardedConn, _sock: socket.socket) -> None:
        data = _receive(conn.sock)
        if data is None:
            return
        if not data:
            self._forget_heading(conn)
            self._drop(conn)
            return
        conn.head += data
        if self._head_in(conn):
            self._forget_heading(conn)
            self._dispatch(conn)

    def _dispatch(self, conn: GuardedConn) -> None:
        """Hand `conn`, its head in, to a thread (an oversized head too: the parser refuses it
        from what is buffered, without reading more)."""
        if conn.parser is None:
            conn.parser = gunicorn_http.get_parser(self.cfg, conn.sock, conn.client)
            conn.initialized = True
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head, conn.scanned = bytearray(), 0
        conn.data_ready = True
        conn.head_ready = True
        self.enqueue_req(conn)

    def _head_in(self, conn: GuardedConn) -> bool:
        """Whether `conn`'s head is complete or over the size any head may have."""
        complete, conn.scanned = head_end(conn.head, conn.scanned)
        return complete or len(conn.head) > self.max_head

    def _forget_heading(self, conn: GuardedConn) -> None:
        self.heading.remove(conn)
        self._unregister(conn)

    def _drop(self, conn: GuardedConn) -> None:
        self.nr_conns -= 1
        conn.close()

    # -- bodies the app did not read; closing without blocking ----------------------------

    def _keepalive_after(self, conn: GuardedConn, keepalive: bool) -> bool:
        """Keep the connection only if the rest of an unread body is already there."""
        if not keepalive:
            return False
        return bool(conn.parser.finish_body(deadline=time.monotonic() + DRAIN_TIMEOUT))

    def linger(self, conn: GuardedConn) -> None:
        """Close `conn` after the peer has read the answer: send FIN now, discard what still
        arrives, close on the peer's FIN or after `LINGER_TIMEOUT` (gunicorn waits for this
        in its event loop, where one silent peer would stall every connection)."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            conn.close()
            return
        conn.timeout = time.monotonic() + LINGER_TIMEOUT
        conn.drained = 0
        self.lingering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._linger_bytes, conn))

    def _linger_bytes(self, conn: GuardedConn, _sock: socket.socket) -> None:
        data = _receive(conn.sock)
        if data is None:
            return
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_BYTES:
            self.lingering.remove(conn)
            self._unregister(conn)
            conn.close()

    def murder_pending(self) -> None:
        """gunicorn's check of deferred connections, then: heads and lingering closes past
        their time (all of them once the worker is stopping) are closed."""
        super().murder_pending()
        now = time.monotonic()
        while self.heading and (self.heading[0].timeout <= now or not self.alive):
            conn = self.heading.popleft()
            self._unregister(conn)
            self._drop(conn)
        while self.lingering and (self.lingering[0].timeout <= now or not self.alive):
            conn = self.lingering.popleft()
            self._unregister(conn)
            conn.close()

    def _unregister(self, conn: GuardedConn) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)


def closing_when_asked(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """`app`, whose request may ask gunicorn to close the connection after the answer (set
    `environ[CLOSE_CONNECTION]`): a `Connection` header from a WSGI app is hop-by-hop and
    gunicorn drops it, so the request's own response object is told instead."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            response: Any = getattr(start_response, "__self__", None)  # gunicorn's Response
            if environ.get(CLOSE_CONNECTION) and hasattr(response, "force_close"):
                response.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return serve


# -- logs without query strings -----------------------------------------------------------------

#: Request headers that an access log format could name and must not print.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
#: environ entries that hold the query string or credentials.
_SECRET_ENVIRON = frozenset(
    {"query_string", "raw_uri", "request_uri", "http_authorization", "http_cookie"}
)


class _RedactQueries(logging.Filter):
    """Removes query strings from every record of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_queries(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class SafeLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, whose access log shows paths without their query string (`%(r)s`
    included), never the query (`%(q)s`) or credentials, and whose error log (invalid request
    lines, failed requests) has query strings removed."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, _RedactQueries) for f in log.filters):
                log.addFilter(_RedactQueries())

    def atoms(self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: Any) -> Any:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        method, protocol = environ.get("REQUEST_METHOD", "-"), environ.get("SERVER_PROTOCOL", "")
        path = str(environ.get("RAW_URI") or environ.get("PATH_INFO") or "-").split("?", 1)[0]
        atoms["r"] = f"{method} {path} {protocol}".strip()
        atoms["q"] = "-"
        atoms["f"] = redact_queries(str(atoms.get("f", "-")))
        for key in list(atoms):
            name = key[1:-2] if key.startswith("{") and key[-2:] in ("}i", "}e") else None
            if name is not None and (name in _SECRET_HEADERS or name in _SECRET_ENVIRON):
                atoms[key] = "-"
        return atoms


def _receive(sock: socket.socket) -> bytes | None:
    """What a readable non-blocking socket holds: None when nothing after all (a spurious
    wake-up), b"" at the peer's end or on an error (both mean: close it)."""
    try:
        return sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
