"""Fuzzing, over HTTP against a real server and in process against the
parsers of untrusted files.

Over HTTP (`secure-maas serve --workers 2 --threads 4`, gunicorn, PostgreSQL):
- schemathesis generates requests for every operation of the service's own `/openapi.json`,
  schema-valid (positive) and schema-violating (negative), with path parameters either
  generated or drawn from the instance's real names (so requests reach the body parsers and
  the access policy, not only 404), with a valid token (alice; bob, the auditor, for
  /admin/*) and with none, and a body whose Content-Encoding names a coding is sent in that
  coding. Every response passes every check schemathesis has (`--checks all`): no 5xx, a
  documented status, the documented content type, headers and body schema, authentication
  enforced (`ignored_auth` re-sends a successful request without and with a bad token), a
  schema-violating request refused (`negative_data_rejection`) and a schema-valid one taken
  (`positive_data_acceptance`: 2xx, or 401, 403, 404, 409, 429). Without a token every guarded
  operation answers 401, every open one 200.
- `/openapi.json` cannot say what a model's body holds, so its positive requests with a body
  name models alice cannot reach a body of (listed only, invisible, missing); the models she
  may call, digits and multi, by name and by version, are fuzzed through their own documents
  (`/v2/models/NAME[/versions/V]/openapi.json`), whose bodies are exact for the signature, with
  every check too: positive cases reach the model and are served (200), negative ones are
  400s. A test first shows that these checks do catch a response that breaks the document and
  a schema-valid body a model refuses, so a clean run means something.
- Hypothesis generates predict and infer bodies that the OpenAPI document cannot describe:
  arbitrary JSON in `instances`/`inputs`, OIP tensors with any shape, datatype and data, binary
  tails with any `Inference-Header-Content-Length`, any content type, raw bytes. The answer
  is always one the README documents for an allowed caller (200, 400, 403 over max_rows, 413,
  415), an error is `{"error": text}` with a request id, and the audit chain is intact after.

In process, bounded:
- random bytes, splices, truncations and re-framed artifacts (every length prefix right, a JSON
  field of the header, keyblock or trailer changed, added or removed, the body changed) given
  to the registry's `open_version`/`verify_version` with the real keyring and registry row
  raise `InvalidArtifact` with its opaque message, and nothing else;
- random bytes, random text, generated YAML (tags, anchors, flow collections, every policy
  field with good and bad values) and mutations of the shipped `policies/access.yaml` given to
  `policy.files.load` either load or raise `PolicyFileError` whose every problem reads
  `file:line: reason`, and nothing else.
"""

from __future__ import annotations

import base64
import copy
import gzip
import io
import json
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from jsonschema_rs import Draft202012Validator
from schemathesis import Case, CheckFunction, GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import Response
from schemathesis.schemas import APIOperation, BaseSchema
from sqlalchemy.orm import Session, joinedload

from secure_maas.crypto.framing import MAGIC, InvalidArtifact, encode_block, read_prelude
from secure_maas.keys import Keyring
from secure_maas.policy.files import RULE_FIELDS, TOP_FIELDS, PolicyDocument, PolicyFileError, load
from secure_maas.registry.artifacts import open_version, verify_version
from secure_maas.registry.models import Model, ModelVersion
from secure_maas.registry.store import ArtifactStore
from secure_maas.serving.encodings import (
    CONTENT_ENCODING,
    Coding,
    EncodingRefused,
    content_coding,
)
from secure_maas.serving.formats.oip import DATATYPES, HEADER_LENGTH
from secure_maas.serving.openapi import document
from tests.functional.serving_support import ROOT, Instance, Served, call, server
from tests.system.conftest import Report
from tests.system.support import GUNICORN, audit_intact

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

WITH_TOKEN_EXAMPLES = 20  # per operation and generation mode
WITHOUT_TOKEN_EXAMPLES = 8
MODEL_EXAMPLES = 15  # per operation of a model's document and generation mode
BODY_EXAMPLES = 150
ARTIFACT_EXAMPLES = 300
POLICY_EXAMPLES = 150
#: Real names of the instance, so that generated requests reach past the 404 of an unknown one.
KNOWN = {
    "name": ["digits", "multi", "listed", "secret", "digits_loose", "nosuch"],
    "version": ["1", "2", "9", "x"],
    "label": ["stable", "canary", "gold"],
}
#: Names whose requests never reach a body for alice: listed only, invisible, missing.
UNREACHABLE = ["listed", "secret", "digits_loose", "nosuch"]
#: What alice may call, each fuzzed through its own document: (name, version or None).
ALICE_MODELS = [("digits", None), ("digits", 1), ("digits", 2), ("multi", None), ("multi", 1)]
#: Every check schemathesis has (`--checks all`; max_response_time is a timing, not a check).
load_all_checks()
ALL_CHECKS = cast("list[CheckFunction]", CHECKS.get_all())
Sent = tuple[str, bytes, dict[str, str]]  # a request: path, body, headers
Operation = APIOperation[Any, Any, Any, Any]


