"""Real model states on SQLite and PostgreSQL, through the Flask app and over real gunicorn (the
model process answers them over its socket): TF Serving's status says START before a version
is loaded, starts loading it so that a client polling until AVAILABLE gets there, and END with
an opaque error for an artifact that cannot be opened; `/v1/models` and OIP readiness tell the
same truth."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from secure_maas.registry.store import ArtifactStore
from tests.functional.serving_support import Instance, by_request, events, prepared, server

REFUSED = {"error_code": "UNAVAILABLE", "error_message": "the model version could not be loaded"}
OK = {"error_code": "OK", "error_message": ""}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    """The serving instance with `multi`'s artifact bit-flipped: it can never be loaded."""
    for made in prepared(request, tmp_path_factory, "states"):
        path = ArtifactStore(made.settings.store_dir).path("multi", 1)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        yield made


def poll(read: Callable[[], dict[str, Any]], until: Callable[[dict[str, Any]], bool]) -> Any:
    """`read()` again until `until` holds of it (a client polling status); the last answer."""
    deadline = time.monotonic() + 120
    while True:
        answer = read()
        if until(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def states(answer: dict[str, Any]) -> dict[str, str]:
    return {s["version"]: s["state"] for s in answer["model_version_status"]}


def test_status_starts_a_load_and_converges_to_available(app: Flask, instance: Instance) -> None:
    client = app.test_client()
    alice = {**instance.headers("alice"), "X-Request-Id": "states-first-status"}
    listed = client.get("/v1/models", headers=alice).json
    digits = next(m for m in listed["models"] if m["name"] == "digits")
    assert {v["version"]: v["state"] for v in digits["versions"]} == {2: "START", 1: "START"}

    first = client.get("/v1/models/digits", headers=alice).json
    # The version the bare name serves starts loading; the other is reported as it is.
    assert states(first) == {"2": "LOADING", "1": "START"}
    assert all(s["status"] == OK for s in first["model_version_status"])
    final = poll(
        lambda: client.get("/v1/models/digits", headers=instance.headers("alice")).json,
        lambda answer: states(answer)["2"] != "LOADING",
    )
    assert states(final) == {"2": "AVAILABLE", "1": "START"}
    # The load is audited, with the id of the status request that caused it.
    [load] = events(instance.engine, action="model:load", model="digits")
    assert (load.model_version, load.request_id, load.decision) == (
        2,
        "states-first-status",
        "allow",
    )
    listed = client.get("/v1/models", headers=instance.headers("alice")).json
    digits = next(m for m in listed["models"] if m["name"] == "digits")
    assert {v["version"]: v["state"] for v in digits["versions"]} == {2: "AVAILABLE", 1: "START"}
    ready = client.get("/v2/models/digits/versions/2/ready", headers=instance.headers("alice"))
    assert ready.status_code == 200 and ready.json["ready"] is True


def test_a_refused_artifact_is_end_with_an_opaque_error(app: Flask, instance: Instance) -> None:
    client = app.test_client()
    alice = instance.headers("alice")
    answer = poll(
        lambda: client.get("/v1/models/multi/versions/1", headers=alice).json,
        lambda answer: states(answer)["1"] not in ("START", "LOADING"),
    )
    assert answer == {"model_version_status": [{"version": "1", "state": "END", "status": REFUSED}]}
    # Its predict is the 503 it always was, and OIP readiness says the same: not ready.
    predict = client.post("/v1/models/multi:predict", json={"instances": [{"a": [1, 2, 3],
                          "b": [1, 2]}]}, headers=alice)  # fmt: skip
    assert predict.status_code == 503
    ready = client.get("/v2/models/multi/ready", headers=alice)
    assert ready.status_code == 503 and ready.json == {"name": "multi", "ready": False}
    listed = client.get("/v1/models", headers=alice).json
    multi = next(m for m in listed["models"] if m["name"] == "multi")
    assert [v["state"] for v in multi["versions"]] == ["END"]
    # The reason is for auditors only.
    refusals = [e for e in events(instance.engine, action="model:load", model="multi")]
    assert refusals and all(e.reason_code == "model.refused" for e in refusals)


def test_status_of_an_invisible_model_loads_nothing(app: Flask, instance: Instance) -> None:
    client = app.test_client()
    headers = {**instance.headers("eve"), "X-Request-Id": "states-invisible"}
    hidden = client.get("/v1/models/secret/versions/1", headers=headers)
    missing = client.get("/v1/models/nosuch/versions/1", headers=headers)
    assert hidden.status_code == missing.status_code == 404
    time.sleep(0.2)
    assert events(instance.engine, action="model:load", model="secret") == []
    found = by_request(instance.engine, {"states-invisible"})["states-invisible"]
    assert [(e.model, e.decision) for e in found] == [("secret", "deny"), ("nosuch", "deny")]


def fetch(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            found: dict[str, Any] = json.load(answer)
    except urllib.error.HTTPError as error:
        found = json.load(error)
    return found


def test_states_come_from_the_model_process_under_gunicorn(instance: Instance) -> None:
    token = instance.tokens["alice"]
    with server(instance, "--workers", "2", "--threads", "2") as served:
        url = served.url + "/v1/models/digits/labels/stable"
        first = fetch(url, token)
        assert states(first)["2"] in ("LOADING", "AVAILABLE")  # loading, in the model process
        final = poll(lambda: fetch(url, token), lambda a: states(a)["2"] == "AVAILABLE")
        assert final["model_version_status"] == [{"version": "2", "state": "AVAILABLE",
                                                  "status": OK}]  # fmt: skip
        # Every worker sees it: the state lives where the model does.
        for _ in range(4):
            assert states(fetch(url, token)) == {"2": "AVAILABLE"}
        refused = poll(
            lambda: fetch(served.url + "/v1/models/multi", token),
            lambda a: states(a)["1"] not in ("START", "LOADING"),
        )
        assert refused["model_version_status"] == [{"version": "1", "state": "END",
                                                    "status": REFUSED}]  # fmt: skip
        listed = fetch(served.url + "/v1/models", token)
        found = {m["name"]: {v["version"]: v["state"] for v in m["versions"]}
                 for m in listed["models"]}  # fmt: skip
        assert found["digits"] == {2: "AVAILABLE", 1: "START"} and found["multi"] == {1: "END"}
