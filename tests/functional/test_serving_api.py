"""The Flask app through its test client, on SQLite and PostgreSQL: both prediction APIs against
the models' own outputs, TF Serving's documented shapes, visibility (404 vs 403), DP metadata,
every kind of bad input with its status, message and audit event, fail-closed auditing, the
OpenAPI document and the metrics."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError
from werkzeug.test import TestResponse

from secure_maas.actions import Action
from secure_maas.audit import AuditEvent, AuditUnavailable, verify_database
from secure_maas.policy import Decision, ModelFacts, Requester, RequestFacts
from secure_maas.serving.app import close_app, create_app, services_of
from secure_maas.serving.openapi import document
from tests.functional.serving_support import (
    BODY_LIMIT,
    Instance,
    by_request,
    events,
    models,
    prepared,
)

X = np.random.default_rng(11).normal(size=(5, 4)).astype(np.float32)
A = np.random.default_rng(12).normal(size=(3, 3)).astype(np.float32)
B = np.random.default_rng(13).normal(size=(3, 2)).astype(np.float32)
PREDICT = "/v1/models/digits:predict"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "serving")


def post(client: FlaskClient, path: str, body: Any, headers: dict[str, str]) -> TestResponse:
    return client.post(path, json=body, headers=headers)


def close(got: Any, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=1e-6)


# -- predictions ----------------------------------------------------------------------------


def test_row_and_columnar_predictions_match_the_models_own_outputs(
    client: FlaskClient, instance: Instance
) -> None:
    alice = instance.headers("alice")
    built = models()
    latest = built.predict("two", X)["probs"]  # digits v2 is the newest version
    row = post(client, PREDICT, {"instances": X.tolist()}, alice)
    assert row.status_code == 200, row.json
    close(row.json["predictions"], latest)
    columns = post(client, PREDICT, {"inputs": X.tolist()}, alice)
    close(columns.json["outputs"], latest)
    # A version by number and by label: each is its own model.
    older = built.predict("one", X)["probs"]
    got = post(client, "/v1/models/digits/versions/1:predict", {"instances": X.tolist()}, alice)
    assert got.status_code == 403  # v1 is labelled canary: the explicit deny wins
    stable = post(client, "/v1/models/digits/labels/stable:predict", {"instances": X.tolist()},
                  alice)  # fmt: skip
    close(stable.json["predictions"], latest)
    assert not np.allclose(older, latest)


def test_tf_serving_documented_request_shapes(client: FlaskClient, instance: Instance) -> None:
    """The request and response shapes of TF Serving's REST API documentation, with several
    named inputs and outputs."""
    alice = instance.headers("alice")
    want = models().predict("multi", [A, B])
    rows = [{"a": a.tolist(), "b": b.tolist()} for a, b in zip(A, B, strict=True)]
    answer = post(client, "/v1/models/multi:predict",
                  {"signature_name": "serving_default", "instances": rows}, alice)  # fmt: skip
    assert answer.status_code == 200, answer.json
    predictions = answer.json["predictions"]
    assert len(predictions) == 3 and all(set(p) == {"score", "gate"} for p in predictions)
    close([p["score"] for p in predictions], want["score"])
    close([p["gate"] for p in predictions], want["gate"])
    columnar = post(client, "/v1/models/multi:predict",
                    {"inputs": {"a": A.tolist(), "b": B.tolist()}}, alice)  # fmt: skip
    assert set(columnar.json) == {"outputs"} and set(columnar.json["outputs"]) == {"score", "gate"}
    close(columnar.json["outputs"]["score"], want["score"])
    close(columnar.json["outputs"]["gate"], want["gate"])

    # Real states: digits is not loaded in this fresh app, so its status starts loading the
    # version the bare name serves (LOADING) and reports the other as never loaded (START).
    status = client.get("/v1/models/digits", headers=alice).json
    assert status == {
        "model_version_status": [
            {
                "version": v,
                "state": state,
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v, state in (("2", "LOADING"), ("1", "START"))
        ]
    }
    one = client.get("/v1/models/digits/versions/1", headers=alice).json
    assert [s["version"] for s in one["model_version_status"]] == ["1"]
    metadata = client.get("/v1/models/multi/metadata", headers=alice).json
    assert metadata["model_spec"] == {"name": "multi", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["inputs"]) == {"a", "b"} and set(signature["outputs"]) == {"score", "gate"}
    assert signature["inputs"]["a"]["dtype"] == "DT_FLOAT"
    assert signature["method_name"] == "tensorflow/serving/predict"


def test_oip_infer_json_and_binary_tensors(client: FlaskClient, instance: Instance) -> None:
    alice = instance.headers("alice")
    want = models().predict("multi", [A, B])
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "a", "shape": [3, 3], "datatype": "FP32", "data": A.ravel().tolist()},
            {"name": "b", "shape": [3, 2], "datatype": "FP64", "data": B.tolist()},
        ],
    }
    answer = client.post("/v2/models/multi/infer", data=json.dumps(body), headers=alice)
    assert answer.status_code == 200, answer.json
    document_ = answer.json
    assert document_["model_name"] == "multi" and document_["model_version"] == "1"
    assert document_["id"] == "req-1"
    outputs = {o["name"]: o for o in document_["outputs"]}
    assert outputs["score"]["shape"] == [3, 2] and outputs["score"]["datatype"] == "FP32"
    close(np.reshape(outputs["score"]["data"], (3, 2)), want["score"])

    # Triton's binary tensor extension, as tritonclient sends it (no content type).
    head = json.dumps({
        "inputs": [
            {"name": "a", "shape": [3, 3], "datatype": "FP32",
             "parameters": {"binary_data_size": A.nbytes}},
            {"name": "b", "shape": [3, 2], "datatype": "FP32",
             "parameters": {"binary_data_size": B.nbytes}},
        ],
        "outputs": [{"name": "gate", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    raw = client.post(
        "/v2/models/multi/versions/1/infer",
        data=head + A.tobytes() + B.tobytes(),
        headers={**alice, "Inference-Header-Content-Length": str(len(head))},
        content_type="",
    )
    assert raw.status_code == 200, raw.data[:200]
    size = int(raw.headers["Inference-Header-Content-Length"])
    meta = json.loads(raw.data[:size])
    assert [o["name"] for o in meta["outputs"]] == ["gate"]
    gate = np.frombuffer(raw.data[size:], dtype="<f4").reshape(3, 1)
    close(gate, want["gate"])

    metadata = client.get("/v2/models/multi", headers=alice).json
    assert metadata["name"] == "multi" and metadata["versions"] == ["1"]
    assert [i["name"] for i in metadata["inputs"]] == ["a", "b"]
    assert client.get("/v2/models/multi/ready", headers=alice).json == {
        "name": "multi",
        "ready": True,
    }
    assert client.get("/v2/health/live").json == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert "binary_tensor_data" in client.get("/v2").json["extensions"]


def test_metadata_carries_the_dp_guarantee(client: FlaskClient, instance: Instance) -> None:
    alice = instance.headers("alice")
    for path in ("/v1/models/digits/metadata", "/v2/models/digits"):
        answer = client.get(path, headers=alice)
        extra = answer.json["secure_maas"]
        assert extra["privacy"] == "dp"
        assert extra["dp"]["epsilon"] == 2.0 and extra["dp"]["delta"] == 1e-5
        for key in ("noise_multiplier", "clip_norm", "epochs", "steps", "accountant"):
            assert extra["dp"][key] is not None, key
        assert extra["dp"]["preprocessing"] == {
            "kind": "public-range",
            "covered": True,
            "stats_noise_multiplier": None,
        }
        # The guarantee, never the data: no fingerprint, size, sampling rate or batch size.
        assert extra["dataset"] == {"name": "synthetic"}
        for hidden in ("fingerprint", "sampling_rate", "batch_size", "3000", "0.01"):
            assert hidden not in answer.get_data(as_text=True), hidden
        assert "stable" in extra["labels"]


def test_model_list_shows_only_what_the_caller_may_list(
    client: FlaskClient, instance: Instance
) -> None:
    def listed(who: str) -> dict[str, list[int]]:
        answer = client.get("/v1/models", headers=instance.headers(who))
        assert answer.status_code == 200
        return {m["name"]: [v["version"] for v in m["versions"]] for m in answer.json["models"]}

    # digits_loose (epsilon 9 > max 3) and secret are invisible to analysts.
    assert listed("alice") == {"digits": [1, 2], "listed": [1], "multi": [1]}
    assert listed("dave") == {"multi": [1]}
    assert listed("eve") == {}
    assert listed("bob") == {}
    assert client.get("/v1/models").status_code == 401


# -- visibility -----------------------------------------------------------------------------


def test_an_invisible_model_answers_exactly_as_a_missing_one(
    client: FlaskClient, instance: Instance
) -> None:
    def answer(who: str, path: str, method: str = "GET") -> tuple[int, str, set[str]]:
        headers = {**instance.headers(who), "X-Request-Id": "fixed-id"}
        if method == "POST":
            got = client.post(path, json={"instances": X.tolist()}, headers=headers)
        else:
            got = client.get(path, headers=headers)
        return got.status_code, got.get_data(as_text=True), set(got.headers.keys())

    pairs = [
        # (who, an existing model it may not see, the same request for a model that is not)
        ("alice", "/v1/models/secret:predict", "/v1/models/nosuch:predict", "secret", "nosuch"),
        ("eve", "/v1/models/digits/metadata", "/v1/models/nosuch/metadata", "digits", "nosuch"),
        ("alice", "/v1/models/digits_loose", "/v1/models/nosuch", "digits_loose", "nosuch"),
        ("eve", "/v1/models/digits/versions/2", "/v1/models/digits/versions/7", "", ""),
        ("eve", "/v2/models/digits/infer", "/v2/models/nosuch/infer", "digits", "nosuch"),
    ]
    for who, hidden, missing, name, other in pairs:
        method = "POST" if hidden.endswith(("predict", "infer")) else "GET"
        status, body, headers = answer(who, hidden, method)
        status2, body2, headers2 = answer(who, missing, method)
        assert status == status2 == 404
        assert body.replace(name, "NAME") == body2.replace(other, "NAME") if name else True
        assert headers == headers2
    # The words are TF Serving's (and Triton's on /v2).
    assert answer("alice", "/v1/models/secret:predict", "POST")[1] == (
        '{"error":"Servable not found for request: Latest(secret)"}\n'
    )
    assert answer("eve", "/v1/models/digits/versions/2")[1] == (
        '{"error":"Servable not found for request: Specific(digits, 2)"}\n'
    )
    assert (
        "Request for unknown model: 'digits' is not found"
        in answer("eve", "/v2/models/digits/infer", "POST")[1]
    )


def test_a_model_the_caller_may_only_list_is_forbidden(
    client: FlaskClient, instance: Instance
) -> None:
    alice = instance.headers("alice")
    for path, method in (("/v1/models/listed:predict", "post"), ("/v1/models/listed", "get")):
        answer = getattr(client, method)(path, json={"instances": [[1, 2]]}, headers=alice)
        assert answer.status_code == 403
        assert answer.json == {"error": "permission denied"}


def test_quota_and_row_limits(client: FlaskClient, instance: Instance) -> None:
    dave = instance.headers("dave")
    rows = [{"a": a.tolist(), "b": b.tolist()} for a, b in zip(A, B, strict=True)]
    too_many = post(client, "/v1/models/multi:predict", {"instances": rows * 2}, dave)
    assert too_many.status_code == 403  # 6 rows > max_rows 3; consumes no quota
    for _ in range(2):
        assert (
            post(client, "/v1/models/multi:predict", {"instances": rows}, dave).status_code == 200
        )
    over = post(client, "/v1/models/multi:predict", {"instances": rows}, dave)
    assert over.status_code == 429
    assert int(over.headers["Retry-After"]) >= 1
    assert over.json["error"].startswith("quota exceeded")
    record = by_request(instance.engine, {over.headers["X-Request-Id"]})
    [event] = record[over.headers["X-Request-Id"]]
    assert event.decision == "deny" and event.reason_code == "quota_exceeded"
    assert event.reason is not None and "quota" in event.reason
    # metadata is not metered
    assert client.get("/v1/models/multi/metadata", headers=dave).status_code == 200


# -- bad input ------------------------------------------------------------------------------

GOOD = {"instances": X.tolist()}
BAD_TOKENS = [
    "expired", "tampered", "revoked", "wrong_audience", "unknown_kid", "alg_none", "garbage",
    "carol",
]  # fmt: skip


def _case(
    name: str,
    status: int,
    fragment: str,
    *,
    path: str = PREDICT,
    body: Any = GOOD,
    raw: bytes | None = None,
    who: str | None = "alice",
    headers: dict[str, str] | None = None,
    method: str = "POST",
    content_type: str = "application/json",
) -> Any:
    return pytest.param(
        (path, body, raw, who, headers or {}, method, content_type, status, fragment), id=name
    )


CASES = [
    _case("no-token", 401, "missing bearer token", who=None),
    _case("malformed-header", 401, "malformed Authorization header", who=None,
          headers={"Authorization": "Token abc"}),
    _case("bearer-without-token", 401, "malformed Authorization header", who=None,
          headers={"Authorization": "Bearer "}),
    _case("bearer-with-spaces", 401, "malformed Authorization header", who=None,
          headers={"Authorization": "Bearer a b"}),
    *[_case(f"token-{kind}", 401, "invalid token", who=kind) for kind in BAD_TOKENS],
    _case("unknown-model", 404, "Servable not found for request: Latest(nosuch)",
          path="/v1/models/nosuch:predict"),
    _case("forbidden-model", 404, "Servable not found for request: Latest(secret)",
          path="/v1/models/secret:predict"),
    _case("wrong-version", 404, "Specific(digits, 9)", path="/v1/models/digits/versions/9:predict"),
    _case("version-not-a-number", 400, "Malformed request: POST /v1/models/digits/versions/x1",
          path="/v1/models/digits/versions/x1:predict"),
    _case("unknown-label", 404, "Label(digits, gold)",
          path="/v1/models/digits/labels/gold:predict"),
    _case("wrong-shape", 400, "shape", body={"instances": [[1.0, 2.0, 3.0]]}),
    _case("wrong-dtype", 400, "instances[0][0]", body={"instances": [[True, False, True, True]]}),
    _case("ragged", 400, "instances", body={"instances": [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]}),
    _case("strings-for-numbers", 400, "instances[0][0]",
          body={"instances": [["a", "b", "c", "d"]]}),
    _case("infinity-literal", 400, "finite", body=None, raw=b'{"instances": [[1e999, 1, 2, 3]]}'),
    _case("instances-and-inputs", 400, "only one of 'inputs' or 'instances'",
          body={"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}),
    _case("empty-instances", 400, "No values in 'instances'", body={"instances": []}),
    _case("missing-key", 400, "Missing 'inputs' or 'instances'", body={"rows": [[1, 2, 3, 4]]}),
    _case("not-json", 400, "JSON Parse error", body=None, raw=b"this is not json"),
    _case("json-not-object", 400, "Is not object", body=[1, 2, 3]),
    _case("wrong-content-type", 415, "unsupported content type", body=None,
          raw=b'{"instances": [[1, 2, 3, 4]]}', content_type="text/plain"),
    _case("rows-over-max-rows", 403, "permission denied",
          body={"instances": [[0.5, 0.5, 0.5, 0.5]] * 101}),
    _case("body-over-limit", 413, "request body too large", body=None,
          raw=b'{"instances": [[' + b"1.0, " * (BODY_LIMIT // 5) + b"1.0]]}"),
    _case("body-over-limit-without-token", 413, "request body too large", who=None, body=None,
          raw=b" " * (BODY_LIMIT + 1)),
    _case("canary-denied", 403, "permission denied",
          path="/v1/models/digits/labels/canary:predict"),
    _case("epsilon-over-max-is-invisible", 404, "Latest(digits_loose)",
          path="/v1/models/digits_loose:predict"),
    _case("header-injection-in-name", 400, "Malformed request",
          path="/v1/models/digits%0d%0aX-Evil:%20yes:predict"),
    _case("header-injection-in-version", 400, "Malformed request",
          path="/v1/models/digits/versions/1%0d%0aX-Evil:%20yes:predict"),
    _case("path-traversal-in-name", 400, "Malformed request",
          path="/v1/models/..%2F..%2Fetc%2Fpasswd:predict"),
    _case("dot-dot-name", 404, "Latest(..)", path="/v1/models/..:predict"),
    _case("path-traversal-in-version", 400, "Malformed request",
          path="/v1/models/digits/versions/..%2F..%2F1:predict"),
    _case("path-traversal-v2", 404, "Malformed request", path="/v2/models/../../etc/infer"),
    _case("unknown-verb", 400, "Malformed request", path="/v1/models/digits:explain"),
    _case("malformed-path-without-token", 401, "missing bearer token", who=None,
          path="/v1/models/a/b/c/d:predict"),
    _case("oip-unknown-model", 404, "Request for unknown model: 'nosuch' is not found",
          path="/v2/models/nosuch/infer"),
    _case("oip-wrong-datatype", 400, "cannot be used as float32", path="/v2/models/digits/infer",
          body={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BOOL",
                            "data": [True, False, True, False]}]}),
    _case("oip-shape-mismatch", 400, "needs 8 value(s)", path="/v2/models/digits/infer",
          body={"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                            "data": [1, 2, 3, 4]}]}),
    _case("oip-missing-input", 400, "missing input(s) b", path="/v2/models/multi/infer",
          body={"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32",
                            "data": [1, 2, 3]}]}),
    _case("oip-bad-binary-header", 400, "Inference-Header-Content-Length",
          path="/v2/models/digits/infer", headers={"Inference-Header-Content-Length": "999999"}),
    _case("metadata-without-token", 401, "missing bearer token", who=None, method="GET",
          path="/v1/models/digits/metadata"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_its_status_a_clear_message_and_an_audit_event(
    client: FlaskClient, instance: Instance, case: tuple[Any, ...], request: pytest.FixtureRequest
) -> None:
    path, body, raw, who, extra, method, content_type, status, fragment = case
    request_id = f"bad-{request.node.callspec.id}"[:64].replace("[", "-").replace("]", "")
    headers = {"X-Request-Id": request_id, **extra}
    if who is not None:
        headers.update(instance.headers(who))
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    answer = client.open(path, method=method, data=data, headers=headers, content_type=content_type)
    assert answer.status_code == status, answer.get_data(as_text=True)[:300]
    payload = answer.json
    assert set(payload) == {"error"} and fragment in payload["error"], payload
    assert "Traceback" not in payload["error"]
    assert answer.headers["X-Request-Id"] == request_id
    assert "X-Evil" not in answer.headers
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer ")
    [event] = by_request(instance.engine, {request_id})[request_id]
    assert event.http_status == status
    assert event.decision == ("deny" if status in (401, 403, 404, 429) else "error")
    # The size check comes before authentication: a 413 is anonymous like a 401.
    assert event.actor == ("anonymous" if status in (401, 413) else who)
    # The body is read only once the caller may proceed: its digest is recorded exactly then.
    read = (status == 400 and "Malformed" not in fragment) or (
        status == 403 and event.rows is not None
    )
    assert (event.body_sha256 is not None) == (data is not None and read)
    # ... and the service keeps serving.
    assert post(client, PREDICT, GOOD, instance.headers("alice")).status_code == 200


def test_refused_tokens_say_why_in_the_audit_log_only(
    client: FlaskClient, instance: Instance
) -> None:
    reasons = {}
    for kind in ("expired", "tampered", "revoked", "carol", "alg_none"):
        answer = post(client, PREDICT, GOOD, instance.headers(kind))
        assert answer.json == {"error": "invalid token"}
        assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
        rid = answer.headers["X-Request-Id"]
        [event] = by_request(instance.engine, {rid})[rid]
        assert event.actor_kind == "anonymous" and event.reason_code == "invalid_token"
        reasons[kind] = event.reason
    assert reasons["expired"] == "expired"
    assert reasons["tampered"] is not None and "bad signature" in reasons["tampered"]
    assert reasons["revoked"] == "revoked"
    assert reasons["carol"] == "principal disabled"


# -- audit ----------------------------------------------------------------------------------


def test_every_request_has_one_audit_event_and_the_chain_verifies(
    client: FlaskClient, instance: Instance
) -> None:
    sent: dict[str, tuple[int, str]] = {}
    sequence = [
        ("alice", "POST", PREDICT, GOOD, 200, "allow"),
        ("alice", "GET", "/v1/models/digits/metadata", None, 200, "allow"),
        ("eve", "POST", PREDICT, GOOD, 404, "deny"),
        ("alice", "POST", PREDICT, {"instances": []}, 400, "error"),
        ("alice", "GET", "/v1/models", None, 200, "allow"),
        ("bob", "GET", "/admin/audit?limit=1", None, 200, "allow"),
        ("alice", "GET", "/admin/audit", None, 403, "deny"),
        (None, "GET", "/v2/models/multi", None, 401, "deny"),
    ]
    for index, (who, method, path, body, status, decision) in enumerate(sequence):
        rid = f"sequence-{index}"
        headers = {"X-Request-Id": rid, **(instance.headers(who) if who else {})}
        answer = client.open(path, method=method, json=body, headers=headers)
        assert answer.status_code == status, (path, answer.json)
        sent[rid] = (status, decision)
    found = by_request(instance.engine, set(sent))
    for rid, (status, decision) in sent.items():
        assert len(found[rid]) == 1, (rid, found[rid])
        assert (found[rid][0].http_status, found[rid][0].decision) == (status, decision)
    loads = [e for e in events(instance.engine, action="model:load")]
    assert loads and all(e.actor == "secure-maas" and e.actor_kind == "service" for e in loads)
    report = verify_database(instance.engine, services_of_app(client).audit_keys)
    assert report.intact, report.problem


def services_of_app(client: FlaskClient) -> Any:
    return services_of(client.application)


def test_audit_endpoints_filter_page_and_verify(client: FlaskClient, instance: Instance) -> None:
    bob = instance.headers("bob")
    post(client, PREDICT, GOOD, {**instance.headers("eve"), "X-Request-Id": "eve-probe"})
    denied = client.get("/admin/audit?actor=anonymous&decision=deny&limit=1000", headers=bob).json
    assert denied["events"] and all(
        e["actor"] == "anonymous" and e["decision"] == "deny" for e in denied["events"]
    )
    eve = client.get("/admin/audit?actor=eve&model=digits&action=model:predict", headers=bob).json
    assert "eve-probe" in [e["request_id"] for e in eve["events"]]
    first = client.get("/admin/audit?limit=2", headers=bob).json
    assert len(first["events"]) == 2 and first["next_after"] == first["events"][-1]["seq"]
    second = client.get(f"/admin/audit?limit=2&after={first['next_after']}", headers=bob).json
    assert second["events"][0]["seq"] > first["next_after"]
    since = client.get("/admin/audit?since=1h&until=2099-01-01&limit=1", headers=bob)
    assert since.status_code == 200
    for query, fragment in (
        ("?since=yesterday", "since"),
        ("?limit=0", "limit"),
        ("?decision=maybe", "decision"),
        ("?actr=bob", "unknown parameter"),
    ):
        bad = client.get("/admin/audit" + query, headers=bob)
        assert bad.status_code == 400 and fragment in bad.json["error"]
    report = client.get("/admin/audit/verify", headers=bob).json
    assert report["intact"] is True and report["checked"] > 0
    assert client.get("/admin/audit/verify", headers=instance.headers("alice")).status_code == 403


class FullDiskAudit:
    """An audit sink (`AuditSink`) whose every write fails, as a full disk makes it."""

    def append(self, event: AuditEvent) -> object:
        raise AuditUnavailable("audit log write failed: disk full")

    def close(self, timeout: float | None = None) -> None:
        return None


class DatabaseDownPolicy:
    """An access policy (`AccessPolicy`) whose database does not answer."""

    def decide(
        self, principal: Requester, action: Action, model: ModelFacts | None, facts: RequestFacts
    ) -> Decision:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))


def client_with(app: Flask, **fakes: Any) -> FlaskClient:
    """A client of an app over `app`'s services but for `fakes` (that app owns nothing, so
    nothing needs closing; `app` itself is left as it was)."""
    return create_app(services=dataclasses.replace(services_of(app), **fakes)).test_client()


def test_a_failed_audit_write_turns_any_answer_into_503(app: Flask, instance: Instance) -> None:
    client = client_with(app, audit=FullDiskAudit())
    for who, path in (("alice", PREDICT), ("eve", PREDICT), (None, PREDICT)):
        headers = instance.headers(who) if who else {}
        answer = post(client, path, GOOD, headers)
        assert answer.status_code == 503
        assert answer.json == {"error": "service unavailable"}


def test_unreadable_state_fails_closed(app: Flask, client: FlaskClient, instance: Instance) -> None:
    down = client_with(app, policy=DatabaseDownPolicy())
    answer = post(down, PREDICT, GOOD, instance.headers("alice"))
    assert answer.status_code == 503 and answer.json == {"error": "service unavailable"}
    rid = answer.headers["X-Request-Id"]
    [event] = by_request(instance.engine, {rid})[rid]
    assert event.decision == "error" and event.reason_code == "unavailable"
    assert post(client, PREDICT, GOOD, instance.headers("alice")).status_code == 200


# -- request ids, health, metrics, OpenAPI --------------------------------------------------


def test_request_ids_are_echoed_when_plain_and_replaced_otherwise(client: FlaskClient) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"]
        == "abc-123"
    )
    for bad in ("x" * 65, "has space", "semi;colon"):
        got = client.get("/healthz", headers={"X-Request-Id": bad}).headers["X-Request-Id"]
        assert got != bad and len(got) == 32
    assert len(client.get("/healthz").headers["X-Request-Id"]) == 32


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}
    assert client.get("/nowhere").status_code == 404
    assert client.get("/nowhere").json == {"error": "not found"}


def test_metrics_count_requests_without_naming_models(
    client: FlaskClient, instance: Instance
) -> None:
    post(client, PREDICT, GOOD, instance.headers("alice"))
    post(client, "/v1/models/secret:predict", GOOD, instance.headers("alice"))
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'secure_maas_http_requests_total{endpoint="tfserving.predict",method="POST",status="200"}'
        in text
    )
    assert 'secure_maas_decisions_total{action="model:predict",decision="deny"}' in text
    assert "secure_maas_batch_rows_bucket" in text
    assert "secure_maas_model_cache_loads_total" in text
    for name in ("digits", "secret", "multi", "alice"):
        assert name not in text, name


def test_openapi_describes_every_route_and_only_those(app: Flask, client: FlaskClient) -> None:
    served = client.get("/openapi.json").json
    assert served == document() and served["openapi"].startswith("3.")
    paths = served["paths"]
    routed: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule
        if rule.endpoint.startswith("console."):
            continue  # HTML pages, not the API: docs/console.md describes them
        for argument in rule.arguments:
            path = path.replace(f"<{argument}>", f"{{{argument}}}")
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            routed.add((path, method.lower()))
            assert path in paths and method.lower() in paths[path], f"{method} {path} undocumented"
            operation = paths[path][method.lower()]
            assert "200" in operation["responses"]
            view = app.view_functions[rule.endpoint]
            action = getattr(view, "guarded_action", None)
            assert operation.get("x-action") == (action.value if action else None), path
            if action is not None:
                assert {"401", "403", "404", "503"} <= set(operation["responses"]), path
    documented = {(p, m) for p, ops in paths.items() for m in ops}
    assert documented == routed


def test_an_unreachable_database_fails_closed_and_is_not_ready(instance: Instance) -> None:
    import dataclasses

    down = dataclasses.replace(
        instance.settings, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    app = create_app(down)
    try:
        client = app.test_client()
        answer = post(client, PREDICT, GOOD, instance.headers("alice"))
        assert answer.status_code == 503 and answer.json == {"error": "service unavailable"}
        assert client.get("/readyz").json == {"error": "not ready: database, keys, audit"}
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/healthz").status_code == 200  # the process itself is up
    finally:
        close_app(app)
