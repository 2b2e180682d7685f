"""TF Serving's `:classify` and `:regress` through the Flask app, on SQLite and PostgreSQL: the
results against the models' own outputs, context features, versions and labels, the models
that do not fit, bad examples, row limits and quotas counted in examples, visibility and the
audit events."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import Quota, Rule, grants
from secure_maas.registry.models import Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore
from tests.functional.serving_support import Instance, by_request, models, prepared

X = np.random.default_rng(21).normal(size=(5, 4)).astype(np.float32)
ROOMS = np.array([2, 3, 5, 1], np.float32)
CONTEXT = [0.5, -1.25, 2.0]  # the `x` feature every `house` example shares
ANALYST = ["model:predict", "model:metadata", "model:list"]


@functools.cache
def house() -> Any:
    """A regressor of two inputs: `rooms` (a scalar per example) and `x` [-1, 3] -> `price`
    [-1, 1]."""
    import tensorflow as tf

    models()  # TensorFlow set up as the other serving models are
    tf.keras.utils.set_random_seed(4)
    rooms = tf.keras.Input((), name="rooms")
    x = tf.keras.Input((3,), name="x")
    joined = tf.keras.layers.Concatenate()([tf.keras.layers.Reshape((1,))(rooms), x])
    hidden = tf.keras.layers.Dense(5, activation="tanh")(joined)
    return tf.keras.Model([rooms, x], tf.keras.layers.Dense(1, name="price")(hidden))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    """The serving instance, plus `house`: analysts may use it, dave 3 rows a request and 5
    rows a day."""
    from secure_maas.registry.codec import encode_model
    from secure_maas.registry.signature import ServingSignature

    for made in prepared(request, tmp_path_factory, "classify"):
        settings = made.settings
        model = house()
        publish(
            made.engine, ArtifactStore(settings.store_dir), Keyring.open(settings.keys_dir),
            name="house", payload=encode_model(model),
            signature=ServingSignature.from_model(model).to_dict(),
            provenance=Provenance(Privacy.IMPORTED), created_by="tests",
        )  # fmt: skip
        with session_scope(session_factory(made.engine)) as session:
            for rule in (
                Rule("allow", "role:analyst", ANALYST, model="house"),
                Rule("allow", "user:dave", ANALYST, model="house", max_rows=3,
                     quotas=(Quota("day", rows=5),)),
            ):  # fmt: skip
                grants.grant(session, rule, actor="tests")
        yield made


def post(
    client: FlaskClient, instance: Instance, who: str, path: str, body: Any, rid: str = ""
) -> TestResponse:
    headers = instance.headers(who)
    if rid:
        headers["X-Request-Id"] = rid
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, data=data, headers=headers, content_type="application/json")


def examples(x: np.ndarray) -> list[dict[str, Any]]:
    return [{"x": row.tolist()} for row in x]


def close(got: Any, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=1e-6)


def event_of(instance: Instance, rid: str) -> Any:
    [event] = by_request(instance.engine, {rid})[rid]
    return event


def test_classify_gives_every_class_and_the_models_own_scores(
    client: FlaskClient, instance: Instance
) -> None:
    want = models().predict("two", X)["probs"]  # digits v2: the newest, labelled stable
    for path in (
        "/v1/models/digits:classify",
        "/v1/models/digits/versions/2:classify",
        "/v1/models/digits/labels/stable:classify",
        "/V1/MODELS/digits/VERSIONS/2:CLASSIFY",
    ):
        answer = post(client, instance, "alice", path, {"examples": examples(X)})
        assert answer.status_code == 200, (path, answer.json)
        assert list(answer.json) == ["results"]
        results = answer.json["results"]
        assert len(results) == len(X)
        assert all([label for label, _ in row] == ["0", "1", "2"] for row in results)
        close([[score for _, score in row] for row in results], want)
    # Version 1 is labelled canary, whose predictions analysts are denied: classify too.
    refused = post(client, instance, "alice", "/v1/models/digits/versions/1:classify",
                   {"examples": examples(X)})  # fmt: skip
    assert refused.status_code == 403 and refused.json == {"error": "permission denied"}


def test_regress_maps_examples_and_context_onto_the_inputs(
    client: FlaskClient, instance: Instance
) -> None:
    shared = np.tile(np.array(CONTEXT, np.float32), (len(ROOMS), 1))
    want = house().predict([ROOMS, shared], verbose=0).reshape(-1)
    body = {
        "signature_name": "serving_default",
        "context": {"x": CONTEXT},
        "examples": [{"rooms": float(r)} for r in ROOMS],
    }
    answer = post(client, instance, "alice", "/v1/models/house:regress", body, "regress-ok")
    assert answer.status_code == 200, answer.json
    assert list(answer.json) == ["results"] and len(answer.json["results"]) == len(ROOMS)
    close(answer.json["results"], want)
    # The same without context, every feature in each example (a scalar as a one-value list).
    spelled = {"examples": [{"rooms": [float(r)], "x": CONTEXT} for r in ROOMS]}
    again = post(client, instance, "alice", "/v1/models/house/versions/1:regress", spelled)
    assert again.json == answer.json
    # The same numbers through :predict.
    predicted = post(client, instance, "alice", "/v1/models/house:predict",
                     {"inputs": {"rooms": ROOMS.tolist(), "x": shared.tolist()}})  # fmt: skip
    close(answer.json["results"], np.asarray(predicted.json["outputs"]).reshape(-1))
    event = event_of(instance, "regress-ok")
    assert (event.action, event.decision, event.http_status) == ("model:predict", "allow", 200)
    assert (event.model, event.model_version, event.rows) == ("house", 1, len(ROOMS))
    assert event.body_sha256 is not None


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/models/multi:classify", {"examples": [{"a": [1, 2, 3], "b": [1, 2]}]},
         "this model cannot classify: it has 2 outputs (score, gate)"),
        ("/v1/models/multi:regress", {"examples": [{"a": [1, 2, 3], "b": [1, 2]}]},
         "this model cannot regress: it has 2 outputs"),
        ("/v1/models/digits:regress", {"examples": [{"x": [1, 2, 3, 4]}]},
         "shape [batch_size] or [batch_size, 1] but got [-1,3]"),
        ("/v1/models/digits:classify", {"examples": [{"x": [1, 2, 3, 4], "y": 1}]},
         "examples[0]: unknown feature(s) y; the model takes x"),
        ("/v1/models/house:regress", {"examples": [{"rooms": 1}]},
         "examples[0]: missing feature(s) x"),
        ("/v1/models/house:regress",
         {"context": {"x": CONTEXT}, "examples": [{"rooms": 1, "x": CONTEXT}]},
         "feature(s) x also in 'context'"),
        ("/v1/models/digits:classify", {"examples": [{"x": [1, 2, 3]}]},
         "examples[0].x: 3 value(s) where one example takes 4"),
        ("/v1/models/digits:classify", {"examples": [{"x": [1, 2, 3, {"b64": "AAAA"}]}]},
         'a binary {"b64": ...} value'),
        ("/v1/models/digits:classify", {"examples": []}, "'examples' value is an empty array"),
        ("/v1/models/digits:classify", {"instances": [[1, 2, 3, 4]]},
         "key 'examples' is expected and was not found"),
    ],
)  # fmt: skip
def test_models_that_do_not_fit_and_bad_examples_are_400s(
    client: FlaskClient,
    instance: Instance,
    path: str,
    body: Any,
    fragment: str,
    request: pytest.FixtureRequest,
) -> None:
    rid = f"bad-{request.node.callspec.indices['path']}"
    answer = post(client, instance, "alice", path, body, rid)
    assert answer.status_code == 400, answer.json
    assert set(answer.json) == {"error"} and fragment in answer.json["error"], answer.json
    event = event_of(instance, rid)
    assert (event.http_status, event.decision, event.action) == (400, "error", "model:predict")
    assert event.body_sha256 is not None  # read, then refused: the digest of what was sent
    # ... and the service keeps serving.
    ok = post(client, instance, "alice", "/v1/models/digits:classify", {"examples": examples(X)})
    assert ok.status_code == 200


def test_row_limits_and_quotas_count_examples(client: FlaskClient, instance: Instance) -> None:
    many = post(client, instance, "alice", "/v1/models/digits:classify",
                {"examples": examples(np.zeros((101, 4), np.float32))}, "classify-101")  # fmt: skip
    assert many.status_code == 403  # max_rows 100 for analysts on digits*
    assert event_of(instance, "classify-101").rows == 101
    path = "/v1/models/house:regress"

    def send(rows: int, rid: str) -> TestResponse:
        body = {"context": {"x": CONTEXT}, "examples": [{"rooms": r} for r in range(rows)]}
        return post(client, instance, "dave", path, body, rid)

    assert send(4, "dave-4").status_code == 403  # 4 examples > max_rows 3, context or not
    assert send(3, "dave-3").status_code == 200
    assert send(2, "dave-2").status_code == 200  # 5 rows today: the quota is used up
    over = send(1, "dave-1")
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    event = event_of(instance, "dave-1")
    assert (event.decision, event.reason_code) == ("deny", "quota_exceeded")


def test_visibility_is_that_of_predict(client: FlaskClient, instance: Instance) -> None:
    body = {"examples": examples(X[:1])}

    def answer(who: str, path: str) -> tuple[int, str]:
        got = client.post(path, json=body, headers={**instance.headers(who), "X-Request-Id": "v"})
        return got.status_code, got.get_data(as_text=True)

    for verb in ("classify", "regress"):
        for who, hidden, name in (
            ("alice", "secret", "secret"),
            ("alice", "digits_loose", "digits_loose"),
            ("eve", "digits", "digits"),
            ("eve", "house", "house"),
        ):
            status, text = answer(who, f"/v1/models/{hidden}:{verb}")
            status2, text2 = answer(who, f"/v1/models/nosuch:{verb}")
            assert status == status2 == 404
            assert text.replace(name, "NAME") == text2.replace("nosuch", "NAME")
        # A model the caller may only list: forbidden before anything about its signature.
        assert answer("alice", f"/v1/models/listed:{verb}") == (
            403,
            '{"error":"permission denied"}\n',
        )
    assert answer("eve", "/v1/models/digits/versions/7:classify") == (
        404,
        '{"error":"Servable not found for request: Specific(digits, 7)"}\n',
    )
    unauthenticated = client.post("/v1/models/digits:classify", json=body)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer ")


def test_a_regressor_classifies_as_one_class(client: FlaskClient, instance: Instance) -> None:
    """A [batch, 1] output is one class's score, as TF Serving reads a scores tensor."""
    shared = np.tile(np.array(CONTEXT, np.float32), (2, 1))
    want = house().predict([ROOMS[:2], shared], verbose=0)
    body = {"context": {"x": CONTEXT}, "examples": [{"rooms": float(r)} for r in ROOMS[:2]]}
    answer = post(client, instance, "alice", "/v1/models/house:classify", body)
    assert answer.status_code == 200, answer.json
    assert [[label for label, _ in row] for row in answer.json["results"]] == [["0"], ["0"]]
    close([[score for _, score in row] for row in answer.json["results"]], want)