def quick(examples: int, **extra: Any) -> settings:
    """Bounded hypothesis settings: no deadline (a loaded machine), no example database."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        **extra,
    )


@pytest.fixture(scope="module")
def served(pg_instance: Instance) -> Iterator[Served]:
    with server(pg_instance, *GUNICORN, "--preload", "digits", "--preload", "multi") as running:
        yield running


#: With a token, the caller's real Authorization header is sent, never a generated one: a
#: negative case whose only fault were its generated token would be sent valid (and be taken).
#: `ignored_auth` still re-sends each success without a token and with a bad one.
WITH_TOKEN = {"generation": {"with-security-parameters": False}}


@pytest.fixture(scope="module")
def schema(served: Served) -> BaseSchema:
    return schemathesis.openapi.from_url(served.url + "/openapi.json", config=schemathesis.Config())


@pytest.fixture(scope="module")
def token_schema(served: Served) -> BaseSchema:
    config = schemathesis.Config.from_dict(WITH_TOKEN)
    return schemathesis.openapi.from_url(served.url + "/openapi.json", config=config)


def operations(schema: BaseSchema) -> list[Operation]:
    found: list[Operation] = []
    for result in schema.get_all_operations():
        found.append(result.ok())  # type: ignore[union-attr]  # an Err raises here: wanted
    return found


def _fits(operation: Operation, name: str, value: str) -> bool:
    """Whether `value` is valid for path parameter `name` by the document's own schema."""
    definition = operation.definition.raw
    [param] = [p for p in definition["parameters"] if p["in"] == "path" and p["name"] == name]
    return Draft202012Validator(param["schema"]).is_valid(value)


def cases(operation: Operation, mode: GenerationMode) -> st.SearchStrategy[Case[Any]]:
    """Cases of `operation`: path parameters generated, or drawn from the real names.

    A positive case takes only real values its schema allows, and a positive request with a
    body never names a model alice may call: there a body valid against this generic document
    need not fit the model (a 400); each model's own document describes its bodies exactly
    and is fuzzed with real names (`test_schemathesis_with_each_models_own_document`)."""
    generated = operation.as_strategy(mode)
    names = re.findall(r"{(\w+)}", operation.path)
    if not names:
        return generated
    known: dict[str, list[str]] = {}
    for name in names:
        values = KNOWN[name]
        if mode is GenerationMode.POSITIVE:
            if name == "name" and operation.method.upper() == "POST":
                values = UNREACHABLE
            values = [value for value in values if _fits(operation, name, value)]
        known[name] = values
    drawn = st.fixed_dictionaries({name: st.sampled_from(values) for name, values in known.items()})
    return generated | drawn.flatmap(
        lambda values: operation.as_strategy(mode, path_parameters=values)
    )


