"""Request bodies read under a deadline, and what the server is told about a request's body.

The pipeline reads a body only for a caller allowed to send one (`pipeline`); this module bounds
how long that may take. At a body's deadline `BodyDeadlines` shuts the read side of the
request's socket, so a read blocked in whatever stream the server gives the app returns at once
with what had arrived. The WSGI environ keys tell the server what happened: the body was read
in full (`BODY_READ`), or the connection must be closed after this answer (`CLOSE_CONNECTION`,
honoured by our gunicorn worker; the development server closes every connection anyway).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from typing import IO

from flask import current_app

BODY_READ = "secure_maas.body_read"
CLOSE_CONNECTION = "secure_maas.close_connection"
#: Where the app keeps its `BodyDeadlines`.
DEADLINES = "secure_maas.body_deadlines"
#: Bytes asked of the server's body stream at a time.
READ_STEP = 64 * 1024


def read_up_to(stream: IO[bytes], wanted: int) -> tuple[bytes, Exception | None]:
    """Up to `wanted` bytes of `stream` (fewer where it ends), and the exception that stopped
    the reading early, if one did."""
    pieces: list[bytes] = []
    got = 0
    try:
        while got < wanted:
            piece = stream.read(min(READ_STEP, wanted - got))
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
    except Exception as exc:  # each server raises its own for a broken or cut body
        return b"".join(pieces), exc
    return b"".join(pieces), None


def watch_body(environ: dict[str, object], seconds: float) -> Watch | None:
    """A deadline on the request's socket, where the server tells which it is (gunicorn and
    the development server do; without one, the proxy's body timeout is the only bound)."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    deadlines = current_app.extensions.get(DEADLINES)
    if not isinstance(sock, socket.socket) or not isinstance(deadlines, BodyDeadlines):
        return None
    return deadlines.watch(sock, seconds)


class Watch:
    """One request's deadline; `cancel()` says whether it had already passed."""

    def __init__(self, sock: socket.socket, owner: BodyDeadlines) -> None:
        self.sock = sock
        self.owner = owner
        self.active = True
        self.expired = False

    def cancel(self) -> bool:
        """Stop watching; whether the deadline passed first (the socket then reads no more)."""
        return self.owner.cancel(self)


class BodyDeadlines:
    """Cuts off request bodies that are late: at a body's deadline the read side of its socket
    is shut down, so a read blocked in whatever stream the server gives the app returns at
    once, with what had arrived. One thread per process, started on first use.

    Socket timeouts cannot do this: a server's body stream (gunicorn's, or the development
    server's buffered file) makes as many socket reads as it takes to fill one read call, each
    with the timeout afresh, so a client sending a byte just inside it would hold a thread for
    as long as it liked; and a timed-out buffered file refuses every later read.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, sock: socket.socket, seconds: float) -> Watch:
        """Shut `sock`'s read side in `seconds` unless the returned watch is cancelled first."""
        watch = Watch(sock, self)
        with self._condition:
            if self._closed:  # the app is closing: the server's own limits still hold
                watch.active = False
                return watch
            entry = (time.monotonic() + seconds, next(self._order), watch)
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="secure-maas-body-deadlines", daemon=True
                )
                self._thread.start()
            if self._heap[0][2] is watch:  # the thread sleeps until a later deadline: wake it
                self._condition.notify()
        return watch

    def cancel(self, watch: Watch) -> bool:
        with self._condition:
            watch.active = False
            return watch.expired

    def close(self) -> None:
        """Stop the thread (watches still open are left alone)."""
        with self._condition:
            self._closed = True
            self._condition.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        with self._condition:
            while not self._closed:
                now = time.monotonic()
                while self._heap and (not self._heap[0][2].active or self._heap[0][0] <= now):
                    _, _, watch = heapq.heappop(self._heap)
                    if watch.active:
                        watch.active, watch.expired = False, True
                        with contextlib.suppress(OSError):  # closed by the server or the peer
                            watch.sock.shutdown(socket.SHUT_RD)
                wait = self._heap[0][0] - now if self._heap else None
                self._condition.wait(wait)
