"""The OpenAPI 3.1 document of the service, written out by hand, route by route.

It is data, not generated from the app, so that a route added without documentation is caught:
a test walks `app.url_map` and checks that every rule and method is described here, and that
nothing here describes a route that does not exist.
"""

from __future__ import annotations

import copy
from typing import Any

from secure_maas import __version__
from secure_maas.audit import AuditDecision
from secure_maas.audit.events import LIMITS
from secure_maas.audit.query import CONTROL_CHARACTERS
from secure_maas.registry.disclosure import PUBLIC_DP_FIELDS
from secure_maas.serving.encodings import ACCEPTED, CONTENT_ENCODING
from secure_maas.serving.encodings import PATTERN as CODING_PATTERN
from secure_maas.serving.formats.oip import HEADER_LENGTH
from secure_maas.serving.formats.tfserving import MODEL_STATES
from secure_maas.serving.grammar import MAX_INT64
from secure_maas.serving.headers import REQUEST_ID_HEADER, REQUEST_ID_PATTERN
from secure_maas.serving.views.admin import DEFAULT_LIMIT, MAX_LIMIT

JSON = "application/json"
BINARY = "application/octet-stream"
#: A name or label in a TF Serving path: no slash, no colon (`serving.grammar`).
V1_SEGMENT = "^[^/:]+$"
#: Text without control characters (Unicode Cc: C0, DEL, C1), as the audit filters take it.
NO_CONTROLS = f"^[^{CONTROL_CHARACTERS}]*$"