@dataclass
class Fuzzed:
    """What a schemathesis run sent and got: (operation, status) counts and the failures."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def of(self, label: str) -> set[int]:
        return {status for (op, status) in self.statuses if op == label}

    def by_status(self) -> dict[int, int]:
        counts: Counter[int] = Counter()
        for (_, status), count in self.statuses.items():
            counts[status] += count
        return dict(sorted(counts.items()))

    def add(self, other: Fuzzed) -> None:
        self.statuses.update(other.statuses)
        self.failures.extend(other.failures)


def send(case: Case[Any], url: str, headers: dict[str, str]) -> Response:
    """Send `case` as a client would: a body whose Content-Encoding names a coding is sent
    compressed with it (schemathesis sends the header but not the coding)."""
    kwargs = case.as_transport_kwargs(base_url=url, headers=headers)
    try:  # the coding the server will read the header as (any case, a list, empty elements)
        coding = content_coding([kwargs["headers"].get(CONTENT_ENCODING, "")])
    except EncodingRefused:
        coding = None  # sent as it is: the server refuses it with 415 before reading it
    if coding is not None:
        if "json" in kwargs:
            body = json.dumps(kwargs.pop("json")).encode()
        else:
            body = kwargs.pop("data", None) or b""
            body = body.encode() if isinstance(body, str) else body
        kwargs["data"] = COMPRESS[coding](body)
    return Response.from_requests(requests.request(**kwargs, timeout=30), verify=True)


COMPRESS: dict[Coding, Callable[[bytes], bytes]] = {
    Coding.GZIP: gzip.compress,
    Coding.DEFLATE: zlib.compress,
}


def fuzz_operation(
    url: str, operation: Operation, mode: GenerationMode, headers: dict[str, str],
    examples: int, found: Fuzzed,
) -> None:  # fmt: skip
    """`examples` cases of one operation in one mode, with every check; a failure is
    collected, not raised (nor shrunk), so that one run reports them all."""

    @quick(examples, phases=[Phase.explicit, Phase.generate])
    @given(case=cases(operation, mode))
    def run(case: Case[Any]) -> None:
        response = send(case, url, headers)
        found.statuses[(operation.label, response.status_code)] += 1
        try:
            case.validate_response(
                response,
                checks=ALL_CHECKS,
                headers=headers,
                transport_kwargs={"base_url": url, "headers": headers, "timeout": 30},
            )
        except FailureGroup as failure:
            found.failures.append(f"{mode.value} {operation.label}: {failure}"[:3000])

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing to negate: the operation has no input


def fuzz(url: str, chosen: list[Operation], headers: dict[str, str], examples: int) -> Fuzzed:
    """Every operation in `chosen`, positive then negative."""
    found = Fuzzed()
    for operation in chosen:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(url, operation, mode, headers, examples, found)
    return found


def bearer(instance: Instance, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {instance.tokens[who]}"}


def model_path(name: str, version: int | None) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "")


def test_the_fuzzed_document_is_the_services(served: Served, schema: BaseSchema) -> None:
    status, _, body = call(served.url, "GET", "/openapi.json")
    assert status == 200 and json.loads(body) == document()
    described = {f"{m.upper()} {p}" for p, methods in document()["paths"].items() for m in methods}
    # Every operation is fuzzed but the document's own (schemathesis skips the URL it read).
    assert {op.label for op in operations(schema)} == described - {"GET /openapi.json"}
    assert {check.__name__ for check in ALL_CHECKS} >= {
        "positive_data_acceptance", "negative_data_rejection", "ignored_auth",
        "response_schema_conformance", "not_a_server_error",
    }  # fmt: skip


def test_the_checks_catch_a_response_that_breaks_the_document(
    served: Served, pg_instance: Instance
) -> None:
    """A document whose Error holds an integer: the real 404 `{"error": "..."}` must fail."""
    wrong = document()
    wrong["components"]["schemas"]["Error"]["properties"]["error"] = {"type": "integer"}
    broken = schemathesis.openapi.from_dict(wrong, config=schemathesis.Config())
    operation = broken["/v1/models/{name}"]["GET"]
    case = operation.Case(path_parameters={"name": "nosuch"})
    headers = bearer(pg_instance, "alice")
    with pytest.raises(FailureGroup, match="Response violates schema"):
        case.call_and_validate(base_url=served.url, headers=headers, timeout=30)
    good = schemathesis.openapi.from_dict(document(), config=schemathesis.Config())
    case = good["/v1/models/{name}"]["GET"].Case(path_parameters={"name": "nosuch"})
    assert case.call_and_validate(base_url=served.url, headers=headers).status_code == 404


def test_the_checks_catch_a_valid_body_the_model_refuses(
    served: Served, pg_instance: Instance
) -> None:
    """positive_data_acceptance is live: bodies valid against the generic document's predict,
    sent to digits, are mostly refused (400: they do not fit its signature), and the check
    fails them; digits' own document does not take such a body, and one it takes is served."""
    headers = bearer(pg_instance, "alice")
    generic = schemathesis.openapi.from_dict(document(), config=schemathesis.Config())
    operation = generic["/v1/models/{name}:predict"]["POST"]
    found = Fuzzed()

    @quick(10, phases=[Phase.generate])
    @given(case=operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"name": "digits"}))
    def run(case: Case[Any]) -> None:
        response = send(case, served.url, headers)
        found.statuses[(operation.label, response.status_code)] += 1
        try:
            case.validate_response(response, checks=ALL_CHECKS, headers=headers)
        except FailureGroup as failure:
            found.failures.append(str(failure))

    run()
    assert 400 in found.of(operation.label)
    assert any("Schema-valid request rejected" in failure for failure in found.failures)
    status, _, body = call(served.url, "GET", "/v2/models/digits/openapi.json", headers=headers)
    assert status == 200
    exact = Draft202012Validator(json.loads(body)["components"]["schemas"]["PredictRequest"])
    assert not exact.is_valid({"instances": [[]]})
    assert not exact.is_valid({"instances": [[1, 2, 3]]})
    good = {"instances": [[0.5, 1, -2, 3e3]]}
    assert exact.is_valid(good)
    status, _, answer = call(
        served.url, "POST", "/v1/models/digits:predict", body=json.dumps(good).encode(),
        headers={**headers, "Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 200, answer


def test_schemathesis_with_a_token(
    served: Served, token_schema: BaseSchema, pg_instance: Instance, report: Report
) -> None:
    every = operations(token_schema)
    admin = [op for op in every if op.path.startswith("/admin/")]
    started = time.monotonic()
    alice = fuzz(served.url, every, bearer(pg_instance, "alice"), WITH_TOKEN_EXAMPLES)
    bob = fuzz(served.url, admin, bearer(pg_instance, "bob"), WITH_TOKEN_EXAMPLES)
    elapsed = time.monotonic() - started
    report.figure("fuzz_token_requests", alice.sent + bob.sent)
    report.note(
        "fuzz",
        f"schemathesis with a token: {alice.sent + bob.sent} requests over {len(every)} "
        f"operations in {elapsed:.0f} s, statuses {alice.by_status()} (alice), "
        f"{bob.by_status()} (bob)",
    )
    failures = alice.failures + bob.failures
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:10])
    # Not vacuous: the fuzz reached the models, the bodies, the policy and the audit log.
    assert {200, 400, 403, 404} <= set(alice.by_status())
    bodies = [op.label for op in every if op.method.upper() == "POST"]
    assert 400 in set().union(*(alice.of(label) for label in bodies))
    assert 200 in bob.of("GET /admin/audit/verify")
    assert 200 in bob.of("GET /admin/audit")


