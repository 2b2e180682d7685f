"""Triton's extensions: the model configuration (`GET /v2/models/NAME[/versions/V]/config`,
the config tritonclient expects, built from the signed signature and the batching settings),
statistics (`GET /v2/models[/NAME[/versions/V]]/stats`, `model:stats`, from the data plane) and
the model repository (`POST /v2/repository/index`, `model:list`; `.../load|unload`,
`model:control`), behind the same token, rules, visibility and audit as every model request;
on SQLite and PostgreSQL, through Flask's test client and through `tritonclient.http` against
gunicorn.

Besides the shared instance's rules: alice may read the statistics of digits* (`model:stats`,
not of multi, which she may otherwise use) and dave may load and unload multi
(`model:control`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from secure_maas.db.session import session_factory, session_scope
from secure_maas.policy import InvalidRule, Rule, grants
from tests.functional.serving_support import Instance, by_request, prepared, server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    for made in prepared(request, tmp_path_factory, "triton"):
        with session_scope(session_factory(made.engine)) as session:
            grants.grant(
                session, Rule("allow", "user:alice", ["model:stats"], model="digits*"), actor="t"
            )
            grants.grant(
                session, Rule("allow", "user:dave", ["model:control"], model="multi"), actor="t"
            )
        yield made


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


def post(
    client: FlaskClient, path: str, headers: dict[str, str], rid: str, body: object = None
) -> tuple[int, object]:
    answer = client.post(path, headers={**headers, "X-Request-Id": rid}, json=body)
    return answer.status_code, answer.json


def infer_digits(client: FlaskClient, instance: Instance, version: int, rows: int) -> None:
    body = {
        "inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * rows * 4}]
    }
    path = f"/v2/models/digits/versions/{version}/infer"
    answer = client.post(path, headers=instance.headers("alice"), json=body)
    assert answer.status_code == 200, answer.json


def test_the_server_lists_statistics_and_the_repository(client: FlaskClient) -> None:
    extensions = client.get("/v2").json["extensions"]
    assert {"statistics", "model_repository"} <= set(extensions)


def test_statistics_count_each_request_and_row(client: FlaskClient, instance: Instance) -> None:
    status, before = get(
        client, "/v2/models/digits/versions/2/stats", instance.headers("alice"), "s0"
    )
    assert status == 200 and isinstance(before, dict)
    [old] = before["model_stats"]
    for rows in (1, 2, 3):
        infer_digits(client, instance, 2, rows)
    status, after = get(
        client, "/v2/models/digits/versions/2/stats", instance.headers("alice"), "s1"
    )
    assert status == 200 and isinstance(after, dict)
    [new] = after["model_stats"]
    assert new["name"] == "digits" and new["version"] == "2"
    assert new["inference_count"] - old["inference_count"] == 6
    success = new["inference_stats"]["success"]
    assert success["count"] - old["inference_stats"]["success"]["count"] == 3
    assert success["ns"] > old["inference_stats"]["success"]["ns"]
    assert new["execution_count"] - old["execution_count"] == 3
    assert new["inference_stats"]["compute_infer"]["count"] >= 3
    assert sum(b["compute_infer"]["count"] for b in new["batch_stats"]) == new["execution_count"]
    assert new["last_inference"] > 0
    assert audited(instance, "s1") == ("model:stats", "allow", 200)


def test_statistics_show_only_what_the_caller_may_read(
    client: FlaskClient, instance: Instance
) -> None:
    alice = instance.headers("alice")
    status, every = get(client, "/v2/models/stats", alice, "stats-all")
    assert status == 200 and isinstance(every, dict)
    shown = {(s["name"], s["version"]) for s in every["model_stats"]}
    assert shown == {("digits", "1"), ("digits", "2")}  # not multi, digits_loose or secret
    assert audited(instance, "stats-all") == ("model:stats", "allow", 200)
    status, named = get(client, "/v2/models/digits/stats", alice, "stats-named")
    assert status == 200 and isinstance(named, dict)
    assert [s["version"] for s in named["model_stats"]] == ["1", "2"]
    status, _ = get(client, "/v2/models/multi/stats", alice, "stats-multi")
    assert status == 403  # she may list multi, not read its statistics
    assert audited(instance, "stats-multi") == ("model:stats", "deny", 403)
    status, _ = get(client, "/v2/models/digits/stats", {}, "stats-anon")
    assert status == 401 and audited(instance, "stats-anon")[1:] == ("deny", 401)
    status, nothing = get(client, "/v2/models/stats", instance.headers("eve"), "stats-eve")
    assert status == 200 and nothing == {"model_stats": []}


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/{}/stats",
        "/v2/models/{}/versions/1/stats",
    ],
)
def test_invisible_statistics_answer_exactly_as_missing_ones(
    client: FlaskClient, instance: Instance, path: str
) -> None:
    alice = {**instance.headers("alice"), "X-Request-Id": "same"}
    hidden = client.get(path.format("secret"), headers=alice)
    missing = client.get(path.format("nosuch"), headers=alice)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.get_data(as_text=True).replace("secret", "NAME") == missing.get_data(
        as_text=True
    ).replace("nosuch", "NAME")


def test_the_index_lists_what_the_caller_may_list(client: FlaskClient, instance: Instance) -> None:
    infer_digits(client, instance, 2, 1)  # version 2 is in memory from now on
    status, index = post(client, "/v2/repository/index", instance.headers("alice"), "index")
    assert status == 200 and isinstance(index, list)
    names = {(e["name"], e["version"]) for e in index}
    assert names == {("digits", "1"), ("digits", "2"), ("multi", "1"), ("listed", "1")}
    states = {(e["name"], e["version"]): e["state"] for e in index}
    assert states[("digits", "2")] == "READY"
    assert set(states.values()) <= {"READY", "UNAVAILABLE", "LOADING", "UNLOADING"}
    assert audited(instance, "index") == ("model:list", "allow", 200)
    status, ready = post(
        client, "/v2/repository/index", instance.headers("alice"), "ready", {"ready": True}
    )
    assert status == 200 and isinstance(ready, list)
    assert ("digits", "2") in {(e["name"], e["version"]) for e in ready}
    assert all(e["state"] == "READY" for e in ready)
    status, _ = post(client, "/v2/repository/index", instance.headers("eve"), "index-eve")
    assert status == 200 and _ == []
    status, _ = post(client, "/v2/repository/index", {}, "index-anon")
    assert status == 401 and audited(instance, "index-anon")[1:] == ("deny", 401)
    status, bad = post(
        client, "/v2/repository/index", instance.headers("alice"), "bad", {"ready": 1}
    )
    assert status == 400, bad


def test_load_and_unload_need_model_control(client: FlaskClient, instance: Instance) -> None:
    dave = instance.headers("dave")
    status, answer = post(client, "/v2/repository/models/multi/load", dave, "load")
    assert status == 200, answer
    assert audited(instance, "load") == ("model:control", "allow", 200)
    status, index = post(client, "/v2/repository/index", dave, "dave-index")
    assert (
        isinstance(index, list)
        and {"name": "multi", "version": "1", "state": "READY", "reason": ""} in index
    )
    status, answer = post(client, "/v2/repository/models/multi/unload", dave, "unload")
    assert status == 200, answer
    assert audited(instance, "unload") == ("model:control", "allow", 200)
    status, index = post(client, "/v2/repository/index", dave, "dave-index-2")
    assert isinstance(index, list)
    [multi] = [e for e in index if e["name"] == "multi"]
    assert multi["state"] == "UNAVAILABLE" and multi["reason"] == "unloaded"
    # alice has every other action on digits and multi: none of them is model:control
    status, _ = post(
        client, "/v2/repository/models/multi/load", instance.headers("alice"), "a-load"
    )
    assert status == 403 and audited(instance, "a-load") == ("model:control", "deny", 403)
    status, _ = post(client, "/v2/repository/models/digits/unload", dave, "d-unload")
    assert status == 404 and audited(instance, "d-unload") == ("model:control", "deny", 404)
    status, _ = post(client, "/v2/repository/models/multi/load", {}, "anon-load")
    assert status == 401 and audited(instance, "anon-load")[1:] == ("deny", 401)
    status, _ = post(
        client, "/v2/repository/models/multi/load", dave, "files",
        {"parameters": {"file:1/model.savedmodel": "AAAA"}},
    )  # fmt: skip
    assert status == 400  # a model comes from the sealed store only


def test_no_wildcard_grants_model_control() -> None:
    with pytest.raises(InvalidRule):
        Rule("allow", "*", ["*"])


def test_an_unknown_repository_path_is_audited(client: FlaskClient, instance: Instance) -> None:
    answer = client.get(
        "/v2/repository/index", headers={**instance.headers("alice"), "X-Request-Id": "get-index"}
    )
    assert answer.status_code == 404
    assert audited(instance, "get-index")[1:] == ("deny", 404)


def test_tritonclient_reads_statistics_of_every_worker_and_controls_models(
    instance: Instance,
) -> None:
    import numpy as np
    import tritonclient.http as triton

    alice, dave = instance.headers("alice"), instance.headers("dave")
    with server(instance, "--workers", "2", "--threads", "2") as served:
        url = served.url.removeprefix("http://")
        clients = [triton.InferenceServerClient(url=url, concurrency=1) for _ in range(4)]
        try:
            first = clients[0].get_inference_statistics("digits", "2", headers=alice)
            [old] = first["model_stats"]
            for _ in range(12):  # a connection each: both workers take some of them
                inputs = [triton.InferInput("x", [2, 4], "FP32")]
                inputs[0].set_data_from_numpy(np.full((2, 4), 0.25, np.float32))
                fresh = triton.InferenceServerClient(url=url)
                try:
                    fresh.infer("digits", inputs, model_version="2", headers=alice)
                finally:
                    fresh.close()
            seen = []
            for client in clients:  # whichever worker answers, the counts are the instance's
                [new] = client.get_inference_statistics("digits", "2", headers=alice)["model_stats"]
                seen.append(new["inference_stats"]["success"]["count"])
                assert new["inference_count"] - old["inference_count"] == 24
            old_success = old["inference_stats"]["success"]["count"]
            assert seen == [old_success + 12] * len(clients)
            with pytest.raises(triton.InferenceServerException) as hidden:
                clients[1].get_inference_statistics("secret", headers=alice)
            assert "Request for unknown model: 'secret' is not found" in str(hidden.value)
            index = clients[2].get_model_repository_index(headers=dave)
            assert {"name": "multi", "version": "1"} in [
                {"name": e["name"], "version": e["version"]} for e in index
            ]
            clients[2].load_model("multi", headers=dave)
            assert clients[3].is_model_ready("multi", headers=dave)
            clients[3].unload_model("multi", headers=dave)
            with pytest.raises(triton.InferenceServerException):
                clients[3].load_model("multi", headers=alice)
        finally:
            for client in clients:
                client.close()
