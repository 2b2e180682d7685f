"""Regression (issue 14, points 4, 5 and 8), over real HTTP through gunicorn (2 workers x 4
threads), on SQLite and PostgreSQL:

- `Inference-Header-Content-Length: ²` was a 500: `str.isdigit()` accepts the superscript, and
  `int()` does not (so did a header of 5000 digits: `int()` refuses more than 4300);
- `/admin/audit?since=999999999d`, `since=0001-01-01T00:00:00+14:00` and
  `until=9999-12-31T23:59:59-14:00` were 500s (the moment is outside what a datetime holds),
  and `since=%D9%A1h` (an Arabic-Indic one, U+0661) was read as one hour: now each is a clear 400;
- `/admin/audit` validated its query before deciding access, so a caller without `audit:read`
  got 400 or 500, recorded as `error`, and `audit list --decision deny` missed the attempt:
  now it gets 403, recorded as `deny`, whatever the query says;
- under /v1/models and /v2/models, the merged-slash redirect (308), the 405 of a method no route
  takes and the automatic OPTIONS answer came from Flask's routing without an audit event: now
  each goes through the pipeline (a token is needed, and each is audited once). A 431 (a header
  over gunicorn's `limit_request_field_size`) is gunicorn's, answered before the app runs.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
from collections.abc import Iterator

import pytest

from secure_maas.audit import AuditRecord
from tests.functional.serving_support import Instance, by_request, prepared, server
from tests.system.support import GUNICORN

INFER = "/v2/models/digits/infer"
ROW = [0.1, -0.2, 0.3, 0.4]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "bad-input")


@pytest.fixture(scope="module")
def url(instance: Instance) -> Iterator[str]:
    with server(instance, *GUNICORN, "--preload", "digits") as served:
        yield served.url


def call(
    url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection (http.client sends a str header value as latin-1)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.headers), answer.read()
    finally:
        connection.close()


def fresh(prefix: str) -> str:
    """A request id of its own, to find the request's audit event by."""
    return f"{prefix}-{secrets.token_hex(6)}"


def audited(instance: Instance, rid: str) -> AuditRecord:
    """The one audit event of request `rid`."""
    found = by_request(instance.engine, {rid})[rid]
    assert len(found) == 1, (rid, found)
    return found[0]


def infer_body() -> bytes:
    document = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    return json.dumps(document).encode()


# -- point 4: 500s on bad input -------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["²", "¹", "³", "1²", " ²", pytest.param("9" * 5000, id="5000-digits")]
)
def test_a_header_length_in_other_digits_is_a_400(url: str, instance: Instance, value: str) -> None:
    rid = fresh("digits")
    headers = instance.headers("alice", **{"Inference-Header-Content-Length": value})
    headers["X-Request-Id"] = rid
    status, _, body = call(url, "POST", INFER, headers=headers, body=infer_body())
    assert status == 400, body
    assert "Inference-Header-Content-Length" in json.loads(body)["error"]
    event = audited(instance, rid)
    assert (event.http_status, event.decision) == (400, "error")


def test_a_plain_header_length_still_works(url: str, instance: Instance) -> None:
    head = infer_body()
    headers = instance.headers("alice", **{"Inference-Header-Content-Length": str(len(head))})
    status, _, body = call(url, "POST", INFER, headers=headers, body=head)
    assert status == 200, body


@pytest.mark.parametrize(
    "query",
    [
        "since=999999999d",
        "since=99999999999999999999999d",
        "since=0001-01-01T00:00:00%2B14:00",
        "until=9999-12-31T23:59:59-14:00",
        "since=%D9%A1h",  # U+0661 ARABIC-INDIC DIGIT ONE, then h
        "since=%EF%BC%91h",  # U+FF11 FULLWIDTH DIGIT ONE, then h
        pytest.param("until=" + "9" * 5000 + "s", id="until-5000-digits"),
        pytest.param("after=" + "9" * 5000, id="after-5000-digits"),
    ],
)
def test_times_and_numbers_out_of_range_are_a_400(url: str, instance: Instance, query: str) -> None:
    rid = fresh("audit-query")
    headers = instance.headers("bob", **{"X-Request-Id": rid})
    status, _, body = call(url, "GET", f"/admin/audit?{query}", headers=headers)
    assert status == 400, body
    name = query.split("=")[0]
    assert json.loads(body)["error"].startswith(name), body
    event = audited(instance, rid)
    assert (event.http_status, event.decision, event.actor) == (400, "error", "bob")