def test_schemathesis_with_each_models_own_document(
    served: Served, pg_instance: Instance, report: Report
) -> None:
    """Each model alice may call, by name and by version, through its own document: every
    check, positive_data_acceptance included, so a schema-valid body must be served."""
    headers = bearer(pg_instance, "alice")
    found = Fuzzed()
    per_model: dict[str, Fuzzed] = {}
    started = time.monotonic()
    for name, version in ALICE_MODELS:
        path = model_path(name, version) + "/openapi.json"
        status, _, body = call(served.url, "GET", path, headers=headers)
        assert status == 200, (path, body[:300])
        config = schemathesis.Config.from_dict(WITH_TOKEN)
        own = schemathesis.openapi.from_dict(json.loads(body), config=config)
        every = operations(own)
        assert every and all("{" not in op.path for op in every)
        ran = fuzz(served.url, every, headers, MODEL_EXAMPLES)
        per_model[path] = ran
        found.add(ran)
    elapsed = time.monotonic() - started
    report.figure("fuzz_model_requests", found.sent)
    report.note(
        "fuzz",
        f"schemathesis with each model's document: {found.sent} requests over "
        f"{len(per_model)} documents in {elapsed:.0f} s, statuses {found.by_status()}",
    )
    assert not found.failures, f"{len(found.failures)} failures:\n" + "\n".join(found.failures[:10])
    # Positive cases reached the models and were served, on both APIs, for both models.
    for label in (
        "POST /v1/models/digits:predict",
        "POST /v1/models/digits:classify",
        "POST /v2/models/digits/infer",
        "POST /v1/models/multi:predict",
        "POST /v2/models/multi/infer",
        "POST /v1/models/digits/labels/stable:predict",
        "POST /v2/models/multi/versions/1/infer",
    ):
        assert {200, 400} <= found.of(label), (label, found.of(label))
    # digits version 1 is labelled canary: alice may read it, never call it.
    assert found.of("POST /v2/models/digits/versions/1/infer") == {403}


def test_schemathesis_without_a_token(served: Served, schema: BaseSchema, report: Report) -> None:
    every = operations(schema)
    found = fuzz(served.url, every, {}, WITHOUT_TOKEN_EXAMPLES)
    report.figure("fuzz_anonymous_requests", found.sent)
    assert not found.failures, "\n".join(found.failures[:10])
    guarded = {
        f"{method.upper()} {path}"
        for path, methods in document()["paths"].items()
        for method, operation in methods.items()
        if operation.get("security") != []
    }
    for (label, status), count in found.statuses.items():
        assert status == (401 if label in guarded else 200), (label, status, count)
    assert {label for label, _ in found.statuses} == {op.label for op in every}


# -- request bodies the document cannot describe --------------------------------------------


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(min_value=-3, max_value=3),
)
dimension = st.one_of(
    st.integers(min_value=0, max_value=6),
    st.integers(min_value=-2, max_value=2**64),
    st.sampled_from([2**31, 2**62, 2**63, 10**20]),
)
tensor_data = st.recursive(
    st.one_of(numbers, st.booleans(), st.text(max_size=3), st.integers(-(2**65), 2**65)),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=40,
)


