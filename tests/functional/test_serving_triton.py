"""Triton's model configuration extension, `GET /v2/models/NAME[/versions/V]/config`: the
config tritonclient expects, built from the signed signature and the batching settings, behind
the same token, rules, visibility and audit as every model request; on SQLite and PostgreSQL,
through Flask's test client and through `tritonclient.http` against gunicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from secure_maas.serving.app import close_app, create_app
from tests.functional.serving_support import Instance, by_request, prepared, server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "triton")


@pytest.fixture
def app(instance: Instance) -> Iterator[Flask]:
    made = create_app(instance.settings)
    yield made
    close_app(made)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def get(client: FlaskClient, path: str, headers: dict[str, str], rid: str) -> tuple[int, object]:
    answer = client.get(path, headers={**headers, "X-Request-Id": rid})
    return answer.status_code, answer.json


def audited(instance: Instance, rid: str) -> tuple[str, str, int | None]:
    [event] = by_request(instance.engine, {rid})[rid]
    return event.action, event.decision, event.http_status


@pytest.mark.parametrize("model", ["digits", "multi"])
def test_the_config_is_the_signature_with_the_batch_left_out(
    client: FlaskClient, instance: Instance, model: str
) -> None:
    alice = instance.headers("alice")
    status, config = get(client, f"/v2/models/{model}/config", alice, f"config-{model}")
    assert status == 200, config
    _, metadata = get(client, f"/v2/models/{model}", alice, f"metadata-{model}")
    assert isinstance(config, dict) and isinstance(metadata, dict)
    settings = instance.settings
    assert config["name"] == model and config["platform"] == metadata["platform"]
    assert config["max_batch_size"] == settings.batch_max_size
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [settings.batch_max_size],
        "max_queue_delay_microseconds": settings.batch_max_wait_us,
    }
    for key, side in (("input", "inputs"), ("output", "outputs")):
        want = [
            {"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": t["shape"][1:]}
            for t in metadata[side]
        ]
        assert config[key] == want
    assert audited(instance, f"config-{model}") == ("model:metadata", "allow", 200)


def test_the_server_lists_the_extension(client: FlaskClient) -> None:
    assert "model_configuration" in client.get("/v2").json["extensions"]


def test_a_version_by_number_and_a_version_that_is_not(
    client: FlaskClient, instance: Instance
) -> None:
    alice = instance.headers("alice")
    status, config = get(client, "/v2/models/digits/versions/1/config", alice, "config-v1")
    assert status == 200 and isinstance(config, dict) and config["name"] == "digits"
    status, answer = get(client, "/v2/models/digits/versions/9/config", alice, "config-v9")
    assert status == 404
    assert answer == {"error": "Request for unknown model: 'digits' version 9 is not found"}
    assert audited(instance, "config-v9") == ("model:metadata", "deny", 404)


def test_an_invisible_model_answers_exactly_as_a_missing_one(
    client: FlaskClient, instance: Instance
) -> None:
    eve = instance.headers("eve")
    hidden = client.get("/v2/models/digits/config", headers={**eve, "X-Request-Id": "same"})
    missing = client.get("/v2/models/nosuch/config", headers={**eve, "X-Request-Id": "same"})
    assert hidden.status_code == missing.status_code == 404
    assert hidden.get_data(as_text=True).replace("digits", "NAME") == missing.get_data(
        as_text=True
    ).replace("nosuch", "NAME")
    assert set(hidden.headers.keys()) == set(missing.headers.keys())


def test_listing_is_not_reading_and_a_token_is_needed(
    client: FlaskClient, instance: Instance
) -> None:
    status, _ = get(client, "/v2/models/listed/config", instance.headers("alice"), "listed")
    assert status == 403
    assert audited(instance, "listed") == ("model:metadata", "deny", 403)
    status, _ = get(client, "/v2/models/digits/config", {}, "anonymous")
    assert status == 401
    assert audited(instance, "anonymous")[1:] == ("deny", 401)


def test_tritonclient_reads_the_config_through_gunicorn(instance: Instance) -> None:
    import tritonclient.http as triton

    headers = instance.headers("alice")
    with server(instance, "--workers", "1", "--threads", "2") as served:
        client = triton.InferenceServerClient(url=served.url.removeprefix("http://"))
        try:
            config = client.get_model_config("multi", headers=headers)
            assert config["name"] == "multi"
            assert [t["name"] for t in config["input"]] == ["a", "b"]
            assert all(t["data_type"] == "TYPE_FP32" for t in config["input"])
            versioned = client.get_model_config("digits", model_version="2", headers=headers)
            assert versioned["max_batch_size"] == instance.settings.batch_max_size
            with pytest.raises(triton.InferenceServerException) as hidden:
                client.get_model_config("secret", headers=headers)
            assert "Request for unknown model: 'secret' is not found" in str(hidden.value)
        finally:
            client.close()
