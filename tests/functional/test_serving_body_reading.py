"""The body is read only for a caller allowed to proceed, within `SECURE_MAAS_BODY_TIMEOUT`, and
never past `SECURE_MAAS_MAX_BODY_BYTES`, chunked or not.

Over real HTTP through gunicorn (`secure-maas serve --workers 2 --threads 4`, 127.0.0.1), on
SQLite and PostgreSQL, with raw sockets where a client must misbehave:
- a caller refused by its headers (no token, a bad token, an invisible model, a model it may
  only list, a label denied to it, a malformed path, a declared length over the limit) gets
  its answer while its body is still arriving, the connection is closed, and the audit event
  has no body digest;
- an allowed caller whose body does not arrive within the deadline (stalled, or dribbled a
  byte at a time, with a length or chunked) gets 408, audited, the connection closed, nothing
  served: the deadline is for the whole body, however long the client keeps it coming;
- a chunked body over the limit gets 413, audited with the reason, nothing served (not
  truncated at the limit and served);
- bodies in one piece, chunked within the limit (the digest of the whole body), keep-alive
  and pipelined requests are served.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from secure_maas.audit import AuditRecord, body_digest
from secure_maas.serving.gunicorn_app import head_end
from tests.functional.serving_support import (
    BODY_LIMIT,
    Instance,
    by_request,
    models,
    prepared,
    server,
)

BODY_TIMEOUT = 2  # seconds, the servers' SECURE_MAAS_BODY_TIMEOUT here
#: Bound on waiting for an answer that must come (generous: a busy 2-core machine).
ANSWER_WITHIN = 30.0
X = np.random.default_rng(41).normal(size=(3, 4)).astype(np.float32)
GOOD = json.dumps({"instances": X.tolist()}).encode()


@dataclass
class Configured(Instance):
    """The serving tests' instance, its servers started with extra settings."""

    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "body")


@pytest.fixture(scope="module")
def port(instance: Instance) -> Iterator[int]:
    configured = Configured(instance.settings, instance.engine, instance.tokens,
                            {"SECURE_MAAS_BODY_TIMEOUT": f"{BODY_TIMEOUT}s"})  # fmt: skip
    args = ("--workers", "2", "--threads", "4", "--preload", "digits")
    with server(configured, *args) as served:
        yield served.port


def head(
    path: str,
    rid: str,
    *,
    token: str | None = None,
    length: int | None = None,
    chunked: bool = False,
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"X-Request-Id: {rid}"]  # fmt: skip
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Reader:
    """Responses read off one connection, in order (pipelined ones too: one buffer for all);
    the socket's timeout bounds every wait."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.file.close()  # else the socket's descriptor stays open after its close()

    def answer(self) -> Answer:
        status_line = self.file.readline(65537)
        if not status_line:
            raise ConnectionError("closed without an answer")
        headers: dict[str, str] = {}
        while (line := self.file.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.file.read(int(headers.get("content-length", "0")))
        return Answer(int(status_line.split()[1]), headers, body)

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection, sending nothing more."""
        try:
            return self.file.read(1) == b""
        except ConnectionResetError:
            return True


def event(instance: Instance, rid: str) -> AuditRecord:
    [found] = by_request(instance.engine, {rid})[rid]
    return found


REFUSED = [
    ("no-token", "/v1/models/digits:predict", None, 401, "deny"),
    ("bad-token", "/v1/models/digits:predict", "garbage", 401, "deny"),
    ("invisible", "/v1/models/digits:predict", "eve", 404, "deny"),
    ("secret", "/v2/models/secret/infer", "alice", 404, "deny"),
    ("list-only", "/v1/models/listed:predict", "alice", 403, "deny"),
    ("canary", "/v1/models/digits/labels/canary:predict", "alice", 403, "deny"),
    ("malformed-path", "/v1/models/a/b/c:predict", "alice", 400, "error"),
    ("declared-over-limit", "/v1/models/digits:predict", "alice", 413, "error"),
]