def decimal_at_most(limit: int) -> str:
    """A regular expression of the decimal strings of 0 to `limit` with no more digits than
    `limit` has (leading zeros included): what TF Serving converts to a version."""
    digits = str(limit)
    branches = [f"[0-9]{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    for index, digit in enumerate(digits):
        if digit != "0":
            rest = len(digits) - index - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            branches.append(f"{digits[:index]}[0-{int(digit) - 1}]{tail}")
    branches.append(digits)
    return "^(?:" + "|".join(branches) + ")$"


#: A version number in a path: digits, at most an int64 (TF Serving refuses more with a 400).
VERSION_PATTERN = decimal_at_most(MAX_INT64)
_REQUEST_ID = {
    "name": REQUEST_ID_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": f"Kept and recorded in the audit log when it matches {REQUEST_ID_PATTERN}; "
    "any other value is replaced by a fresh id (never refused). Every answer carries the id used.",
}
_HEADER_LENGTH = {
    "name": HEADER_LENGTH,
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "With binary tensors: the length of the JSON inference header that starts "
    "the body",
}
_CONTENT_ENCODING = {
    "name": CONTENT_ENCODING,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": CODING_PATTERN},
    "description": f"The body's coding: one of {ACCEPTED} (x-gzip is gzip, identity or empty none; "
    "matched without regard to case); decoded within the body limit (413 past it), 400 if the "
    "body is not data of that coding, 415 for any other coding or several",
}
_ANSWER_LENGTH = {
    "schema": {"type": "integer", "minimum": 0},
    "description": "Set when binary outputs follow the JSON header: that header's length",
}
_ANSWER_ID = {REQUEST_ID_HEADER: {"schema": {"type": "string"}, "description": "The request id"}}
_BINARY_TENSORS = {
    "type": "string",
    "format": "binary",
    "description": f"Triton's binary tensor extension: the JSON inference header, exactly "
    f"{HEADER_LENGTH} bytes of it, then each binary tensor's raw little-endian bytes in order "
    "(a BYTES element: its 4-byte little-endian length, then its bytes)",
}

_STATUS_TEXT = {
    200: "Success",
    400: "Malformed request: bad JSON, or a body that does not fit the model's signature",
    401: "No bearer token, a malformed Authorization header, or a refused token",
    403: "The access policy does not allow this request (why is in the audit log only)",
    404: "No such model or version, or one the caller may not see (the same answer)",
    408: "The body did not arrive within SECURE_MAAS_BODY_TIMEOUT",
    413: "The body is over SECURE_MAAS_MAX_BODY_BYTES",
    415: "The body's content type is not JSON",
    429: "Over quota; Retry-After says when to try again",
    503: "Cannot serve now (database, keys, audit log or model unavailable); fails closed",
}
_GUARDED = (401, 403, 404, 413, 503)


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _STATUS_TEXT[status],
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if status == 429:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    if status == 415:
        response["headers"] = {
            "Accept-Encoding": {
                "schema": {"type": "string"},
                "description": "The codings taken, when the body's coding was refused",
            }
        }
    return response


def _ok(schema: str | None, description: str = "Success") -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def _param(name: str, where: str = "path", description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": {"type": "string"},
        "description": description,
    }


_PATH_TEXT = {
    "name": "Model name",
    "version": "Model version number",
    "label": "Version label such as stable or canary",
}


def _path_param(name: str) -> dict[str, Any]:
    param = _param(name, "path", _PATH_TEXT[name])
    if name == "version":  # a number: TF Serving answers 400 for anything else, OIP 404
        param["schema"] = {"type": "string", "pattern": VERSION_PATTERN}
    return param


def _v1_segments(operation: dict[str, Any]) -> None:
    """Under /v1 a name or label holds no slash or colon: TF Serving's grammar answers such a
    path 400 "Malformed request" before any model is looked for."""
    for param in operation.get("parameters", ()):
        if param["in"] == "path" and param["name"] in ("name", "label"):
            param["schema"] = {"type": "string", "pattern": V1_SEGMENT}


#: How long ago `since`/`until` may say: a count of one unit, never past 100 years (the
#: digits are bounded so every value is: 999,999,999 s is 31 years).
_DURATION = (
    "^[\\t\\n\\x0b\\x0c\\r ]*0*(?:[0-9]{1,9}[ \\t]*s|[0-9]{1,7}[ \\t]*m"
    "|[0-9]{1,5}[ \\t]*h|[0-9]{1,4}[ \\t]*d|[0-9]{1,3}[ \\t]*w)[\\t\\n\\x0b\\x0c\\r ]*$"
)
_MOMENT = {
    "anyOf": [
        {"type": "string", "pattern": _DURATION},
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
    ]
}
_AUDIT_QUERY: dict[str, dict[str, Any]] = {
    "since": _MOMENT,
    "until": _MOMENT,
    **{
        name: {"type": "string", "pattern": NO_CONTROLS, "maxLength": LIMITS[name]}
        for name in ("actor", "model", "action")
    },
    "decision": {"type": "string", "enum": [d.value for d in AuditDecision]},
    "after": {"type": "integer", "minimum": 0, "maximum": MAX_INT64},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
}


def _operation(
    summary: str,
    tag: str,
    ok: dict[str, Any],
    *,
    action: str | None = None,
    errors: tuple[int, ...] = (),
    query: tuple[dict[str, Any], ...] = (),
    body: str | None = None,
    binary: bool = False,
    path_params: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One operation; `binary` adds Triton's binary tensor body, header and answer."""
    operation: dict[str, Any] = {"summary": summary, "tags": [tag]}
    parameters = [_path_param(name) for name in path_params] + list(query)
    if action is not None:
        parameters.append(_REQUEST_ID)
    if binary:
        parameters.append(_HEADER_LENGTH)
    if body is not None:
        parameters.append(_CONTENT_ENCODING)
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        content: dict[str, Any] = {JSON: {"schema": _ref(body)}}
        if binary:
            content[BINARY] = {"schema": _BINARY_TENSORS}
        operation["requestBody"] = {"required": True, "content": content}
    if binary:
        ok = copy.deepcopy(ok)
        ok["content"][BINARY] = {"schema": _BINARY_TENSORS}
        ok["headers"] = {HEADER_LENGTH: _ANSWER_LENGTH}
    responses: dict[str, Any] = {"200": ok}
    for status in sorted({*errors, *(_GUARDED if action else ())}):
        responses[str(status)] = _error(status)
    if action is not None:
        for response in responses.values():
            response.setdefault("headers", {}).update(_ANSWER_ID)
    operation["responses"] = responses
    if action is None:
        operation["security"] = []
    else:
        operation["x-action"] = action
    return operation


def _model_paths(
    prefix: str, suffixes: tuple[str, ...], labels: bool
) -> list[tuple[str, tuple[str, ...]]]:
    """`prefix/{name}SUFFIX`, with /versions/{version} (and /labels/{label}) between."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for suffix in suffixes:
        found.append((f"{prefix}/{{name}}{suffix}", ("name",)))
        found.append((f"{prefix}/{{name}}/versions/{{version}}{suffix}", ("name", "version")))
        if labels:
            found.append((f"{prefix}/{{name}}/labels/{{label}}{suffix}", ("name", "label")))
    return found


def _paths() -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {}

    def add(path: str, method: str, operation: dict[str, Any]) -> None:
        if path.startswith("/v1/"):
            _v1_segments(operation)
        paths.setdefault(path, {})[method] = operation

    for path, params in _model_paths("/v1/models", ("",), labels=True):
        add(
            path,
            "get",
            _operation(
                "TF Serving model status: the state of the version(s)",
                "TF Serving",
                _ok("ModelStatus"),
                action="model:metadata",
                errors=(400,),
                path_params=params,
            ),
        )
    for path, params in _model_paths("/v1/models", ("/metadata",), labels=True):
        add(
            path,
            "get",
            _operation(
                "TF Serving model metadata (signature_def), with the DP guarantee under "
                "secure_maas",
                "TF Serving",
                _ok("TFServingMetadata"),
                action="model:metadata",
                errors=(400,),
                path_params=params,
            ),
        )
    for path, params in _model_paths("/v1/models", (":predict",), labels=True):
        add(
            path,
            "post",
            _operation(
                "TF Serving predict: row (instances -> predictions) or columnar "
                "(inputs -> outputs) format",
                "TF Serving",
                _ok("PredictResponse"),
                action="model:predict",
                errors=(400, 408, 415, 429),
                body="PredictRequest",
                path_params=params,
            ),
        )
    for verb, summary, response in (
        (
            "classify",
            "TF Serving classify: examples -> every class's [label, score] per example, for a "
            "model with one output of class scores [batch, num_classes]",
            "ClassifyResponse",
        ),
        (
            "regress",
            "TF Serving regress: examples -> one value per example, for a model with one "
            "output of shape [batch] or [batch, 1]",
            "RegressResponse",
        ),
    ):
        for path, params in _model_paths("/v1/models", (f":{verb}",), labels=True):
            add(
                path,
                "post",
                _operation(
                    summary,
                    "TF Serving",
                    _ok(response),
                    action="model:predict",
                    errors=(400, 408, 415, 429),
                    body="ExamplesRequest",
                    path_params=params,
                ),
            )
    add(
        "/v1/models",
        "get",
        _operation(
            "The models and active versions the caller may list (model:list)",
            "Platform",
            _ok("ModelList"),
            action="model:list",
        ),
    )
    add(
        "/v2",
        "get",
        _operation("OIP server metadata", "Open Inference Protocol", _ok("ServerMetadata")),
    )
    add(
        "/v2/health/live", "get", _operation("OIP liveness", "Open Inference Protocol", _ok("Live"))
    )
    add(
        "/v2/health/ready",
        "get",
        _operation(
            "OIP readiness: database, keys and audit log usable",
            "Open Inference Protocol",
            _ok("Ready"),
            errors=(503,),
        ),
    )
    for path, params in _model_paths("/v2/models", ("",), labels=False):
        add(
            path,
            "get",
            _operation(
                "OIP model metadata, with the DP guarantee under secure_maas",
                "Open Inference Protocol",
                _ok("OipMetadata"),
                action="model:metadata",
                path_params=params,
            ),
        )
    for path, params in _model_paths("/v2/models", ("/ready",), labels=False):
        add(
            path,
            "get",
            _operation(
                "OIP model readiness (loads the version if needed; 503 if it cannot be loaded)",
                "Open Inference Protocol",
                _ok("ModelReady"),
                action="model:metadata",
                path_params=params,
            ),
        )
    for path, params in _model_paths("/v2/models", ("/config",), labels=False):
        add(
            path,
            "get",
            _operation(
                "Triton model configuration: max_batch_size, inputs and outputs with data_type "
                "and dims (batch left out), dynamic_batching",
                "Triton extensions",
                _ok("ModelConfig"),
                action="model:metadata",
                path_params=params,
            ),
        )
    for path, params in _model_paths("/v2/models", ("/openapi.json",), labels=False):
        add(
            path,
            "get",
            _operation(
                "This document for one model (or version): its TF Serving and OIP operations "
                "with request bodies exact for its signature (input names, datatypes and "
                "ranges, shapes, the batch), guarded as its metadata is",
                "Open Inference Protocol",
                _ok("OpenApi"),
                action="model:metadata",
                path_params=params,
            ),
        )
    add(
        "/v2/models/stats",
        "get",
        _operation(
            "Triton statistics of every version the caller may list and read statistics of "
            "(model:stats and model:list), from the data plane",
            "Triton extensions",
            _ok("ModelStatistics"),
            action="model:stats",
        ),
    )
    for path, params in _model_paths("/v2/models", ("/stats",), labels=False):
        add(
            path,
            "get",
            _operation(
                "Triton statistics of a model's versions: counts and cumulative times of "
                "everyone's requests, from the data plane",
                "Triton extensions",
                _ok("ModelStatistics"),
                action="model:stats",
                path_params=params,
            ),
        )
    index = _operation(
        "Triton repository index: the versions the caller may list and their states "
        '(READY, LOADING, UNLOADING, UNAVAILABLE); {"ready": true} keeps the READY ones',
        "Triton extensions",
        _ok("RepositoryIndex"),
        action="model:list",
        errors=(400, 408, 415),
        body="RepositoryIndexRequest",
    )
    index["requestBody"]["required"] = False
    add("/v2/repository/index", "post", index)
    for verb, text in (
        ("load", "load the version a bare name serves, now (503 if it cannot be loaded)"),
        ("unload", "take every version the caller may control out of memory"),
    ):
        operation = _operation(
            f"Triton repository {verb}: {text} (model:control, granted only by naming it)",
            "Triton extensions",
            _ok("Empty"),
            action="model:control",
            errors=(400, 408, 415),
            body="RepositoryControlRequest",
            path_params=("name",),
        )
        operation["requestBody"]["required"] = False
        add(f"/v2/repository/models/{{name}}/{verb}", "post", operation)
    for path, params in _model_paths("/v2/models", ("/infer",), labels=False):
        add(
            path,
            "post",
            _operation(
                "OIP inference (JSON, or JSON then binary tensors with "
                "Inference-Header-Content-Length)",
                "Open Inference Protocol",
                _ok("InferResponse"),
                action="model:predict",
                errors=(400, 408, 415, 429),
                body="InferRequest",
                binary=True,
                path_params=params,
            ),
        )
    audit_query = tuple(
        {**_param(name, "query", text), "schema": _AUDIT_QUERY[name]}
        for name, text in (
            ("since", "From this time: 1h, 30m, 7d ago, or an ISO date or time"),
            ("until", "Before this time (same forms)"),
            ("actor", "Only this actor"),
            ("model", "Only this model"),
            ("action", "Only this action, e.g. model:predict"),
            ("decision", "allow, deny or error"),
            ("after", "Only events with a higher seq (next_after of the previous page)"),
            ("limit", f"Page size, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"),
        )
    )
    add(
        "/admin/audit",
        "get",
        _operation(
            "Audit events, oldest first, filtered and paged (audit:read)",
            "Audit",
            _ok("AuditPage"),
            action="audit:read",
            errors=(400,),
            query=audit_query,
        ),
    )
    add(
        "/admin/audit/verify",
        "get",
        _operation(
            "Verify the whole audit chain and report the first bad record (audit:read)",
            "Audit",
            _ok("VerifyReport"),
            action="audit:read",
        ),
    )
    add("/healthz", "get", _operation("The process is up", "Operations", _ok("Status")))
    add(
        "/readyz",
        "get",
        _operation(
            "Database reachable, keys loadable, audit log writable",
            "Operations",
            _ok("Status"),
            errors=(503,),
        ),
    )
    add(
        "/metrics",
        "get",
        _operation(
            "Prometheus metrics of this instance, every worker summed (no model names in labels)",
            "Operations",
            {"description": "Prometheus text exposition", "content": {"text/plain": {}}},
        ),
    )
    add("/openapi.json", "get", _operation("This document", "Operations", _ok(None)))
    return paths


_OBJECT = {"type": "object"}
#: A float output: a number, or NaN/Infinity/-Infinity, the tokens TF Serving and Triton write
#: for non-finite values; JSON has no type for them, so they match the `not` of every type.
NUMBER_OR_NON_FINITE = {
    "anyOf": [
        {"type": "number"},
        {"not": {"type": ["null", "boolean", "object", "array", "number", "string"]}},
    ]
}
#: A class's [label, score]. Not `prefixItems` ([string, number]): schemathesis 4.32 reads a
#: response schema's `prefixItems` as a draft-4 tuple and refuses it (its issues 3842, 4099).
LABEL_AND_SCORE = {
    "type": "array",
    "description": "[label, score]: the class index as a string, then its score",
    "items": {"anyOf": [{"type": "string"}, NUMBER_OR_NON_FINITE]},
    "minItems": 2,
    "maxItems": 2,
}

_B64 = {
    "type": "object",
    "required": ["b64"],
    "additionalProperties": False,
    "properties": {"b64": {"type": "string"}},
    "description": "A binary value of a string input, base64-encoded",
}
_FEATURE_VALUE = {"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string"}, _B64]}
_FEATURES = {
    "type": "object",
    "description": "Features by model input name: a value, or a flat list of the values one "
    "example of that input holds (row-major)",
    "additionalProperties": {"anyOf": [_FEATURE_VALUE, {"type": "array", "items": _FEATURE_VALUE}]},
}
_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "PredictRequest": {
        "type": "object",
        "description": "Exactly one of instances (row format) or inputs (columnar format). "
        "Numbers (NaN, Infinity and -Infinity for float inputs); for a string input a JSON "
        'string or {"b64": base64} for binary values',
        "properties": {
            "signature_name": {"type": "string", "default": "serving_default"},
            "instances": {"type": "array"},
            "inputs": {},
        },
    },
    "PredictResponse": {
        "type": "object",
        "description": 'A string output is a JSON string, or {"b64": base64} when its name '
        "ends in _bytes or its bytes are not UTF-8",
        "properties": {"predictions": {"type": "array"}, "outputs": {}},
    },
    "ModelStatus": {
        "type": "object",
        "required": ["model_version_status"],
        "properties": {
            "model_version_status": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["version", "state", "status"],
                    "properties": {
                        "version": {"type": "string"},
                        "state": {"type": "string", "enum": sorted(MODEL_STATES)},
                        "status": {
                            "type": "object",
                            "properties": {
                                "error_code": {"type": "string"},
                                "error_message": {"type": "string"},
                            },
                        },
                    },
                },
            }
        },
    },
    "TFServingMetadata": {
        "type": "object",
        "properties": {"model_spec": _OBJECT, "metadata": _OBJECT, "secure_maas": _ref("Dp")},
    },
    "Dp": {
        "type": "object",
        "description": "Privacy guarantee and provenance: privacy, dp ("
        + ", ".join(PUBLIC_DP_FIELDS)
        + "; never the dataset's fingerprint, size or sampling rate), dataset (its name), "
        "labels, created_at, created_by",
        "properties": {
            "privacy": {"type": "string"},
            "dp": {"type": ["object", "null"]},
            "dataset": _OBJECT,
        },
    },
    "ModelList": {
        "type": "object",
        "properties": {"models": {"type": "array", "items": _OBJECT}},
    },
    "ServerMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    "ModelReady": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "OipMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _OBJECT},
            "outputs": {"type": "array", "items": _OBJECT},
            "secure_maas": _ref("Dp"),
        },
    },
    "Duration": {
        "type": "object",
        "required": ["count", "ns"],
        "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}},
    },
    "ModelStatistics": {
        "type": "object",
        "required": ["model_stats"],
        "properties": {
            "model_stats": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "name",
                        "version",
                        "last_inference",
                        "inference_count",
                        "execution_count",
                        "inference_stats",
                        "batch_stats",
                    ],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "last_inference": {"type": "integer"},
                        "inference_count": {"type": "integer"},
                        "execution_count": {"type": "integer"},
                        "inference_stats": {
                            "type": "object",
                            "properties": {
                                key: _ref("Duration")
                                for key in (
                                    "success",
                                    "fail",
                                    "queue",
                                    "compute_input",
                                    "compute_infer",
                                    "compute_output",
                                )
                            },
                        },
                        "batch_stats": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "batch_size": {"type": "integer"},
                                    "compute_input": _ref("Duration"),
                                    "compute_infer": _ref("Duration"),
                                    "compute_output": _ref("Duration"),
                                },
                            },
                        },
                        "memory_usage": {"type": "array", "items": _OBJECT},
                    },
                },
            }
        },
    },
    "RepositoryIndexRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"ready": {"type": "boolean"}},
    },
    "RepositoryIndex": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "version", "state", "reason"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
                "reason": {"type": "string"},
            },
        },
    },
    "RepositoryControlRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"unload_dependents": {"type": "boolean"}},
            }
        },
    },
    "Empty": {"type": "object", "additionalProperties": False},
    "ModelConfig": {
        "type": "object",
        "required": ["name", "platform", "max_batch_size", "input", "output"],
        "properties": {
            "name": {"type": "string"},
            "platform": {"type": "string"},
            "backend": {"type": "string"},
            "version_policy": _OBJECT,
            "max_batch_size": {"type": "integer"},
            "input": {"type": "array", "items": _OBJECT},
            "output": {"type": "array", "items": _OBJECT},
            "dynamic_batching": _OBJECT,
        },
    },
    "ExamplesRequest": {
        "type": "object",
        "required": ["examples"],
        "description": "TF Serving's classify and regress body: every model input is a feature "
        "of each example or of context (shared by every example), never both",
        "properties": {
            "signature_name": {"type": "string", "default": "serving_default"},
            "context": _FEATURES,
            "examples": {"type": "array", "minItems": 1, "items": _FEATURES},
        },
    },
    "ClassifyResponse": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "description": "Per example, every class in score order: [label, score], the "
                "label being the class index as a string",
                "items": {"type": "array", "items": LABEL_AND_SCORE},
            }
        },
    },
    "RegressResponse": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "description": "One value per example, in request order",
                "items": NUMBER_OR_NON_FINITE,
            }
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": _OBJECT,
            "inputs": {"type": "array", "items": _OBJECT},
            "outputs": {"type": "array", "items": _OBJECT},
        },
    },
    "InferResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": _OBJECT},
        },
    },
    "AuditPage": {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": _OBJECT},
            "next_after": {"type": ["integer", "null"]},
        },
    },
    "VerifyReport": {
        "type": "object",
        "properties": {
            "intact": {"type": "boolean"},
            "checked": {"type": "integer"},
            "bad_seq": {"type": ["integer", "null"]},
            "reason": {"type": ["string", "null"]},
        },
    },
    "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
    "OpenApi": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "description": "An OpenAPI 3.1 document",
        "properties": {"openapi": {"type": "string"}, "info": _OBJECT, "paths": _OBJECT},
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "secure-maas",
            "version": __version__,
            "description": "Privacy-preserving model service: TF Serving REST and Open "
            "Inference Protocol v2 behind JWT authentication, per-model access rules and a "
            'tamper-evident audit log. Errors are {"error": message}; every guarded request '
            "is audited before its answer, and x-action names the action it needs.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": copy.deepcopy(_SCHEMAS),
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }
