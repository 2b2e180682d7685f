"""A token sent in a query string never lands in a server log.

The development server's request log, gunicorn's error log (which quotes a request line it
refuses) and its access log (`serve --access-log`, `%(r)s`) name request paths without their
query strings. Over real HTTP, against both servers (on SQLite: the logs do not depend on the
database): requests carrying a secret in their query string, a valid one, one refused by the
app and one refused by the server's parser; the server's whole output (its log) must name the
paths and never the secret.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.functional.serving_support import Instance, prepared, server

SECRET = "eyJzZWNyZXQiOiJ0b2tlbiJ9.c2VjcmV0.c2lnbmF0dXJl"


@pytest.fixture(scope="module", params=["sqlite"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "logs")


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        with error:
            return error.code


def raw(port: int, request_line: bytes) -> bytes:
    """What the server answers to a request with `request_line` (a malformed one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request_line + b"\r\nHost: 127.0.0.1\r\n\r\n")
        return sock.recv(4096)


@pytest.mark.parametrize(
    ("kind", "args"),
    [("development", ()), ("gunicorn", ("--workers", "1", "--threads", "2", "--access-log"))],
)
def test_query_strings_stay_out_of_the_server_logs(
    instance: Instance, kind: str, args: tuple[str, ...]
) -> None:
    with server(instance, *args) as served:
        base = served.url
        assert status_of(f"{base}/healthz?access_token={SECRET}") == 200
        assert status_of(f"{base}/v1/models?access_token={SECRET}&x=1") == 401
        assert status_of(f"{base}/nowhere?token={SECRET}") == 404
        refused = raw(served.port, f"GET /v1/models?access_token={SECRET} HTTP/1.1 x".encode())
        assert b"400" in refused[:1000]  # http.server answers a bad line without a status line
        raw(served.port, f"GET /v1/models?access_token={SECRET}".encode())  # no version
        log_path = instance.settings.keys_dir.parent / f"server-{served.port}.log"
    text = log_path.read_text(errors="replace")
    assert SECRET not in text, text[-3000:]
    assert "access_token" not in text, text[-3000:]
    # The requests are logged, by path.
    assert '"GET /healthz HTTP/1.1" 200' in text, text[-3000:]
    assert '"GET /v1/models HTTP/1.1" 401' in text, text[-3000:]