@pytest.mark.parametrize(("case", "path", "who", "status", "decision"), REFUSED,
                         ids=[c[0] for c in REFUSED])  # fmt: skip
def test_a_caller_refused_by_its_headers_is_answered_before_its_body_arrives(
    port: int, instance: Instance, case: str, path: str, who: str | None, status: int,
    decision: str,
) -> None:  # fmt: skip
    rid = f"refused-{case}-{port}"
    length = BODY_LIMIT + 1 if status == 413 else BODY_LIMIT - 10
    token = None if who is None else instance.tokens[who]
    with connect(port) as sock, Reader(sock) as reader:
        sock.sendall(head(path, rid, token=token, length=length) + b'{"instances": ')
        got = reader.answer()  # the rest of the body never comes
        assert got.status == status, got.body[:200]
        assert got.headers["connection"] == "close"
        assert set(json.loads(got.body)) == {"error"}
        assert reader.closed_by_server()
    found = event(instance, rid)
    assert (found.http_status, found.decision) == (status, decision)
    assert found.body_sha256 is None


@pytest.mark.parametrize("style", ["stalled", "dribbled", "chunked-dribbled"])
def test_a_body_not_received_within_the_deadline_gets_408_and_nothing_is_served(
    port: int, instance: Instance, style: str
) -> None:
    """The deadline is for the whole body, not for each read: a client sending a byte every
    0.2 s never gets past it."""
    rid = f"late-{style}-{port}"
    body = GOOD + b" " * 4000  # valid JSON, longer than the dribbling lasts
    chunked = style.startswith("chunked")
    sent_head = head("/v1/models/digits:predict", rid, token=instance.tokens["alice"],
                     length=None if chunked else len(body), chunked=chunked)  # fmt: skip
    first = (b"%x\r\n" % len(body)) + body[:20] if chunked else body[:20]
    with connect(port) as sock, Reader(sock) as reader:
        started = time.monotonic()
        sock.sendall(sent_head + first)
        position = 20
        deadline = started + ANSWER_WITHIN
        while time.monotonic() < deadline:  # bounded: ANSWER_WITHIN at most
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                break
            if style != "stalled" and position < len(body):
                try:
                    sock.sendall(body[position : position + 1])
                except OSError:
                    break  # closed after its answer: read it
                position += 1
        got = reader.answer()
        elapsed = time.monotonic() - started
        assert got.status == 408, got.body[:200]
        assert "not received within" in json.loads(got.body)["error"]
        assert got.headers["connection"] == "close"
        assert elapsed >= BODY_TIMEOUT - 0.5  # the deadline, not an earlier refusal
        assert reader.closed_by_server()
    found = event(instance, rid)
    assert (found.http_status, found.decision, found.reason_code) == (408, "error", "body_timeout")
    assert found.reason is not None and f"within {BODY_TIMEOUT} s" in found.reason
    assert found.body_sha256 is None and found.rows is None


