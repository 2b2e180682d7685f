"""A text model end to end (issue 18.2): a Keras model with a `TextVectorization` layer (adapted on
a few lines of public-domain text, its vocabulary then part of the layer config), an Embedding
and a Dense classifier, and a string output (`echo`, the input itself),
imported with `secure-maas models import`, verified, served through Flask's test client on both
APIs with the Keras model's own results, and through gunicorn's model process with tritonclient's
binary BYTES and TF Serving's b64; refusals are 400s with their audit events. On SQLite and
PostgreSQL."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from secure_maas.db.session import session_factory, session_scope
from secure_maas.policy import Rule, grants
from secure_maas.serving.app import close_app, create_app
from tests.functional.cli import run_cli
from tests.functional.serving_support import Instance, by_request, call, prepared, server

#: The opening lines of Lewis Carroll's "Jabberwocky" (1871, public domain).
CORPUS = [
    "twas brillig and the slithy toves",
    "did gyre and gimble in the wabe",
    "all mimsy were the borogoves",
    "and the mome raths outgrabe",
    "beware the jabberwock my son",
    "the jaws that bite the claws that catch",
]
TEXTS = ["the slithy toves", "Beware the JABBERWOCK!", "unknown words only", ""]


@functools.cache
def text_model() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(7)
    adapted = tf.keras.layers.TextVectorization(max_tokens=64, output_sequence_length=6)
    adapted.adapt(CORPUS)
    vocabulary = adapted.get_vocabulary()[2:]  # without the mask and OOV tokens it adds
    text = tf.keras.Input((1,), dtype=tf.string, name="text")
    tokens = tf.keras.layers.TextVectorization(
        max_tokens=64, output_sequence_length=6, vocabulary=vocabulary
    )(text)
    embedded = tf.keras.layers.Embedding(64, 8)(tokens)
    pooled = tf.keras.layers.GlobalAveragePooling1D()(embedded)
    probs = tf.keras.layers.Dense(2, activation="softmax", name="probs")(pooled)
    echo = tf.keras.layers.Identity(name="echo")(text)
    return tf.keras.Model(text, [probs, echo])


def expected(texts: list[str]) -> np.ndarray:
    batch = np.array([[t.encode()] for t in texts], dtype=object)
    probs, _ = text_model().predict(batch, verbose=0)
    return np.asarray(probs)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    for made in prepared(request, tmp_path_factory, "strings"):
        path = tmp_path_factory.mktemp("text-model") / "text.keras"
        text_model().save(path)
        imported = run_cli("models", "import", str(path), "--name", "text", env=made.env())
        assert imported.returncode == 0, imported.stdout + imported.stderr
        verified = run_cli("models", "verify", env=made.env())
        assert verified.returncode == 0, verified.stdout + verified.stderr
        with session_scope(session_factory(made.engine)) as session:
            grants.grant(
                session,
                Rule("allow", "role:analyst", ["model:predict", "model:metadata"], model="text"),
                actor="t",
            )
        yield made


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_metadata_says_string_and_bytes(client: FlaskClient, instance: Instance) -> None:
    alice = instance.headers("alice")
    tf_meta = client.get("/v1/models/text/metadata", headers=alice).json
    signature = tf_meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["text"]["dtype"] == "DT_STRING"
    assert signature["outputs"]["echo"]["dtype"] == "DT_STRING"
    v2 = client.get("/v2/models/text", headers=alice).json
    assert v2["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]


def test_both_apis_predict_what_keras_predicts(client: FlaskClient, instance: Instance) -> None:
    alice = instance.headers("alice")
    want = expected(TEXTS)
    rows = [[text] for text in TEXTS]
    rows[1] = [b64(TEXTS[1].encode())]  # a binary value reads as the same bytes
    answer = client.post("/v1/models/text:predict", json={"instances": rows}, headers=alice)
    assert answer.status_code == 200, answer.json
    predictions = answer.json["predictions"]
    np.testing.assert_allclose([p["probs"] for p in predictions], want, rtol=1e-6)
    assert [p["echo"] for p in predictions] == [[text] for text in TEXTS]
    body = {
        "inputs": [{"name": "text", "shape": [4, 1], "datatype": "BYTES", "data": TEXTS}],
        "outputs": [{"name": "probs"}, {"name": "echo"}],
    }
    answer = client.post("/v2/models/text/infer", json=body, headers=alice)
    assert answer.status_code == 200, answer.json
    probs, echo = answer.json["outputs"]
    np.testing.assert_allclose(np.reshape(probs["data"], probs["shape"]), want, rtol=1e-6)
    assert echo == {"name": "echo", "datatype": "BYTES", "shape": [4, 1], "data": TEXTS}


def test_bytes_that_are_not_utf8_come_back_as_b64(client: FlaskClient, instance: Instance) -> None:
    raw = b"\xff\xfe caf\xe9"
    body = {"inputs": {"text": [[b64(raw)]]}}
    answer = client.post("/v1/models/text:predict", json=body, headers=instance.headers("alice"))
    assert answer.status_code == 200, answer.json
    assert answer.json["outputs"]["echo"] == [[b64(raw)]]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/models/digits:predict", {"instances": [[b64(b"1"), 0, 0, 0]]},
         "base64 values are for string inputs only"),
        ("/v1/models/text:predict", {"instances": [[1.5]]}, "is not of expected type string"),
        ("/v1/models/text:predict", {"instances": [["x" * 70_000]]}, "over the body limit: 413"),
        ("/v1/models/text:predict", {"instances": [[{"b64": "%%%"}]]}, "Unable to base64 decode"),
        ("/v2/models/text/infer",
         {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [b64(b"a")]}]},
         "BYTES data are JSON strings"),
        ("/v2/models/digits/infer",
         {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}]},
         "BYTES cannot be used as float32"),
    ],
)  # fmt: skip
def test_refusals_are_clear_400s_and_audited(
    client: FlaskClient, instance: Instance, path: str, body: dict[str, Any], message: str
) -> None:
    rid = f"strings-refused-{abs(hash((path, message)))}"
    headers = instance.headers("alice", **{"X-Request-Id": rid})
    answer = client.post(path, data=json.dumps(body), headers=headers)
    if message.endswith("413"):  # past the body limit (here 64 KiB) before any element is read
        assert answer.status_code == 413, answer.json
    else:
        assert answer.status_code == 400 and message in answer.json["error"], answer.json
    [event] = by_request(instance.engine, {rid})[rid]
    assert event.action == "model:predict" and event.http_status == answer.status_code


def test_tritonclient_bytes_and_tfserving_b64_through_the_model_process(
    instance: Instance,
) -> None:
    import tritonclient.http as triton

    texts = np.array([[t.encode()] for t in TEXTS] + [[b"\x00\xff raw"]], dtype=object)
    want = expected([*TEXTS, "\x00 raw"])[: len(TEXTS)]
    with server(instance, "--workers", "1", "--threads", "2") as served:
        client = triton.InferenceServerClient(url=served.url.removeprefix("http://"))
        headers = instance.headers("alice")
        given = triton.InferInput("text", list(texts.shape), "BYTES")
        given.set_data_from_numpy(texts, binary_data=True)
        result = client.infer(
            "text",
            [given],
            outputs=[
                triton.InferRequestedOutput("probs", binary_data=True),
                triton.InferRequestedOutput("echo", binary_data=True),
            ],
            headers=headers,
        )
        np.testing.assert_allclose(result.as_numpy("probs")[: len(TEXTS)], want, rtol=1e-6)
        assert result.as_numpy("echo").tolist() == texts.tolist()
        given = triton.InferInput("text", [len(TEXTS), 1], "BYTES")
        given.set_data_from_numpy(texts[: len(TEXTS)], binary_data=False)  # JSON strings
        # A fresh dict: tritonclient writes its Inference-Header-Content-Length into the one given.
        result = client.infer("text", [given], headers=instance.headers("alice"))
        np.testing.assert_allclose(result.as_numpy("probs"), want, rtol=1e-6)

        body = json.dumps({"instances": [[b64(b"\x00\xff raw")], ["the slithy toves"]]})
        status, _, answer = call(
            served.url, "POST", "/v1/models/text:predict", headers=headers, body=body.encode()
        )
        assert status == 200, answer
        predictions = json.loads(answer)["predictions"]
        assert [p["echo"] for p in predictions] == [[b64(b"\x00\xff raw")], ["the slithy toves"]]
        np.testing.assert_allclose(predictions[1]["probs"], want[0], rtol=1e-6)


def test_the_codec_round_trip_keeps_the_text_model(tmp_path: Path) -> None:
    from secure_maas.registry.codec import decode_model, encode_model

    payload = encode_model(text_model())
    assert payload == encode_model(text_model())
    loaded = decode_model(payload)
    assert loaded.signature.inputs[0].dtype == "string"
    batch = np.array([[t.encode()] for t in TEXTS], dtype=object)
    outputs = loaded.predict({"text": batch})
    np.testing.assert_allclose(outputs["probs"], expected(TEXTS), rtol=1e-6)
    assert outputs["echo"].tolist() == batch.tolist()


def test_the_string_element_limit_is_a_setting_on_every_api(instance: Instance) -> None:
    """`SECURE_MAAS_MAX_STRING_BYTES` bounds each element (after base64 decoding) on predict,
    infer and classify alike: at the limit it is served, one byte over it is a 400."""
    settings = dataclasses.replace(instance.settings, max_string_bytes=8)
    app = create_app(settings)
    try:
        client = app.test_client()
        alice = instance.headers("alice")
        for text, status in (("x" * 8, 200), ("x" * 9, 400)):
            bodies = (
                ("/v1/models/text:predict", {"instances": [[text]]}),
                ("/v1/models/text:predict", {"instances": [[b64(text.encode())]]}),
                (
                    "/v2/models/text/infer",
                    {
                        "inputs": [
                            {"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}
                        ]
                    },
                ),
            )
            for path, body in bodies:
                answer = client.post(path, json=body, headers=alice)
                assert answer.status_code == status, (path, text, answer.json)
                if status == 400:
                    assert "8" in answer.json["error"], answer.json
    finally:
        close_app(app)
