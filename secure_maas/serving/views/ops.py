"""What operators and their tools call, without a token and without audit events:

    GET /healthz        the process answers
    GET /readyz         the database answers, the keys load, the audit log takes writes (else 503)
    GET /metrics        Prometheus exposition (no model names, see `serving.metrics`)
    GET /openapi.json   the OpenAPI 3 document of every route

None of them touches a model or a principal, so none needs a decision; a load balancer's
probes would otherwise fill the audit log.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from secure_maas.serving.errors import error_response
from secure_maas.serving.openapi import document
from secure_maas.serving.pipeline import services
from secure_maas.serving.readiness import failed_checks

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