def chunked_post(port: int, instance: Instance, rid: str, body: bytes) -> Answer:
    """`body` sent chunked, 8 KiB a chunk, by http.client."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_WITHIN)
    try:
        pieces = (body[i : i + 8192] for i in range(0, len(body), 8192))
        headers = {"Authorization": f"Bearer {instance.tokens['alice']}",
                   "Content-Type": "application/json", "X-Request-Id": rid}  # fmt: skip
        # Refused before all of it was sent, the answer is waiting all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("POST", "/v1/models/digits:predict", body=pieces,
                               headers=headers, encode_chunked=True)  # fmt: skip
        response = connection.getresponse()
        headers_got = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, headers_got, response.read())
    finally:
        connection.close()


def padded(size: int) -> bytes:
    """A valid predict body of exactly `size` bytes (JSON whitespace after the object)."""
    return GOOD + b" " * (size - len(GOOD))


def test_a_chunked_body_over_the_limit_gets_413_and_nothing_is_served(
    port: int, instance: Instance
) -> None:
    """Valid JSON up to the limit, then more (here whitespace, so that the whole body is valid
    JSON too): refused whole, not truncated at the limit and served."""
    rid = f"chunked-over-{port}"
    got = chunked_post(port, instance, rid, padded(BODY_LIMIT) + b" " * 16384)
    assert got.status == 413, got.body[:200]
    assert "request body too large" in json.loads(got.body)["error"]
    assert b"predictions" not in got.body
    found = event(instance, rid)
    assert (found.http_status, found.decision) == (413, "error")
    assert found.reason is not None and f"over {BODY_LIMIT} bytes" in found.reason
    assert found.body_sha256 is None


def test_a_chunked_body_at_the_limit_is_served_and_its_whole_digest_recorded(
    port: int, instance: Instance
) -> None:
    rid = f"chunked-at-limit-{port}"
    body = padded(BODY_LIMIT)
    got = chunked_post(port, instance, rid, body)
    assert got.status == 200, got.body[:200]
    want = models().predict("two", X)["probs"]
    np.testing.assert_allclose(json.loads(got.body)["predictions"], want, rtol=0, atol=1e-6)
    assert event(instance, rid).body_sha256 == body_digest(body)


def test_keep_alive_and_pipelined_requests_are_still_served(port: int, instance: Instance) -> None:
    """Two requests in one write, then a third on the same connection after a pause."""
    alice = instance.tokens["alice"]
    rids = [f"pipelined-{n}-{port}" for n in range(3)]
    requests = [head("/v1/models/digits:predict", rid, token=alice, length=len(GOOD)) + GOOD
                for rid in rids]  # fmt: skip
    with connect(port) as sock, Reader(sock) as reader:
        sock.sendall(requests[0] + requests[1])
        statuses = [reader.answer().status, reader.answer().status]
        time.sleep(0.5)
        sock.sendall(requests[2][:30])
        time.sleep(0.3)  # the next head arrives in two parts
        sock.sendall(requests[2][30:])
        statuses.append(reader.answer().status)
    assert statuses == [200, 200, 200]
    found = by_request(instance.engine, set(rids))
    assert all(found[rid][0].body_sha256 == body_digest(GOOD) for rid in rids)


@pytest.mark.parametrize("instance", ["sqlite"], indirect=True)
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_the_development_server_enforces_the_deadline_too(
    instance: Instance, chunked: bool
) -> None:
    """The same deadline through werkzeug's server (its buffered socket file, its chunked
    reader); its log stays free of tracebacks (`server` checks)."""
    configured = Configured(instance.settings, instance.engine, instance.tokens,
                            {"SECURE_MAAS_BODY_TIMEOUT": f"{BODY_TIMEOUT}s"})  # fmt: skip
    rid = f"development-late-{'chunked' if chunked else 'length'}"
    body = GOOD + b" " * 4000
    sent_head = head("/v1/models/digits:predict", rid, token=instance.tokens["alice"],
                     length=None if chunked else len(body), chunked=chunked)  # fmt: skip
    first = (b"%x\r\n" % len(body)) + body[:20] if chunked else body[:20]
    with server(configured) as served, connect(served.port) as sock, Reader(sock) as reader:
        sock.sendall(sent_head + first)  # and nothing more
        got = reader.answer()
        assert got.status == 408, got.body[:200]
        assert reader.closed_by_server()
        assert served.process.poll() is None
    found = event(instance, rid)
    assert (found.http_status, found.reason_code, found.body_sha256) == (408, "body_timeout", None)


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", False),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", True),  # one empty line first: allowed, not an end
        (b"\r\n\r\n", False),
        (b"GET / HTTP/1.0\n\n", True),  # bare LF: the parser refuses it, without waiting
    ],
)
def test_a_request_head_is_complete_at_its_empty_line(data: bytes, complete: bool) -> None:
    assert head_end(data)[0] is complete
    resumed, found = 0, False
    for end in range(1, len(data) + 1):  # a byte at a time, resuming each search
        found, resumed = head_end(data[:end], resumed)
    assert found is complete
