"""A real server: `secure-maas serve --workers 2 --threads 4` (gunicorn) on 127.0.0.1, on SQLite
and PostgreSQL, called by the client SDK, by `tritonclient[http]` and by plain HTTP; every
request audited once, the chain intact, and a clean exit on SIGTERM. The development server
once, on SQLite.

Bad input, over the same server:
- a header length or an audit time the parsers cannot read is a 400, never a 500:
  `Inference-Header-Content-Length: ²` (`str.isdigit()` accepts the superscript, `int()` does
  not) or of 5000 digits (more than `int()` reads); `/admin/audit?since=999999999d`, moments a
  datetime cannot hold (`since=0001-01-01T00:00:00+14:00`, `until=9999-12-31T23:59:59-14:00`),
  and digits that are not ASCII (`since=%D9%A1h`, an Arabic-Indic one, is not one hour);
- `/admin/audit` decides access before it reads its query: a caller without `audit:read` gets
  403, recorded as `deny` (so `audit list --decision deny` finds the attempt), whatever the
  query says;
- under /v1/models and /v2/models, the merged-slash redirect (308), the 405 of a method no route
  takes and the automatic OPTIONS answer go through the pipeline (a token is needed, and each is
  audited once). A 431 (a header over gunicorn's `limit_request_field_size`) is gunicorn's,
  answered before the app runs.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from typing import Any

import numpy as np
import pytest

from secure_maas.audit import AuditRecord, KeyringAuditKeys, verify_database
from secure_maas.client import (
    BadRequest,
    Client,
    Forbidden,
    NotFound,
    QuotaExceeded,
    TooLarge,
    Unauthenticated,
)
from secure_maas.keys import Keyring
from tests.functional.serving_support import (
    BODY_LIMIT,
    Instance,
    by_request,
    call,
    models,
    prepared,
    server,
)

X = np.random.default_rng(21).normal(size=(6, 4)).astype(np.float32)
A = np.random.default_rng(22).normal(size=(4, 3)).astype(np.float32)
B = np.random.default_rng(23).normal(size=(4, 2)).astype(np.float32)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "server")


@pytest.fixture(scope="module")
def url(instance: Instance) -> Iterator[str]:
    args = ("--workers", "2", "--threads", "4", "--preload", "digits", "--preload", "multi")
    with server(instance, *args) as served:
        yield served.url


def close(got: Any, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=1e-6)


def http(
    url: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url + path, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def test_client_sdk_predicts_exactly_and_maps_every_refusal(url: str, instance: Instance) -> None:
    built = models()
    alice = Client(url, instance.tokens["alice"])
    close(alice.predict("digits", X), built.predict("two", X)["probs"])
    close(alice.predict("digits", X, label="stable"), built.predict("two", X)["probs"])
    close(alice.predict("digits", X, version=2), built.predict("two", X)["probs"])
    want = built.predict("multi", [A, B])
    columns = alice.predict_columns("multi", {"a": A, "b": B})
    close(columns["score"], want["score"])
    close(columns["gate"], want["gate"])
    rows = alice.predict("multi", [{"a": a, "b": b} for a, b in zip(A, B, strict=True)])
    close([r["gate"] for r in rows], want["gate"])
    inferred = alice.infer("multi", {"a": A, "b": B})
    assert inferred["score"].dtype == np.float32 and inferred["score"].shape == (4, 2)
    close(inferred["score"], want["score"])
    assert alice.metadata("digits")["secure_maas"]["dp"]["epsilon"] == 2.0
    assert alice.infer_metadata("multi")["versions"] == ["1"]
    assert {m["name"] for m in alice.models()} == {"digits", "listed", "multi"}
    assert alice.last_request_id is not None and alice.ready()

    refusals: list[tuple[Any, type[Exception], str]] = [
        (lambda: Client(url, "garbage").predict("digits", X), Unauthenticated, "invalid token"),
        (lambda: Client(url, instance.tokens["expired"]).models(), Unauthenticated, "invalid"),
        (lambda: Client(url, instance.tokens["eve"]).predict("digits", X), NotFound,
         "Servable not found for request: Latest(digits)"),
        (lambda: alice.predict("secret", X), NotFound, "Latest(secret)"),
        (lambda: alice.predict("digits", X, version=9), NotFound, "Specific(digits, 9)"),
        (lambda: alice.predict("listed", X), Forbidden, "permission denied"),
        (lambda: alice.predict("digits", X, version=1), Forbidden, "permission denied"),
        (lambda: alice.predict("digits", [[1.0, 2.0]]), BadRequest, "shape"),
        (lambda: alice.predict("digits", []), BadRequest, "No values"),
        (lambda: alice.predict("digits", [[1.0, 2.0, 3.0, 4.0]] * (BODY_LIMIT // 8)), TooLarge,
         "too large"),
        (lambda: alice.audit(), Forbidden, "permission denied"),
    ]  # fmt: skip
    for attempt, kind, fragment in refusals:
        with pytest.raises(kind) as caught:
            attempt()
        assert fragment in caught.value.message
        assert caught.value.request_id is not None

    dave = Client(url, instance.tokens["dave"])
    one_row = {"a": A[:1], "b": B[:1]}
    dave.predict_columns("multi", one_row)
    dave.predict_columns("multi", one_row)
    with pytest.raises(QuotaExceeded) as over:
        dave.predict_columns("multi", one_row)
    assert over.value.retry_after >= 1


def test_tritonclient_infers_with_a_bearer_header(url: str, instance: Instance) -> None:
    import tritonclient.http as triton

    headers = {"Authorization": f"Bearer {instance.tokens['alice']}"}
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("multi", headers=headers)
        metadata = client.get_model_metadata("multi", headers=headers)
        assert [i["name"] for i in metadata["inputs"]] == ["a", "b"]
        want = models().predict("multi", [A, B])
        for binary in (False, True):
            inputs = [triton.InferInput("a", list(A.shape), "FP32"),
                      triton.InferInput("b", list(B.shape), "FP32")]  # fmt: skip
            inputs[0].set_data_from_numpy(A, binary_data=binary)
            inputs[1].set_data_from_numpy(B, binary_data=binary)
            outputs = [triton.InferRequestedOutput(name, binary_data=binary)
                       for name in ("score", "gate")]  # fmt: skip
            result = client.infer("multi", inputs, outputs=outputs, headers=headers,
                                  request_id="triton-1")  # fmt: skip
            close(result.as_numpy("score"), want["score"])
            close(result.as_numpy("gate"), want["gate"])
            assert result.get_response()["id"] == "triton-1"
        single = triton.InferInput("x", list(X.shape), "FP32")
        single.set_data_from_numpy(X)
        result = client.infer("digits", [single], model_version="2", headers=headers)
        close(result.as_numpy("probs"), models().predict("two", X)["probs"])
        with pytest.raises(triton.InferenceServerException) as refused:
            client.infer("digits", [single], headers={"Authorization": "Bearer nope"})
        assert "invalid token" in str(refused.value)
        with pytest.raises(triton.InferenceServerException) as hidden:
            client.infer("secret", [single], headers=headers)
        assert "Request for unknown model: 'secret' is not found" in str(hidden.value)
    finally:
        client.close()


def test_concurrent_requests_all_get_their_own_answers(url: str, instance: Instance) -> None:
    alice = Client(url, instance.tokens["alice"])
    batches = [np.random.default_rng(100 + i).normal(size=(1 + i % 3, 4)).astype(np.float32)
               for i in range(32)]  # fmt: skip
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda batch: alice.predict("digits", batch), batches))
    reference = models()
    for batch, answer in zip(batches, answers, strict=True):
        close(answer, reference.predict("two", batch)["probs"])


def test_tf_serving_curl_example_and_request_ids(url: str, instance: Instance) -> None:
    """What TF Serving's docs show: `curl -d '{"instances": ...}' -X POST .../NAME:predict`
    (curl -d sends a form content type)."""
    body = json.dumps({"instances": X[:2].tolist()}).encode()
    headers = {
        "Authorization": f"Bearer {instance.tokens['alice']}",
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Request-Id": "curl-example",
    }
    status, answer_headers, payload = http(url, "/v1/models/digits:predict", body=body,
                                           headers=headers)  # fmt: skip
    assert status == 200 and answer_headers["X-Request-Id"] == "curl-example"
    close(json.loads(payload)["predictions"], models().predict("two", X[:2])["probs"])
    status, _, payload = http(url, "/v1/models/digits:predict", body=body,
                              headers={**headers, "Content-Type": "text/csv"})  # fmt: skip
    assert status == 415 and "unsupported content type" in json.loads(payload)["error"]
    assert http(url, "/metrics")[0] == 200
    assert json.loads(http(url, "/openapi.json")[2])["openapi"].startswith("3.")


def test_each_request_is_audited_once_and_the_chain_is_intact(url: str, instance: Instance) -> None:
    alice = f"Bearer {instance.tokens['alice']}"
    body = json.dumps({"instances": X.tolist()}).encode()
    sequence = [
        ("/v1/models/digits:predict", body, {"Authorization": alice}, 200, "allow"),
        ("/v1/models/digits:predict", body, {}, 401, "deny"),
        ("/v1/models/digits:predict", body, {"Authorization": "Bearer x.y.z"}, 401, "deny"),
        ("/v1/models/secret:predict", body, {"Authorization": alice}, 404, "deny"),
        ("/v1/models/listed:predict", body, {"Authorization": alice}, 403, "deny"),
        ("/v1/models/digits:predict", b"{", {"Authorization": alice}, 400, "error"),
        ("/v1/models/digits/metadata", None, {"Authorization": alice}, 200, "allow"),
        ("/v2/models/multi/ready", None, {"Authorization": alice}, 200, "allow"),
        # Outside TF Serving's grammar (a name holds no ':' or '/', a version is a number):
        # its 400 "Malformed request", whatever the model.
        ("/v1/models/digits%0d%0aX-Evil:%20yes:predict", body, {"Authorization": alice}, 400,
         "error"),
        ("/v1/models/../../etc/passwd:predict", body, {"Authorization": alice}, 400, "error"),
        ("/v1/models/digits/versions/..%2F1:predict", body, {"Authorization": alice}, 400,
         "error"),  # a version is a number
    ]  # fmt: skip
    sent: dict[str, tuple[int, str]] = {}
    for index, (path, data, headers, status, decision) in enumerate(sequence):
        rid = f"server-sequence-{index}"
        extra = {"Content-Type": "application/json"} if data is not None else {}
        got, answer_headers, _ = http(
            url, path, body=data, headers={**headers, **extra, "X-Request-Id": rid}
        )
        assert got == status, path
        assert "X-Evil" not in answer_headers
        sent[rid] = (status, decision)
    found = by_request(instance.engine, set(sent))
    for rid, (status, decision) in sent.items():
        assert [(e.http_status, e.decision) for e in found[rid]] == [(status, decision)], rid
    auditor = Client(url, instance.tokens["bob"])
    mine = auditor.audit(actor="alice", model="listed", decision="deny", limit=2)
    assert any(e["request_id"] == "server-sequence-4" for e in mine)
    assert auditor.audit_verify()["intact"] is True
    keys = KeyringAuditKeys(Keyring.open(instance.settings.keys_dir))
    report = verify_database(instance.engine, keys)
    assert report.intact, report.problem


@pytest.mark.parametrize("instance", ["sqlite"], indirect=True)
def test_development_server(instance: Instance) -> None:
    with server(instance) as served:
        alice = Client(served.url, instance.tokens["alice"])
        close(alice.predict("digits", X), models().predict("two", X)["probs"])
        with pytest.raises(NotFound):
            Client(served.url, instance.tokens["eve"]).predict("digits", X)


@pytest.mark.parametrize("instance", ["sqlite"], indirect=True)
def test_sigterm_lets_in_flight_requests_finish(instance: Instance) -> None:
    """A request whose body is still arriving when gunicorn gets SIGTERM is answered in full,
    and the server then exits cleanly (the same on both databases: checked on SQLite)."""
    body = json.dumps({"instances": X.tolist()}).encode()
    with server(instance, "--workers", "1", "--threads", "2") as served:
        connection = HTTPConnection("127.0.0.1", served.port, timeout=60)
        connection.putrequest("POST", "/v1/models/digits:predict")
        for name, value in (
            ("Authorization", f"Bearer {instance.tokens['alice']}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ):
            connection.putheader(name, value)
        connection.endheaders(body[:10])
        time.sleep(1.0)  # accepted and being read by a worker thread
        served.stop()
        time.sleep(0.5)
        connection.send(body[10:])
        answer = connection.getresponse()
        assert answer.status == 200
        close(json.loads(answer.read())["predictions"], models().predict("two", X)["probs"])
        connection.close()
        assert served.process.wait(timeout=60) == 0


# -- bad input -------------------------------------------------------------------------------

INFER = "/v2/models/digits/infer"
ROW = [0.1, -0.2, 0.3, 0.4]


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


# -- bad input is a 400, never a 500 ----------------------------------------------------------


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


# -- the access decision comes first ---------------------------------------------------------


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


# -- every answer under /v1/models and /v2/models is audited ---------------------------------


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
        # Outside TF Serving's grammar: its 400 "Malformed request" (the path alone decides).
        ("POST", "/v1/models", 400, "model:predict"),
        ("PUT", "/v1/models/nosuch/anything/at/all", 400, "model:predict"),
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
