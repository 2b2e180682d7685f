"""TF Serving's path grammar under /v1/models, through the Flask app on SQLite and PostgreSQL:
case-insensitive matching, names without ':' or '/', numeric versions, and its 400 "Malformed
request" for anything else, each answer audited and none telling an invisible model from a
missing one."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flask.testing import FlaskClient

from tests.functional.serving_support import Instance, by_request, prepared

X = np.random.default_rng(21).normal(size=(2, 4)).astype(np.float32)
BODY = {"instances": X.tolist()}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "paths")


def ask(
    client: FlaskClient, instance: Instance, method: str, path: str, who: str | None = "alice"
) -> tuple[int, dict[str, object], str]:
    """(status, JSON body, request id) of one request, its id unique to it."""
    rid = f"paths-{abs(hash((method, path, who))):x}"
    headers = {"X-Request-Id": rid, **(instance.headers(who) if who else {})}
    body = BODY if method == "POST" else None
    answer = client.open(path, method=method, json=body, headers=headers)
    return answer.status_code, answer.json or {}, rid


def test_paths_match_case_insensitively_as_tf_servings_do(
    client: FlaskClient, instance: Instance
) -> None:
    status, want, _ = ask(client, instance, "POST", "/v1/models/digits/versions/2:predict")
    assert status == 200
    for path in (
        "/V1/MODELS/digits/VERSIONS/2:PREDICT",
        "/v1/Models/digits/Versions/2:Predict",
        "/V1/models/digits/LABELS/stable:predict",
    ):
        status, got, rid = ask(client, instance, "POST", path)
        assert (status, got) == (200, want), path
        [event] = by_request(instance.engine, {rid})[rid]
        assert (event.action, event.model, event.model_version) == ("model:predict", "digits", 2)
    status, metadata, _ = ask(client, instance, "GET", "/V1/MODELS/multi/METADATA")
    assert status == 200 and metadata["model_spec"]["name"] == "multi"  # type: ignore[index]
    status, found, _ = ask(client, instance, "GET", "/v1/MODELS/digits/Versions/2")
    assert status == 200 and found["model_version_status"][0]["version"] == "2"  # type: ignore[index]
    status, listing, _ = ask(client, instance, "GET", "/V1/Models")
    assert status == 200 and "models" in listing
    # Names and labels keep their case: only the grammar's own words are case-insensitive.
    status, missing, _ = ask(client, instance, "POST", "/v1/models/DIGITS:predict")
    assert (status, missing) == (404, {"error": "Servable not found for request: Latest(DIGITS)"})


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/v1/models/digits:predict", "GET /v1/models/digits:predict"),
        ("POST", "/v1/models/digits", "POST /v1/models/digits"),
        ("POST", "/v1/models/digits/metadata", "POST /v1/models/digits/metadata"),
        ("GET", "/v1/models/digits/versions/x1", "GET /v1/models/digits/versions/x1"),
        ("GET", "/v1/models/digits/versions/-1", "GET /v1/models/digits/versions/-1"),
        ("POST", "/v1/models/digits/versions/2.0:predict", "POST "),
        ("GET", "/v1/models/digits/", "GET /v1/models/digits/"),
        ("GET", "/v1/models/digits/versions/1/labels/stable", "GET "),
        ("GET", "/v1/models/a:b/metadata", "GET /v1/models/a:b/metadata"),
        ("POST", "/v1/models/digits:predict:predict", "POST "),
        ("GET", "/v1/models/digits/versions/99999999999999999999",
         "Failed to convert version: 99999999999999999999 to numeric."),
    ],
)  # fmt: skip
def test_a_path_outside_the_grammar_is_tf_servings_400(
    client: FlaskClient, instance: Instance, method: str, path: str, message: str
) -> None:
    for who in ("alice", "eve"):  # the same words whoever asks: the path alone decides
        status, body, rid = ask(client, instance, method, path, who)
        assert status == 400 and set(body) == {"error"}, (path, body)
        prefix = message if message.startswith("Failed") else f"Malformed request: {message}"
        assert str(body["error"]).startswith(prefix), body
        [event] = by_request(instance.engine, {rid})[rid]
        assert (event.http_status, event.decision, event.actor) == (400, "error", who)
        assert event.reason_code == "malformed" and event.body_sha256 is None
    # Without a token it is the pipeline's 401 first, audited like any.
    status, body, rid = ask(client, instance, method, path, None)
    assert status == 401
    assert by_request(instance.engine, {rid})[rid][0].actor == "anonymous"


def test_a_version_in_range_that_does_not_exist_is_still_not_found(
    client: FlaskClient, instance: Instance
) -> None:
    for path in ("/v1/models/digits/versions/9", "/v1/models/digits/versions/9223372036854775807"):
        status, body, _ = ask(client, instance, "GET", path)
        assert status == 404 and "Servable not found for request: Specific(digits" in str(body)


def test_an_invisible_model_answers_as_a_missing_one_in_any_case(
    client: FlaskClient, instance: Instance
) -> None:
    for method, hidden, missing in (
        ("POST", "/V1/MODELS/secret:PREDICT", "/V1/MODELS/nosuch:PREDICT"),
        ("GET", "/v1/Models/secret/Metadata", "/v1/Models/nosuch/Metadata"),
        ("GET", "/v1/models/secret/VERSIONS/1", "/v1/models/nosuch/VERSIONS/1"),
    ):
        status, body, _ = ask(client, instance, method, hidden)
        status2, body2, _ = ask(client, instance, method, missing)
        assert status == status2 == 404
        assert str(body).replace("secret", "NAME") == str(body2).replace("nosuch", "NAME")


def test_the_open_inference_protocol_keeps_its_own_answers(
    client: FlaskClient, instance: Instance
) -> None:
    status, body, _ = ask(client, instance, "GET", "/v2/models/digits/versions/x1")
    assert status == 404 and "Request for unknown model" in str(body)
    status, body, _ = ask(client, instance, "GET", "/v2/models/digits/nothing/here")
    assert status == 404 and "Malformed request" in str(body)
    status, _, _ = ask(client, instance, "GET", "/V2/models/digits")
    assert status == 404  # the /v2 paths are case-sensitive, as Triton's are
