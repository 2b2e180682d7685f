"""Where `/openapi.json` types a parameter, the server agrees with it at the boundary: a value
valid against the document's own schema is taken, one outside it refused with a status the
document names. Each case is one that schemathesis's `--checks all` run found (a schema-valid
request refused, or a schema-violating one taken): a TF Serving name or label with a colon, a
version past an int64, a Content-Encoding the server refuses, and audit filters the document
typed as any string. And a served answer validates against the document with schemathesis's
own response check (a classify answer did not: `prefixItems` in a response schema)."""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask.testing import FlaskClient
from jsonschema_rs import Draft202012Validator
from schemathesis.specs.openapi.checks import response_schema_conformance

from secure_maas.serving.openapi import document
from tests.functional.serving_support import Instance, prepared


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "openapi-exact")


class Parameter:
    """A parameter's schema, taking a value as it is on the wire (a query's integer is text)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.integer = schema.get("type") == "integer"
        self.validator = Draft202012Validator(schema, validate_formats=True)

    def is_valid(self, value: str) -> bool:
        typed: object = value
        if self.integer and re.fullmatch("-?[0-9]+", value):
            typed = int(value)
        return bool(self.validator.is_valid(typed))


def parameter(path: str, method: str, name: str) -> Parameter:
    operation = document()["paths"][path][method]
    [found] = [p for p in operation["parameters"] if p["name"] == name]
    return Parameter(found["schema"])


def test_a_tf_serving_name_or_label_holds_no_colon_or_slash(
    client: FlaskClient, instance: Instance
) -> None:
    alice = instance.headers("alice")
    for name in ("name", "label"):
        schema = parameter("/v1/models/{name}/labels/{label}", "get", name)
        assert schema.is_valid("digits") and schema.is_valid("é x")
        assert not schema.is_valid("a:b") and not schema.is_valid("a/b")
    assert client.get("/v1/models/a:b/labels/stable", headers=alice).status_code == 400
    assert client.get("/v1/models/digits/labels/a:b", headers=alice).status_code == 400
    assert client.get("/v1/models/é x/labels/stable", headers=alice).status_code == 404
    # Under /v2 a colon is part of a name like any other character: a 404, not malformed.
    assert parameter("/v2/models/{name}", "get", "name").is_valid("a:b")
    assert client.get("/v2/models/a:b", headers=alice).status_code == 404


def test_a_version_is_at_most_an_int64(client: FlaskClient, instance: Instance) -> None:
    alice = instance.headers("alice")
    schema = parameter("/v1/models/{name}/versions/{version}", "get", "version")
    for version in ("2", "0", "0009", "9223372036854775807", "0000000000000000002"):
        assert schema.is_valid(version), version
        answer = client.get(f"/v1/models/digits/versions/{version}", headers=alice)
        assert answer.status_code in (200, 404), (version, answer.json)
    for version in ("9223372036854775808", "99999999999999999999", "00000000000000000002", "x"):
        assert not schema.is_valid(version), version
        answer = client.get(f"/v1/models/digits/versions/{version}", headers=alice)
        assert answer.status_code == 400, (version, answer.json)


COMPRESS: dict[str, Any] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "identity": bytes,
    "": bytes,
}


def test_every_content_encoding_of_the_document_is_taken_and_no_other(
    client: FlaskClient, instance: Instance
) -> None:
    alice = {**instance.headers("alice"), "Content-Type": "application/json"}
    schema = parameter("/v2/repository/index", "post", "Content-Encoding")
    for coding, compress in COMPRESS.items():
        assert schema.is_valid(coding)
        answer = client.post(
            "/v2/repository/index",
            data=compress(b'{"ready": false}'),
            headers={**alice, "Content-Encoding": coding},
        )
        assert answer.status_code == 200, (coding, answer.json)
    for coding in ("br", "gzip, gzip", "compress"):
        assert not schema.is_valid(coding)
        answer = client.post(
            "/v2/repository/index", data=b"{}", headers={**alice, "Content-Encoding": coding}
        )
        assert answer.status_code == 415, (coding, answer.json)


#: (parameter, values valid against the document, values outside it)
AUDIT_QUERIES = [
    ("limit", ["1", "1000"], ["0", "1001", "x", "-1"]),
    ("after", ["0", "9223372036854775807"], ["-1", "9223372036854775808", "1.5"]),
    ("decision", ["allow", "deny", "error"], ["maybe", "DENY"]),
    (
        "since",
        ["1h", " 30 m", "0007d\n", "2026-11-28", "2026-11-28T10:00:00+05:30", "999999999s"],
        ["yesterday", "1y", "99999999999d", "2026-13-01", ""],
    ),
    # Text filters refuse control characters only: a no-break space or a zero-width space is
    # text (they were refused as "not printable", which no schema the document can hold says).
    ("actor", ["alice", "a\u00a0b", "\u200bx", "é" * 128], ["a\x01b", "\x7f", "a\x85", "x" * 129]),
    ("model", ["digits", "x" * 64], ["x" * 65, "\x00"]),
    ("action", ["model:predict", "\u2028"], ["\x1b[31m"]),
]


@pytest.mark.parametrize(("name", "good", "bad"), AUDIT_QUERIES, ids=[q[0] for q in AUDIT_QUERIES])
def test_audit_filters_valid_against_the_document_are_taken(
    client: FlaskClient, instance: Instance, name: str, good: list[str], bad: list[str]
) -> None:
    bob = instance.headers("bob")
    schema = parameter("/admin/audit", "get", name)
    for value in good:
        assert schema.is_valid(value), (name, value)
        answer = client.get("/admin/audit", query_string={name: value}, headers=bob)
        assert answer.status_code == 200, (name, value, answer.json)
    for value in bad:
        assert not schema.is_valid(value), (name, value)
        answer = client.get("/admin/audit", query_string={name: value}, headers=bob)
        assert answer.status_code == 400, (name, value, answer.json)


def test_a_served_classify_answer_validates_against_the_document(
    client: FlaskClient, instance: Instance
) -> None:
    """schemathesis 4.32 refuses a response schema holding `prefixItems` (its issues 3842 and
    4099), which the [label, score] pair of ClassifyResponse held: any 200 of :classify then
    failed the fuzz as an invalid document."""
    generic = schemathesis.openapi.from_dict(document(), config=schemathesis.Config())
    operation = generic["/v1/models/{name}:classify"]["POST"]
    body = {"examples": [{"x": [0.5, 1.0, -2.0, 3.0]}]}
    case = operation.Case(
        path_parameters={"name": "digits"}, body=body, media_type="application/json"
    )
    answer = client.post("/v1/models/digits:classify", json=body, headers=instance.headers("alice"))
    assert answer.status_code == 200, answer.json
    case.validate_response(answer, checks=[response_schema_conformance])