@st.composite
def oip_tensor(draw: st.DrawFn) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["x", "a", "b", "y"]) | st.text(max_size=3)),
        "shape": draw(st.lists(dimension, max_size=40)),
        "datatype": draw(st.sampled_from([*DATATYPES, "BF16", "fp32", ""])),
    }
    if draw(st.booleans()):
        tensor["data"] = draw(tensor_data)
    else:
        tensor["parameters"] = {"binary_data_size": draw(st.integers(-1, 80) | json_leaf)}
    if draw(st.integers(0, 9)) == 0:
        tensor[draw(st.sampled_from(["data", "parameters", "extra"]))] = draw(json_value)
    return tensor


@st.composite
def well_formed_infer(draw: st.DrawFn) -> dict[str, Any]:
    """A digits infer body that is right often enough to reach the model."""
    count = draw(st.integers(1, 3))
    data = draw(st.lists(numbers, min_size=4 * count, max_size=4 * count))
    return {"inputs": [{"name": "x", "shape": [count, 4], "datatype": "FP32", "data": data}]}


@st.composite
def infer_request(draw: st.DrawFn) -> Sent:
    path = draw(st.sampled_from(["/v2/models/digits/infer", "/v2/models/multi/infer",
                                 "/v2/models/digits/versions/2/infer"]))  # fmt: skip
    document_: Any = draw(
        st.one_of(
            well_formed_infer(),
            st.fixed_dictionaries(
                {"inputs": st.lists(oip_tensor(), max_size=3)},
                optional={
                    "id": json_leaf,
                    "parameters": st.dictionaries(
                        st.sampled_from(["binary_data_output", "x"]), json_leaf, max_size=2
                    ),
                    "outputs": st.lists(
                        st.fixed_dictionaries(
                            {"name": st.sampled_from(["probs", "score", "gate", "zz"])},
                            optional={
                                "parameters": st.dictionaries(
                                    st.sampled_from(["binary_data", "classification"]),
                                    json_leaf,
                                    max_size=2,
                                )
                            },
                        ),
                        max_size=3,
                    ),
                },
            ),
            json_value,
        )
    )
    head = json.dumps(document_).encode()
    headers: dict[str, str] = {}
    tail = b""
    if draw(st.booleans()):
        tail = draw(st.binary(max_size=80))
        length = draw(
            st.one_of(
                st.just(str(len(head))),
                st.integers(-5, len(head) + 100).map(str),
                # Printable: gunicorn itself answers a control character in a header 400
                # (text/html, before the app: nothing to audit), as RFC 9110 lets it.
                st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=5),
            )
        )
        headers[HEADER_LENGTH] = length
    content_type = draw(st.sampled_from([None, "application/json", "application/octet-stream"]))
    if content_type is not None:
        headers["Content-Type"] = content_type
    return path, head + tail, headers


@st.composite
def predict_request(draw: st.DrawFn) -> Sent:
    path = draw(st.sampled_from(["/v1/models/digits:predict", "/v1/models/multi:predict",
                                 "/v1/models/digits/labels/stable:predict"]))  # fmt: skip
    key = draw(st.sampled_from(["instances", "inputs"]))
    rows = st.lists(st.lists(numbers, min_size=4, max_size=4), min_size=1, max_size=3)
    body: Any = draw(
        st.one_of(
            st.fixed_dictionaries({key: rows}),
            st.fixed_dictionaries({key: tensor_data | json_value}),
            st.fixed_dictionaries(
                {key: st.dictionaries(st.sampled_from(["x", "a", "b", "y"]), tensor_data)},
                optional={"signature_name": json_leaf},
            ),
            st.fixed_dictionaries({"instances": st.lists(
                st.fixed_dictionaries({"a": tensor_data, "b": tensor_data}), max_size=3)}),
            json_value,
        )
    )  # fmt: skip
    raw = draw(st.one_of(st.just(json.dumps(body).encode()), st.binary(max_size=64)))
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/x-www-form-urlencoded",
                "text/csv",
                "application/json; charset=utf-8",
                "",
            ]
        )
    )
    return path, raw, {"Content-Type": content_type} if content_type else {}


#: What an allowed caller (alice) may be answered on digits and multi: 403 when a body has more
#: rows than her rule's max_rows; 415 only on predict, whose body must be JSON.
BODY_STATUSES = {200, 400, 403, 413, 415}


def _infer_finding(inputs: dict[str, Any], binary: bool = False) -> Sent:
    head = json.dumps({"inputs": [{"name": "x", **inputs}]}).encode()
    return "/v2/models/digits/infer", head, {HEADER_LENGTH: str(len(head))} if binary else {}