def test_dates_at_the_edges_of_the_calendar_are_answered(url: str, instance: Instance) -> None:
    for query in ("since=0001-01-01T00:00:00Z", "until=9999-12-31T23:59:59Z", "since=36500d"):
        status, _, body = call(url, "GET", f"/admin/audit?{query}&limit=1",
                               headers=instance.headers("bob"))  # fmt: skip
        assert status == 200, (query, body)


# -- point 5: the access decision first -----------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "?since=999999999d",
        "?since=yesterday",
        "?limit=0",
        "?after=x",
        "?actr=bob",
        "?decision=maybe",
        "?since=1h&since=2h",
        "?until=9999-12-31T23:59:59-14:00",
    ],
)
@pytest.mark.parametrize("who", ["alice", "eve"])
def test_a_caller_without_audit_read_gets_403_whatever_the_query(
    url: str, instance: Instance, query: str, who: str
) -> None:
    for path in ("/admin/audit", "/admin/audit/verify"):
        rid = fresh(f"no-audit-{who}")
        headers = instance.headers(who, **{"X-Request-Id": rid})
        status, _, body = call(url, "GET", path + query, headers=headers)
        assert status == 403, (path, query, body)
        assert json.loads(body) == {"error": "permission denied"}
        event = audited(instance, rid)
        assert (event.http_status, event.decision, event.actor) == (403, "deny", who)
        assert event.action == "audit:read"


def test_the_auditor_still_gets_400_for_a_bad_query(url: str, instance: Instance) -> None:
    for path, query in (("/admin/audit", "?limit=0"), ("/admin/audit/verify", "?x=1")):
        status, _, body = call(url, "GET", path + query, headers=instance.headers("bob"))
        assert status == 400, body


# -- point 8: every answer under /v1/models and /v2/models is audited ------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "action"),
    [
        ("GET", "/v1/models//digits", 308, "model:metadata"),
        ("GET", "/v2/models//digits/versions/2", 308, "model:metadata"),
        ("POST", "/v1/models//digits:predict", 308, "model:predict"),
        ("PUT", "/v1/models/digits", 405, "model:predict"),
        ("DELETE", "/v2/models/digits/infer", 405, "model:predict"),
        ("PATCH", "/v2/models/digits", 405, "model:predict"),
        ("OPTIONS", "/v1/models/digits/metadata", 200, "model:metadata"),
        ("OPTIONS", "/v2/models/digits/infer", 200, "model:metadata"),
        ("POST", "/v1/models", 404, "model:predict"),
        ("PUT", "/v1/models/nosuch/anything/at/all", 404, "model:predict"),
    ],
)
def test_routing_answers_under_the_model_prefixes_are_audited(
    url: str, instance: Instance, method: str, path: str, status: int, action: str
) -> None:
    rid = fresh(f"routing-{method}")
    headers = instance.headers("alice", **{"X-Request-Id": rid})
    body = infer_body() if method in ("POST", "PUT", "PATCH") else None
    got, answer_headers, _ = call(url, method, path, headers=headers, body=body)
    assert got == status, (method, path)
    if status == 308:
        assert answer_headers["Location"].endswith(path.replace("//", "/"))
    if status in (200, 405):
        assert "GET" in answer_headers["Allow"] or "POST" in answer_headers["Allow"]
    event = audited(instance, rid)
    assert (event.http_status, event.actor, event.action) == (status, "alice", action)
    assert event.reason


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models//digits"), ("PUT", "/v1/models/digits"), ("OPTIONS", "/v2/models/x")],
)
def test_routing_answers_need_a_token_like_any_model_request(
    url: str, instance: Instance, method: str, path: str
) -> None:
    rid = fresh(f"anonymous-{method}")
    status, headers, _ = call(url, method, path, headers={"X-Request-Id": rid})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    event = audited(instance, rid)
    assert (event.http_status, event.decision, event.actor) == (401, "deny", "anonymous")


def test_a_header_too_large_is_gunicorns_431_before_the_app(url: str, instance: Instance) -> None:
    """gunicorn's `limit_request_field_size` (16 KiB here, see gunicorn_app.DEFAULTS) answers
    431 before any app code runs: no request id, no audit event, nothing the app could add."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as raw:
        raw.sendall(
            b"GET /v1/models/digits HTTP/1.1\r\nHost: x\r\nX-Request-Id: too-large-431\r\n"
            b"X-Padding: " + b"a" * 20_000 + b"\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 431 "), head
    assert "x-request-id" not in head.lower()
    assert by_request(instance.engine, {"too-large-431"})["too-large-431"] == []
