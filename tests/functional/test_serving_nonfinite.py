"""NaN and ±Infinity on SQLite and PostgreSQL, through the Flask app: accepted for float inputs
as TF Serving accepts them (its JSON `NaN`, `Infinity`, `-Infinity` tokens, on both APIs), and
refused per model where an admin's allow rule says `finite_inputs: true`, with the reason in
the audit event; the rule is stored (migration 0009), read from policy files, granted and
explained from the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from secure_maas.cli import cli as command
from secure_maas.db.session import session_factory, session_scope
from secure_maas.policy import grants
from secure_maas.policy.files import load
from secure_maas.policy.rules import Rule
from tests.functional.serving_support import Instance, by_request, prepared

ROW = b'{"instances": [[NaN, Infinity, -Infinity, 0.5]]}'
COLUMNS = b'{"inputs": [[0.1, 0.2, NaN, 0.4], [1, 2, 3, 4]]}'
FINITE = b'{"instances": [[0.1, 0.2, 0.3, 0.4]]}'
OIP = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [NaN, 1, 2, 3]}]}'
ANALYST = ["model:predict", "model:metadata", "model:list"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    """The serving instance, plus dave allowed `digits` with finite inputs only."""
    for made in prepared(request, tmp_path_factory, "nonfinite"):
        with session_scope(session_factory(made.engine)) as session:
            rule = Rule("allow", "user:dave", ANALYST, model="digits", finite_inputs=True)
            grants.grant(session, rule, actor="tests")
        yield made


def send(client: FlaskClient, instance: Instance, who: str, path: str, body: bytes, rid: str):
    headers = {**instance.headers(who), "X-Request-Id": rid, "Content-Type": "application/json"}
    return client.post(path, data=body, headers=headers)


def test_nan_and_infinity_are_accepted_for_float_inputs(
    client: FlaskClient, instance: Instance
) -> None:
    for index, (path, body) in enumerate(
        [
            ("/v1/models/digits:predict", ROW),
            ("/v1/models/digits:predict", COLUMNS),
            ("/v2/models/digits/infer", OIP),
        ]
    ):
        answer = send(client, instance, "alice", path, body, f"nonfinite-ok-{index}")
        assert answer.status_code == 200, answer.get_data(as_text=True)
        document = json.loads(answer.get_data(as_text=True))  # NaN outputs come back as NaN
        assert document
    # A row without non-finite values still computes finite outputs.
    finite = send(client, instance, "alice", "/v1/models/digits:predict", FINITE, "nf-finite")
    assert all(math.isfinite(v) for v in finite.json["predictions"][0])
    # A literal too large for a double is not Infinity: it is refused, as TF Serving does.
    huge = b'{"instances": [[1e999, 1, 2, 3]]}'
    refused = send(client, instance, "alice", "/v1/models/digits:predict", huge, "nf-huge")
    assert refused.status_code == 400 and "too large for a double" in refused.json["error"]


def test_a_finite_inputs_rule_refuses_non_finite_input_with_its_reason(
    client: FlaskClient, instance: Instance
) -> None:
    ok = send(client, instance, "dave", "/v1/models/digits:predict", FINITE, "nf-dave-finite")
    assert ok.status_code == 200
    for index, (path, body) in enumerate(
        [
            ("/v1/models/digits:predict", ROW),
            ("/v1/models/digits:predict", COLUMNS),
            ("/v2/models/digits/infer", OIP),
        ]
    ):
        rid = f"nf-dave-{index}"
        answer = send(client, instance, "dave", path, body, rid)
        assert (answer.status_code, answer.json) == (403, {"error": "permission denied"})
        [event] = by_request(instance.engine, {rid})[rid]
        assert (event.decision, event.http_status, event.rows) == ("deny", 403, event.rows)
        assert "finite_inputs: the request holds NaN or Infinity" in (event.reason or "")
        assert event.body_sha256 is not None  # decided on the body, which was read


def test_finite_inputs_in_policy_files_cli_and_explain(instance: Instance, tmp_path: Path) -> None:
    runner = CliRunner()
    env = instance.env()

    def cli(*args: str) -> str:
        result = runner.invoke(command, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    granted = cli("policy", "grant", "--subject", "user:eve", "--model", "multi",
                  "--action", "model:predict", "--finite-inputs")  # fmt: skip
    assert "finite_inputs=true" in granted
    exported = cli("policy", "export")
    assert "finite_inputs: true" in exported
    explain = ("policy", "explain", "--subject", "eve", "--model", "multi",
               "--action", "model:predict", "--format", "json")  # fmt: skip
    explained = json.loads(cli(*explain, "--non-finite"))
    assert not explained["allowed"] and "finite_inputs" in explained["reason"]
    assert json.loads(cli(*explain))["allowed"]
    # A policy file states it too: the export reads back as the same rule.
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "rules.yaml").write_text(exported)
    rules = [rule for rule, _place in load([folder]).rules.values()]
    [eves] = [r for r in rules if r.subject == "user:eve"]
    assert eves.finite_inputs and eves.model == "multi"
    assert [r.finite_inputs for r in rules if r.subject == "user:dave" and r.model == "digits"] == [
        True
    ]