DEEP = json.loads("[" * 40 + "1" + "]" * 40)  # 40 nested lists
#: What fuzzing found: 500s, fixed (tests/unit/test_serving_formats_oip.py has each too).
INFER_FINDINGS = [
    _infer_finding({"shape": [0, 10**20], "datatype": "FP32", "data": []}),
    _infer_finding({"shape": [1] * 40, "datatype": "FP32", "data": [1.0]}),
    _infer_finding(
        {"shape": [1] * 40, "datatype": "FP32", "data": json.loads("[" * 40 + "1" + "]" * 40)}
    ),
    _infer_finding({"shape": [1, 4], "datatype": "UINT64", "data": [2**64 - 1, 1, 2, 3]}),
    _infer_finding(
        {"shape": [0, 2**62], "datatype": "FP32", "parameters": {"binary_data_size": 0}}, True
    ),
]


def check_answer(status: int, headers: dict[str, str], body: bytes, allowed: set[int]) -> None:
    assert status in allowed, (status, body[:300])
    assert headers.get("X-Request-Id")
    payload = json.loads(body)
    if status != 200:
        assert set(payload) == {"error"} and isinstance(payload["error"], str), payload
        assert "Traceback" not in payload["error"]


def test_random_infer_bodies(served: Served, pg_instance: Instance, report: Report) -> None:
    seen: Counter[int] = Counter()

    @quick(BODY_EXAMPLES)
    @given(infer_request())
    def run(sent: Sent) -> None:
        path, body, headers = sent
        status, answer_headers, payload = call(
            served.url, "POST", path, body=body, headers={**bearer(pg_instance, "alice"), **headers}
        )
        seen[status] += 1
        check_answer(status, answer_headers, payload, BODY_STATUSES - {415})

    for finding in INFER_FINDINGS:
        run = example(finding)(run)
    run()
    report.note("fuzz", f"infer bodies: statuses {dict(sorted(seen.items()))}")
    assert seen[200] and seen[400]


def test_random_predict_bodies(served: Served, pg_instance: Instance, report: Report) -> None:
    seen: Counter[int] = Counter()

    @quick(BODY_EXAMPLES)
    @example(("/v1/models/digits:predict", b'{"instances": [[0.1, 0.2, 0.3, 0.4]]}',
              {"Content-Type": "application/json"}))  # fmt: skip
    @given(predict_request())
    def run(sent: Sent) -> None:
        path, body, headers = sent
        status, answer_headers, payload = call(
            served.url, "POST", path, body=body, headers={**bearer(pg_instance, "alice"), **headers}
        )
        seen[status] += 1
        check_answer(status, answer_headers, payload, BODY_STATUSES)

    run()
    report.note("fuzz", f"predict bodies: statuses {dict(sorted(seen.items()))}")
    assert seen[200] and seen[400] and seen[415]


def test_the_audit_chain_is_intact_after_the_fuzzing(
    served: Served, pg_instance: Instance, report: Report
) -> None:
    report.figure("fuzz_audit_events_verified", audit_intact(pg_instance))


# -- sealed artifacts --------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """An artifact taken apart: its three JSON blocks and the body between them."""

    header: dict[str, Any]
    keyblock: dict[str, Any]
    body: bytes
    trailer: dict[str, Any]

    @classmethod
    def parse(cls, blob: bytes) -> Frame:
        prelude = read_prelude(io.BytesIO(blob), None)
        start = len(MAGIC) + 8 + len(prelude.header_bytes) + len(prelude.keyblock_bytes)
        end = len(blob) - 4 - prelude.trailer_length
        return cls(
            json.loads(prelude.header_bytes),
            json.loads(prelude.keyblock_bytes),
            blob[start:end],
            json.loads(blob[end + 4 :]),
        )

    def encode(self) -> bytes:
        """Every length prefix right, every block canonical JSON."""
        blocks = (encode_block(self.header), encode_block(self.keyblock))
        return MAGIC + b"".join(blocks) + self.body + encode_block(self.trailer)


@dataclass
class Sealed:
    """A real sealed version (digits v2), its registry row and keyring, and a scratch store
    whose copy of the file each example overwrites."""

    row: ModelVersion
    keyring: Keyring
    store: ArtifactStore
    blob: bytes

    def refuses(self, data: bytes) -> None:
        path = self.store.root / self.row.artifact_path
        path.write_bytes(data)
        for read in (open_version, verify_version):
            with pytest.raises(InvalidArtifact) as refused:
                read(self.store, self.keyring, self.row)
            assert str(refused.value) == InvalidArtifact.MESSAGE


@pytest.fixture(scope="module")
def sealed(pg_instance: Instance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealed]:
    with Session(pg_instance.engine, expire_on_commit=False) as session:
        query = (
            sa.select(ModelVersion)
            .join(Model)
            .options(joinedload(ModelVersion.model))
            .where(Model.name == "digits", ModelVersion.version == 2)
        )
        row = session.execute(query).scalar_one()
        keyring = Keyring.open(pg_instance.settings.keys_dir)
        with ArtifactStore(pg_instance.settings.store_dir).open(row.artifact_path) as source:
            blob = source.read()
        scratch = ArtifactStore(tmp_path_factory.mktemp("store"))
        (scratch.root / row.artifact_path).parent.mkdir(parents=True)
        made = Sealed(row, keyring, scratch, blob)
        (scratch.root / row.artifact_path).write_bytes(blob)
        open_version(scratch, keyring, row).wipe()  # the control: the real file opens
        assert Frame.parse(blob).encode() == blob
        yield made


