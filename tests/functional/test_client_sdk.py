"""The client SDK against a scripted HTTP server: statuses become typed errors, and retries
happen only where repeating is safe, a bounded number of times."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from secure_maas import client as sdk


class Script:
    """Answers to give, in order (the last one repeats), and the requests seen."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], object]] = [(200, {}, {})]
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            script.seen.append((self.command, self.path, dict(self.headers), body))
            status, headers, payload = (
                script.answers.pop(0) if len(script.answers) > 1 else script.answers[0]
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Request-Id", f"r{len(script.seen)}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, sdk.BadRequest),
        (401, sdk.Unauthenticated),
        (403, sdk.Forbidden),
        (404, sdk.NotFound),
        (413, sdk.TooLarge),
        (415, sdk.UnsupportedMediaType),
        (429, sdk.QuotaExceeded),
        (500, sdk.ServerError),
    ],
)
def test_statuses_become_typed_errors(
    scripted: tuple[str, Script], status: int, kind: type[sdk.ClientError]
) -> None:
    url, script = scripted
    script.answers = [(status, {"Retry-After": "7"}, {"error": "told you so"})]
    with pytest.raises(kind) as caught:
        sdk.Client(url, "tok", retries=3, backoff=0).predict("m", [[1.0]])
    assert caught.value.status == status and caught.value.message == "told you so"
    assert caught.value.request_id == "r1" and len(script.seen) == 1  # never retried
    if kind is sdk.QuotaExceeded:
        assert caught.value.retry_after == 7  # type: ignore[attr-defined]


def test_requests_carry_the_token_and_encode_names(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [(200, {}, {"predictions": [[0.5]]})]
    client = sdk.Client(url, "tok-123")
    assert client.predict("a b/c", [[1.0]], label="stable") == [[0.5]]
    method, path, headers, body = script.seen[0]
    assert (method, path) == ("POST", "/v1/models/a%20b%2Fc/labels/stable:predict")
    assert headers["Authorization"] == "Bearer tok-123"
    assert json.loads(body) == {"instances": [[1.0]]}
    assert client.last_request_id == "r1"
    assert "tok-123" not in repr(client)
    with pytest.raises(ValueError):
        client.predict("m", [[1.0]], version=1, label="stable")


def test_503_is_retried_a_bounded_number_of_times(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    unavailable = (503, {}, {"error": "service unavailable"})
    script.answers = [unavailable, unavailable, (200, {}, {"predictions": [1]})]
    assert sdk.Client(url, "t", retries=2, backoff=0).predict("m", [[1.0]]) == [1]
    assert len(script.seen) == 3
    script.seen.clear()
    script.answers = [unavailable]
    with pytest.raises(sdk.Unavailable):
        sdk.Client(url, "t", retries=2, backoff=0).models()
    assert len(script.seen) == 3


def test_a_connection_failure_is_retried_for_get_only(scripted: tuple[str, Script]) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = sdk.Client(dead, "t", retries=1, backoff=0, timeout=2)
    with pytest.raises(sdk.ConnectionFailed):
        client.models()
    with pytest.raises(sdk.ConnectionFailed):
        client.predict("m", [[1.0]])
    assert client.ready() is False


def test_audit_follows_pages(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [
        (200, {}, {"events": [{"seq": 1}, {"seq": 2}], "next_after": 2}),
        (200, {}, {"events": [{"seq": 3}], "next_after": None}),
    ]
    events = sdk.Client(url, "t").audit(actor="alice", limit=2)
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert script.seen[0][1] == "/admin/audit?actor=alice&limit=2"
    assert script.seen[1][1] == "/admin/audit?actor=alice&limit=2&after=2"
