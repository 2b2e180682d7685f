"""What the system scenarios share: instances on PostgreSQL, gunicorn servers, the workers of a
server, a bounded load generator, and a TCP proxy that can cut the database away.

Everything listens on 127.0.0.1 only; every loop here is bounded in count and in time.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from secure_maas.audit import KeyringAuditKeys, verify_database
from secure_maas.keys import Keyring
from tests.conftest import PG_AVAILABLE, REQUIRE_PG, _pg_schema_url
from tests.functional.serving_support import (
    MODEL_PROCESS,
    Instance,
    child_processes,
    comm,
    prepare,
)

PG_HOST, PG_PORT = "127.0.0.1", 5432
GUNICORN = ("--workers", "2", "--threads", "4")
ROW = [0.1, -0.2, 0.3, 0.4]


def need_postgres() -> None:
    """Fail (in CI) or skip (elsewhere) when PostgreSQL does not answer."""
    if not PG_AVAILABLE:
        if REQUIRE_PG:
            pytest.fail("PostgreSQL not reachable (SMAAS_TEST_REQUIRE_POSTGRES=1)")
        pytest.skip("PostgreSQL not reachable")


@contextmanager
def postgres_instance(tmp: Path, admin: Engine) -> Iterator[Instance]:
    """The serving tests' instance (models, principals, rules, tokens) in a fresh schema."""
    need_postgres()
    url, schema = _pg_schema_url(admin)
    instance = prepare(tmp, url)
    try:
        yield instance
    finally:
        instance.engine.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def via(instance: Instance, host: str, port: int) -> Instance:
    """The same instance, with its servers reaching the database at host:port (a proxy)."""
    url = make_url(instance.settings.database_url).set(host=host, port=port)
    settings = dataclasses.replace(
        instance.settings, database_url=url.render_as_string(hide_password=False)
    )
    return Instance(settings, instance.engine, dict(instance.tokens))


def audit_intact(instance: Instance) -> int:
    """Verify the whole audit chain from the database (not through any proxy); its length."""
    keyring = Keyring.open(instance.settings.keys_dir)
    report = verify_database(instance.engine, KeyringAuditKeys(keyring))
    if not report.intact:
        raise AssertionError(f"audit chain broken: {report.problem}")
    return report.checked


# -- processes ---------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The live worker processes of the gunicorn master `pid` (its model process aside)."""
    return [child for child in child_processes(pid) if comm(child) != MODEL_PROCESS]


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# -- HTTP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One class of request in a load: what it sends and the statuses it may be answered."""

    name: str
    method: str
    path: str
    expect: frozenset[int]
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


def predict(instance: Instance, who: str, model: str = "digits", rows: int = 1) -> Kind:
    body = json.dumps({"instances": [ROW] * rows}).encode()
    headers = (("Authorization", f"Bearer {instance.tokens[who]}"),)
    headers += (("Content-Type", "application/json"),)
    return Kind(f"{who}:{model}", "POST", f"/v1/models/{model}:predict", frozenset({200}),
                body, headers)  # fmt: skip


@dataclass(frozen=True)
class Answer:
    kind: str
    status: int
    request_id: str
    at: float  # monotonic time the answer arrived


class Connection:
    """One keep-alive HTTP/1.1 connection to a server, reopened after any failure."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.timeout = host, int(port), timeout
        self._conn: http.client.HTTPConnection | None = None

    def send(self, kind: Kind) -> Answer:
        """The answer to `kind`; status 0 when the connection failed."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                headers = dict(kind.headers)
                self._conn.request(kind.method, kind.path, body=kind.body, headers=headers)
                response = self._conn.getresponse()
                response.read()
                request_id = response.headers.get("X-Request-Id", "")
                if response.headers.get("Connection", "").lower() == "close":
                    self.close()
                return Answer(kind.name, response.status, request_id, time.monotonic())
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    return Answer(kind.name, 0, "", time.monotonic())
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def send(url: str, kind: Kind) -> Answer:
    connection = Connection(url)
    try:
        return connection.send(kind)
    finally:
        connection.close()


@dataclass
class Load:
    """`concurrency` threads sending `kinds` round-robin to `urls` until `stop()`, the time
    limit or `max_requests` (whichever first)."""

    urls: Sequence[str]
    kinds: Sequence[Kind]
    concurrency: int = 8
    seconds: float = 30.0
    max_requests: int = 200_000
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True)
            for n in range(self.concurrency)
        ]

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
            if thread.is_alive():
                raise AssertionError("a load thread did not stop within 60 s")

    def _run(self, n: int) -> None:
        connections = [Connection(url) for url in self.urls]
        deadline = time.monotonic() + self.seconds
        i = n
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self._sent >= self.max_requests:
                        return
                    self._sent += 1
                kind = self.kinds[i % len(self.kinds)]
                answer = connections[i % len(connections)].send(kind)
                with self._lock:
                    self.answers.append(answer)
                i += 1
        finally:
            for connection in connections:
                connection.close()

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def statuses(self) -> Counter[tuple[str, int]]:
        return Counter((a.kind, a.status) for a in self.snapshot())


def wait_until(check: Callable[[], bool], limit: float, step: float = 0.02) -> float:
    """Seconds until `check()` held (polled every `step`); AssertionError after `limit`."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise AssertionError(f"condition not met within {limit} s")
        time.sleep(step)


# -- a TCP proxy the tests can cut -------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` drops every connection and refuses new
    ones (the database is unreachable), `restore()` accepts again on the same port."""

    def __init__(self, target: tuple[str, int] = (PG_HOST, PG_PORT)) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        self.restore()

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            _shut(listener)
        for sock in sockets:
            _shut(sock)

    def close(self) -> None:
        self._closed = True
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _shut(client)
                    _shut(upstream)
                    return
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # cut, or the other side closed
        finally:
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)
            _shut(source)
            _shut(sink)


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def soak_seconds(default: float) -> float:
    """The soak's duration: $SMAAS_SOAK_SECONDS, else `default`."""
    return float(os.environ.get("SMAAS_SOAK_SECONDS", default))