def test_random_bytes_are_invalid_artifacts(sealed: Sealed) -> None:
    @quick(ARTIFACT_EXAMPLES)
    @given(data=st.binary(max_size=4096), prefix=st.sampled_from([b"", MAGIC, MAGIC + b"\x00"]))
    def run(data: bytes, prefix: bytes) -> None:
        sealed.refuses(prefix + data)

    run()


def test_spliced_and_truncated_artifacts_are_invalid(sealed: Sealed) -> None:
    size = len(sealed.blob)

    @quick(ARTIFACT_EXAMPLES)
    @given(
        start=st.integers(0, size),
        length=st.integers(0, 64),
        insert=st.binary(max_size=64),
        cut=st.booleans(),
    )
    def run(start: int, length: int, insert: bytes, cut: bool) -> None:
        blob = sealed.blob
        changed = blob[:start] if cut else blob[:start] + insert + blob[start + length :]
        if changed != blob:
            sealed.refuses(changed)

    run()


FIELD_VALUES = st.one_of(
    json_value,
    st.sampled_from([-1, 0, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, "", "x" * 300, True, 1.5]),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
)


def test_reframed_artifacts_are_invalid(sealed: Sealed) -> None:
    """Well-formed frames with one field of one block changed, added or removed, or the body
    changed: the parser's every field check and the cryptography meet each one."""
    frame = Frame.parse(sealed.blob)

    @quick(ARTIFACT_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        part = data.draw(st.sampled_from(["header", "keyblock", "trailer", "body", "metadata"]))
        if part == "body":
            body = data.draw(st.binary(max_size=len(frame.body) + 32))
            changed = Frame(frame.header, frame.keyblock, body, frame.trailer).encode()
        else:
            blocks = copy.deepcopy({"header": frame.header, "keyblock": frame.keyblock,
                                    "trailer": frame.trailer})  # fmt: skip
            block = blocks["header"]["metadata"] if part == "metadata" else blocks[part]
            key = data.draw(st.sampled_from(sorted(block)) | st.text(max_size=8))
            if data.draw(st.booleans()) and key in block:
                del block[key]
            else:
                block[key] = data.draw(FIELD_VALUES)
            changed = Frame(blocks["header"], blocks["keyblock"], frame.body,
                            blocks["trailer"]).encode()  # fmt: skip
        if changed != sealed.blob:
            sealed.refuses(changed)

    run()


# -- policy files ------------------------------------------------------------------------------

EXAMPLE_POLICY = (ROOT / "policies" / "access.yaml").read_text()
WORDS = [
    "allow", "deny", "role:analyst", "user:alice", "'*'", "model:predict", "[model:list]",
    "audit:read", "digits*", "stable", "canary", "minute", "hour", "day", "analyst", "alice",
    "1", "0", "-3", "2.5", "1e400", "true", "no", "~", "null", ".nan", ".inf", "0x1F", "0o17",
    "1_000", "2027-01-01", "2027-01-01T00:00:00Z", "2027-01-01 10:00:00",
    "0001-01-01 00:00:00+05:00", "9999-12-31T23:59:59-05:00", "'0001-01-01T00:00:00+05:00'",
    "'quoted'", '"a\\u0000b"', "*ref", "&ref x", "? [complex]", "|\n  block", ">-\n  folded",
]  # fmt: skip
TAGS = ["!!int", "!!float", "!!bool", "!!timestamp", "!!binary", "!!str", "!!null", "!!set",
        "!!omap", "!!pairs", "!!python/object/apply:os.system", "!local"]  # fmt: skip
yaml_scalar = st.one_of(
    st.sampled_from(WORDS),
    st.from_regex(r"[A-Za-z0-9:*_.@|+\-]{1,12}", fullmatch=True),
    st.tuples(st.sampled_from(TAGS), st.sampled_from(WORDS)).map(" ".join),
)
yaml_key = st.sampled_from([*TOP_FIELDS, *RULE_FIELDS, "per", "requests", "rows", "roles",
                            "disabled", "1", "<<", "x"])  # fmt: skip
yaml_value = st.recursive(
    yaml_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(yaml_key, inner), max_size=4).map(
            lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=16,
)
FIELD_TEXT: dict[str, list[str]] = {
    "effect": ["allow", "deny"],
    "subject": ["role:analyst", "user:alice", "'*'", "role:nobody"],
    "model": ["digits*", "'*'", "multi", "'[a-'"],
    "actions": ["[model:predict]", "model:list", "[audit:read, model:metadata]", "[]"],
    "version": ["1", "0", "99999999999999999999999"],
    "label": ["stable", "Canary"],
    "valid_from": ["2027-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00", "2027-01-01"],
    "valid_until": ["2028-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00", "!!timestamp x"],
    "max_rows": ["10", "0", "1.5"],
    "max_epsilon": ["3", ".nan", "-1", "1e400"],
    "finite_inputs": ["true", "false", "'yes'", "1"],
    "quota": ["{per: day, requests: 5}", "{per: minute, rows: 10, requests: 2}",
              "{per: day, requests: 1, 1: 2, x: 3}", "[{per: hour, rows: 1}]", "{per: week}"],
    "description": ["hello", "'" + "d" * 600 + "'"],
}  # fmt: skip


@st.composite
def policy_rule(draw: st.DrawFn) -> str:
    chosen = draw(st.lists(st.sampled_from(RULE_FIELDS), max_size=len(RULE_FIELDS), unique=True))
    pairs = [f"{name}: {draw(st.sampled_from(FIELD_TEXT[name]) | yaml_value)}" for name in chosen]
    return "{" + ", ".join(pairs) + "}"


@st.composite
def policy_text(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["structured", "free", "mutated"]))
    if kind == "structured":
        rules = draw(st.lists(policy_rule(), max_size=4))
        principal = draw(st.sampled_from(["{roles: [analyst]}", "{disabled: maybe}", "{}"]))
        return (
            f"version: {draw(st.sampled_from(['1', '2', 'x']) | yaml_scalar)}\n"
            f"roles: {{analyst: {{}}, {draw(yaml_scalar)}: {draw(yaml_value)}}}\n"
            f"principals: {{alice: {principal}, {draw(yaml_scalar)}: {draw(yaml_value)}}}\n"
            "rules:\n" + "".join(f"  - {rule}\n" for rule in rules)
        )
    if kind == "free":
        pairs = draw(st.lists(st.tuples(st.sampled_from([*TOP_FIELDS, "x"]), yaml_value),
                              max_size=4))  # fmt: skip
        return "".join(f"{key}: {value}\n" for key, value in pairs)
    text = EXAMPLE_POLICY
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        span = draw(st.integers(0, 20))
        insert = draw(st.sampled_from([*WORDS, *TAGS, "\n", "  ", "- ", ": ", "[", "{", "]", "}",
                                       "#", "&a ", "*a", "\t", ""]))  # fmt: skip
        text = text[:at] + insert + text[at + span :]
    return text


