"""Compressed request bodies (`Content-Encoding: gzip` or `deflate`) through the Flask app's test
client, on SQLite and PostgreSQL, with a 1 MiB body limit:
- TF Serving predict, OIP infer in JSON and in Triton's binary tensor extension, each sent with
  gzip, deflate (zlib's format, as `tritonclient` and `zlib.compress` send it) and `x-gzip`,
  answer what the uncompressed request answers; `Inference-Header-Content-Length` counts the
  JSON part of the decoded body, as `tritonclient` sends it and Triton reads it; the audit
  event's digest is of the body as received;
- a compression bomb (100 MB of zeros, 97 KB of gzip) is a 413 without the memory it would
  expand to; a body that is not what its coding says is a 400; a coding the server does not
  decode (`br`, `compress`, stacked codings) is a 415 with `Accept-Encoding: gzip, deflate`,
  before the body is read; each refusal is audited with its reason;
- the pipeline's order holds: an invisible model is a 404 whatever the coding.

Over real HTTP (`secure-maas serve --workers 2`, gunicorn, the servers' 64 KiB limit):
`tritonclient.http` with `request_compression_algorithm="gzip"` and `"deflate"`, JSON and
binary tensors; a bomb is a 413 and the server keeps serving.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from secure_maas.audit import AuditRecord, body_digest
from secure_maas.serving.app import close_app, create_app
from tests.functional.serving_support import Instance, by_request, call, models, prepared, server

LIMIT = 1 << 20
X = np.random.default_rng(31).normal(size=(5, 4)).astype(np.float32)
A = np.random.default_rng(32).normal(size=(3, 3)).astype(np.float32)
B = np.random.default_rng(33).normal(size=(3, 2)).astype(np.float32)
PREDICT = "/v1/models/digits:predict"
INFER = "/v2/models/multi/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "x-gzip": gzip.compress,
    "GZip": gzip.compress,
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "compression")


@pytest.fixture
def app(instance: Instance) -> Iterator[Flask]:
    made = create_app(dataclasses.replace(instance.settings, max_body_bytes=LIMIT))
    yield made
    close_app(made)


def close(got: object, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=1e-6)


def send(
    client: FlaskClient,
    instance: Instance,
    path: str,
    body: bytes,
    rid: str,
    *,
    who: str = "alice",
    content_type: str = "application/json",
    **headers: str,
) -> TestResponse:
    extra = {name.replace("_", "-"): value for name, value in headers.items()}
    return client.post(
        path,
        data=body,
        content_type=content_type,
        headers={**instance.headers(who), "X-Request-Id": rid, **extra},
    )


def audited(instance: Instance, rid: str) -> AuditRecord:
    [event] = by_request(instance.engine, {rid})[rid]
    return event


def binary_infer() -> tuple[bytes, int]:
    """A binary-tensor infer body for `multi` (as `tritonclient` builds it) and its JSON length;
    a long `id` makes the JSON part longer than the whole body once compressed."""
    head = json.dumps({
        "id": "r" * 4000,
        "inputs": [
            {"name": "a", "shape": [3, 3], "datatype": "FP32",
             "parameters": {"binary_data_size": A.nbytes}},
            {"name": "b", "shape": [3, 2], "datatype": "FP32",
             "parameters": {"binary_data_size": B.nbytes}},
        ],
        "outputs": [{"name": "gate", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    return head + A.tobytes() + B.tobytes(), len(head)


# -- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", list(COMPRESS))
def test_a_compressed_predict_answers_what_the_plain_one_does(
    client: FlaskClient, instance: Instance, coding: str
) -> None:
    rid = f"gz-predict-{coding}"
    body = COMPRESS[coding](json.dumps({"instances": X.tolist()}).encode())
    answer = send(client, instance, PREDICT, body, rid, Content_Encoding=coding)
    assert answer.status_code == 200, answer.json
    close(answer.json["predictions"], models().predict("two", X)["probs"])
    event = audited(instance, rid)
    assert (event.http_status, event.decision, event.rows) == (200, "allow", 5)
    assert event.body_sha256 == body_digest(body)  # the body as received


@pytest.mark.parametrize("coding", list(COMPRESS))
def test_a_compressed_oip_json_infer_answers_what_the_plain_one_does(
    client: FlaskClient, instance: Instance, coding: str
) -> None:
    document = {
        "id": "gz-1",
        "inputs": [
            {"name": "a", "shape": [3, 3], "datatype": "FP32", "data": A.ravel().tolist()},
            {"name": "b", "shape": [3, 2], "datatype": "FP32", "data": B.ravel().tolist()},
        ],
    }
    body = COMPRESS[coding](json.dumps(document).encode())
    answer = send(client, instance, INFER, body, f"gz-json-{coding}", content_type="",
                  Content_Encoding=coding)  # fmt: skip
    assert answer.status_code == 200, answer.json
    assert answer.json["id"] == "gz-1"
    outputs = {o["name"]: o for o in answer.json["outputs"]}
    close(np.reshape(outputs["score"]["data"], (3, 2)), models().predict("multi", [A, B])["score"])


@pytest.mark.parametrize("coding", list(COMPRESS))
def test_a_compressed_binary_infer_reads_the_header_length_of_the_decoded_body(
    client: FlaskClient, instance: Instance, coding: str
) -> None:
    """Triton's rule: with a Content-Encoding, `Inference-Header-Content-Length` is the length of
    the JSON part of the decompressed body (`tritonclient` measures it before compressing)."""
    plain, json_length = binary_infer()
    body = COMPRESS[coding](plain)
    assert len(body) < json_length  # only the decoded body can hold the JSON part it names
    rid = f"gz-binary-{coding}"
    answer = send(client, instance, INFER, body, rid, content_type="", Content_Encoding=coding,
                  **{HEADER_LENGTH.replace("-", "_"): str(json_length)})  # fmt: skip
    assert answer.status_code == 200, answer.data[:300]
    size = int(answer.headers[HEADER_LENGTH])
    assert [o["name"] for o in json.loads(answer.data[:size])["outputs"]] == ["gate"]
    gate = np.frombuffer(answer.data[size:], dtype="<f4").reshape(3, 1)
    close(gate, models().predict("multi", [A, B])["gate"])
    assert audited(instance, rid).body_sha256 == body_digest(body)


def test_a_header_length_is_checked_against_the_decoded_body(
    client: FlaskClient, instance: Instance
) -> None:
    plain, _ = binary_infer()
    answer = send(client, instance, INFER, gzip.compress(plain), "gz-header-past-end",
                  content_type="", Content_Encoding="gzip",
                  **{HEADER_LENGTH.replace("-", "_"): str(len(plain) + 1)})  # fmt: skip
    assert answer.status_code == 400
    assert f"(1 to {len(plain)})" in answer.json["error"]


@pytest.mark.parametrize("value", ["identity", "", " Identity "])
def test_no_coding_is_the_body_as_it_is(
    client: FlaskClient, instance: Instance, value: str
) -> None:
    body = json.dumps({"instances": X.tolist()}).encode()
    answer = send(client, instance, PREDICT, body, f"gz-identity-{value.strip()}",
                  Content_Encoding=value)  # fmt: skip
    assert answer.status_code == 200, answer.json


# -- refused --------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compression_bomb_is_a_413_without_the_memory_it_expands_to(
    client: FlaskClient, instance: Instance, coding: str
) -> None:
    expanded = 100_000_000
    compress = gzip.compress if coding == "gzip" else zlib.compress
    bomb = compress(b"\0" * expanded, 9)
    assert len(bomb) < LIMIT // 8
    rid = f"gz-bomb-{coding}"
    tracemalloc.start()
    try:
        answer = send(client, instance, PREDICT, bomb, rid, Content_Encoding=coding)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 413
    assert answer.json["error"] == (
        f"request body too large: the limit is {LIMIT} bytes, decoded (Content-Encoding: {coding})"
    )
    assert peak < 8 * LIMIT, peak  # the limit's worth (8 MiB), not the expansion's (100 MB)
    event = audited(instance, rid)
    assert (event.http_status, event.decision, event.reason_code) == (413, "error", "too_large")
    assert event.reason == f"{coding} body decodes to over {LIMIT} bytes"
    assert event.body_sha256 == body_digest(bomb)  # read in full: it is what was sent


def test_a_body_decoding_to_exactly_the_limit_is_read(
    client: FlaskClient, instance: Instance
) -> None:
    document = json.dumps({"instances": X.tolist()}).encode()
    padded = document + b" " * (LIMIT - len(document))
    answer = send(client, instance, PREDICT, gzip.compress(padded), "gz-at-limit",
                  Content_Encoding="gzip")  # fmt: skip
    assert answer.status_code == 200, answer.json
    over = send(client, instance, PREDICT, gzip.compress(padded + b" "), "gz-over-limit",
                Content_Encoding="gzip")  # fmt: skip
    assert over.status_code == 413


def test_a_compressed_body_over_the_limit_as_sent_is_refused_before_it_is_read(
    client: FlaskClient, instance: Instance
) -> None:
    noise = np.random.default_rng(1).bytes(LIMIT + 1024)  # incompressible
    body = gzip.compress(noise)
    assert len(body) > LIMIT
    answer = send(client, instance, PREDICT, body, "gz-sent-over", Content_Encoding="gzip")
    assert answer.status_code == 413
    assert answer.json["error"] == f"request body too large: the limit is {LIMIT} bytes"
    assert audited(instance, "gz-sent-over").body_sha256 is None


GOOD = json.dumps({"instances": [[0.5, 0.5, 0.5, 0.5]]}).encode()
MALFORMED = [
    pytest.param("gzip", b"this is not gzip", id="gzip-not-gzip"),
    pytest.param("gzip", gzip.compress(GOOD)[:-6], id="gzip-cut-short"),
    pytest.param("gzip", gzip.compress(GOOD)[:-4] + b"\0\0\0\0", id="gzip-bad-length"),
    pytest.param("gzip", gzip.compress(GOOD) + b"trailing", id="gzip-trailing-bytes"),
    pytest.param("gzip", zlib.compress(GOOD), id="gzip-holding-zlib"),
    pytest.param("gzip", b"", id="gzip-empty"),
    pytest.param("deflate", b"\x78\x9c garbage", id="deflate-garbage"),
    pytest.param("deflate", zlib.compress(GOOD)[:-3], id="deflate-cut-short"),
    pytest.param("deflate", zlib.compress(GOOD) + b"\0", id="deflate-trailing-byte"),
    pytest.param("deflate", gzip.compress(GOOD), id="deflate-holding-gzip"),
    pytest.param("deflate", zlib.compress(GOOD, wbits=-15), id="deflate-raw-without-zlib"),
]


@pytest.mark.parametrize(("coding", "body"), MALFORMED)
def test_a_body_that_is_not_what_its_coding_says_is_a_400(
    client: FlaskClient,
    instance: Instance,
    coding: str,
    body: bytes,
    request: pytest.FixtureRequest,
) -> None:
    rid = f"gz-bad-{request.node.callspec.id}"
    answer = send(client, instance, PREDICT, body, rid, Content_Encoding=coding)
    assert answer.status_code == 400
    assert answer.json == {
        "error": f"request body is not valid {coding} data (Content-Encoding: {coding})"
    }
    event = audited(instance, rid)
    assert (event.http_status, event.decision, event.reason_code) == (400, "error", "bad_encoding")
    assert event.reason is not None and event.reason.startswith(f"body not valid {coding}: ")
    assert event.body_sha256 == (body_digest(body) if body else None)


def test_a_valid_coding_of_a_bad_document_is_the_parsers_400(
    client: FlaskClient, instance: Instance
) -> None:
    answer = send(client, instance, PREDICT, gzip.compress(b"this is not json"), "gz-not-json",
                  Content_Encoding="gzip")  # fmt: skip
    assert answer.status_code == 400 and "JSON Parse error" in answer.json["error"]


@pytest.mark.parametrize(
    "values",
    [["br"], ["compress"], ["zstd"], ["gzip, gzip"], ["gzip, deflate"], ["gzip", "gzip"],
     ["identity, br"], ["gzip;q=1"]],
    ids=lambda values: "+".join(values),
)  # fmt: skip
def test_a_coding_the_server_does_not_decode_is_a_415_before_the_body_is_read(
    client: FlaskClient, instance: Instance, values: list[str]
) -> None:
    rid = f"gz-unsupported-{len(values)}-" + re.sub(r"[^A-Za-z0-9]+", "-", "+".join(values))
    headers = [(name, value) for name, value in instance.headers("alice").items()]
    headers += [("X-Request-Id", rid), *[("Content-Encoding", value) for value in values]]
    answer = client.post(PREDICT, data=gzip.compress(GOOD), headers=headers,
                         content_type="application/json")  # fmt: skip
    assert answer.status_code == 415
    assert answer.headers["Accept-Encoding"] == "gzip, deflate"
    assert answer.json["error"].startswith("unsupported Content-Encoding ")
    event = audited(instance, rid)
    assert (event.http_status, event.decision) == (415, "error")
    assert event.reason_code == "unsupported_encoding"
    assert event.body_sha256 is None  # refused by its headers: its body was never read


@pytest.mark.parametrize("path", [INFER, PREDICT])
def test_the_coding_is_looked_at_only_for_a_caller_allowed_to_proceed(
    client: FlaskClient, instance: Instance, path: str
) -> None:
    """An invisible model is a 404 whatever the coding, and no token is a 401."""
    hidden = path.replace("multi", "secret").replace("digits", "secret")
    answer = send(client, instance, hidden, b"garbage", "gz-hidden" + path[:3].replace("/", "-"),
                  Content_Encoding="br")  # fmt: skip
    assert answer.status_code == 404
    anonymous = client.post(path, data=b"garbage", headers={"Content-Encoding": "br"})
    assert anonymous.status_code == 401


# -- over real HTTP, under gunicorn -----------------------------------------------------------


@pytest.fixture(scope="module")
def url(instance: Instance) -> Iterator[str]:
    with server(instance, "--workers", "2", "--threads", "4", "--preload", "multi") as served:
        yield served.url


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_sends_compressed_requests(
    url: str, instance: Instance, algorithm: str
) -> None:
    import tritonclient.http as triton

    headers = instance.headers("alice")
    want = models().predict("multi", [A, B])
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        for binary in (False, True):
            inputs = [triton.InferInput("a", list(A.shape), "FP32"),
                      triton.InferInput("b", list(B.shape), "FP32")]  # fmt: skip
            inputs[0].set_data_from_numpy(A, binary_data=binary)
            inputs[1].set_data_from_numpy(B, binary_data=binary)
            outputs = [triton.InferRequestedOutput(name, binary_data=binary)
                       for name in ("score", "gate")]  # fmt: skip
            rid = f"triton-{algorithm}-{binary}"
            result = client.infer(
                "multi", inputs, outputs=outputs, headers={**headers, "X-Request-Id": rid},
                request_id=rid, request_compression_algorithm=algorithm,
                # Asked for, not given: the answer comes uncompressed, which the client reads.
                response_compression_algorithm=algorithm,
            )  # fmt: skip
            close(result.as_numpy("score"), want["score"])
            close(result.as_numpy("gate"), want["gate"])
            assert result.get_response()["id"] == rid
            event = audited(instance, rid)
            assert (event.http_status, event.decision, event.rows) == (200, "allow", 3)
    finally:
        client.close()


def test_a_compression_bomb_over_http_is_a_413_and_the_server_keeps_serving(
    url: str, instance: Instance
) -> None:
    bomb = gzip.compress(b"\0" * 50_000_000, 9)  # 49 KB: within the server's 64 KiB limit
    headers = instance.headers("alice", **{"Content-Encoding": "gzip", "X-Request-Id": "gz-boom"})
    status, _, body = call(url, "POST", INFER, headers=headers, body=bomb)
    assert status == 413 and b"decoded (Content-Encoding: gzip)" in body
    assert audited(instance, "gz-boom").reason_code == "too_large"
    status, answer_headers, body = call(
        url, "POST", INFER, headers=instance.headers("alice", **{"Content-Encoding": "br"}),
        body=b"\x0b\x02\x80{}\x03",
    )  # fmt: skip
    assert status == 415 and answer_headers["Accept-Encoding"] == "gzip, deflate", body
    document = {
        "inputs": [
            {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
            {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [4, 5]},
        ]
    }
    plain = json.dumps(document).encode()
    status, _, body = call(
        url,
        "POST",
        INFER,
        body=gzip.compress(plain),
        headers=instance.headers("alice", **{"Content-Encoding": "gzip"}),
    )
    assert status == 200, body
