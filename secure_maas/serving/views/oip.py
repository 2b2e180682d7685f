"""Open Inference Protocol v2 (KServe v2, Triton's HTTP API), binary tensor extension included.

    GET  /v2                                        server metadata (no token)
    GET  /v2/health/live, /v2/health/ready          process up; ready to serve (no token)
    GET  /v2/models/NAME[/versions/V]               model metadata, plus the DP guarantee
    GET  /v2/models/NAME[/versions/V]/ready         200 once the version is loaded (loads it)
    POST /v2/models/NAME[/versions/V]/infer         inference

Infer takes any content type (`tritonclient` sends none): the body is JSON, or with the
`Inference-Header-Content-Length` header JSON followed by raw tensor data.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from secure_maas import __version__
from secure_maas.actions import Action
from secure_maas.registry.catalog import ModelRef
from secure_maas.serving.formats.oip import (
    HEADER_LENGTH,
    infer_response,
    model_metadata,
    model_ready,
    parse_infer,
    server_metadata,
)
from secure_maas.serving.headers import INFER_TYPES
from secure_maas.serving.pipeline import Call, guarded, services
from secure_maas.serving.readiness import failed_checks
from secure_maas.serving.refs import Api

bp = Blueprint("oip", __name__, url_prefix="/v2")


@bp.get("")
def server() -> Response:
    return jsonify(server_metadata(__version__))


@bp.get("/health/live")
def live() -> Response:
    return jsonify({"live": True})


@bp.get("/health/ready")
def ready() -> Response:
    failed = failed_checks(services())
    response = jsonify({"ready": not failed})
    response.status_code = 503 if failed else 200
    return response


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
@guarded(Action.MODEL_METADATA, api=Api.OIP)
def metadata(call: Call, name: str, version: str | None = None) -> Response:
    facts = call.model(name, version)
    if version is not None:
        versions = [facts.version]
    else:
        every = call.services.cache.versions(facts.name)
        versions = [v.version for v in every if v.active and call.may_see(v)]
    document = model_metadata(facts.name, versions, facts.signature, secure_maas=facts.guarantee())
    return jsonify(document)


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
@guarded(Action.MODEL_METADATA, api=Api.OIP)
def model_is_ready(call: Call, name: str, version: str | None = None) -> Response:
    facts = call.model(name, version)
    ref = ModelRef(facts.name, version=facts.version if version is not None else None)
    loaded = call.services.models.ready(ref, load=True)
    response = jsonify(model_ready(facts.name, facts.version if version else None, loaded))
    response.status_code = 200 if loaded else 503
    return response


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
@guarded(Action.MODEL_PREDICT, api=Api.OIP)
def infer(call: Call, name: str, version: str | None = None) -> Response:
    facts = call.model(name, version)
    header_length = request.headers.get(HEADER_LENGTH)
    parsed = call.parse(
        lambda body: parse_infer(
            body,
            facts.signature,
            header_length=header_length,
            allow_nan=True,
            max_string_bytes=call.services.settings.max_string_bytes,
        ),
        INFER_TYPES,
    )
    outputs, served = call.predict(parsed)
    answer = infer_response(parsed, outputs, model_name=served.name, model_version=served.version)
    response = Response(answer.body, status=200, content_type=answer.content_type)
    for header, value in answer.headers.items():
        response.headers[header] = value
    return response