def loads_or_refuses(path: Path) -> PolicyDocument | None:
    """`load` either reads the file or raises `PolicyFileError` whose problems all read
    `file:line: reason`; any other exception fails the test."""
    try:
        return load([path])
    except PolicyFileError as refused:
        assert refused.problems
        for problem in refused.problems:
            assert re.match(rf"{re.escape(str(path))}:\d+: \S", problem), problem
        return None


#: What fuzzing found (fixed; tests/unit/test_policy_files.py has each one too).
POLICY_FINDINGS = [
    "version: !!int abc\n",
    "version: !!bool maybe\n",
    "version: !!timestamp nope\n",
    "[" * 5000 + "]" * 5000 + "\n",
    "roles: {a: {}}\nrules:\n- {effect: allow, subject: role:a, actions: [model:predict], "
    "quota: {per: day, requests: 1, 1: 2, x: 3}}\n",
    "roles: {a: {}}\nrules:\n- {effect: allow, subject: role:a, actions: [model:predict], "
    "valid_from: 0001-01-01 00:00:00+05:00}\n",
]


def test_random_policy_files_load_or_are_refused(
    tmp_path_factory: pytest.TempPathFactory, report: Report
) -> None:
    folder = tmp_path_factory.mktemp("policies")
    path = folder / "policy.yaml"
    outcomes: Counter[str] = Counter()

    def check(text: str | bytes) -> None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        outcomes["loaded" if loads_or_refuses(path) is not None else "refused"] += 1

    strategies: list[st.SearchStrategy[Any]] = [
        st.binary(max_size=300),
        st.text(max_size=300),
        policy_text(),
    ]
    for strategy in strategies:

        @quick(POLICY_EXAMPLES)
        @given(text=strategy)
        def run(text: str | bytes) -> None:
            check(text)

        run()
    for finding in POLICY_FINDINGS:
        check(finding)
    report.note("fuzz", f"policy files: {dict(outcomes)}")
    assert outcomes["loaded"] and outcomes["refused"]
