"""What operators and their tools call, without a token and without audit events:

    GET /healthz        the process answers
    GET /readyz         the database answers, the keys load, the audit log takes writes (else 503)
    GET /metrics        Prometheus exposition (no model names, see `serving.metrics`)
    GET /openapi.json   the OpenAPI 3 document of every route

None of them touches a model or a principal, so none needs a decision; a load balancer's
probes would otherwise fill the audit log. One document does touch a model, and is guarded
and audited exactly as that model's metadata is (`model:metadata`; a model the caller may
not see is the same 404 as a missing one, so no document ever shows one):

    GET /v2/models/NAME[/versions/V]/openapi.json   the model's operations with bodies exact
                                                    for its signature (`openapi_model`)
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from secure_maas.actions import Action
from secure_maas.serving.errors import error_response
from secure_maas.serving.openapi import document
from secure_maas.serving.openapi_model import model_document
from secure_maas.serving.pipeline import Call, guarded, services
from secure_maas.serving.readiness import failed_checks
from secure_maas.serving.refs import Api

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    failed = failed_checks(services())
    if failed:
        return error_response(503, f"not ready: {', '.join(failed)}")
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = services().metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())


@bp.get("/v2/models/<name>/openapi.json")
@bp.get("/v2/models/<name>/versions/<version>/openapi.json")
@guarded(Action.MODEL_METADATA, api=Api.OIP)
def model_openapi(call: Call, name: str, version: str | None = None) -> Response:
    facts = call.model(name, version)
    settings = call.services.settings
    return jsonify(
        model_document(
            facts.name,
            facts.version if version is not None else None,
            facts.labels,
            facts.signature,
            max_batch_size=settings.batch_max_size,
            max_string_bytes=settings.max_string_bytes,
        )
    )
