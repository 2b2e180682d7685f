"""Paths under /v1/models/ and /v2/models/ that name no endpoint: `../../etc/passwd`, a name
with a slash, an unknown verb, a POST where only GET is routed. They go through the pipeline
like any model request (a caller without a token gets 401, and every one is audited), then get
TF Serving's "Malformed request" 404, which says nothing about any model. Other unknown paths
get the plain JSON 404 (or 405), unaudited: they touch nothing.
"""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from secure_maas.actions import Action
from secure_maas.serving.errors import ApiError, error_response
from secure_maas.serving.pipeline import Call, guarded
from secure_maas.serving.refs import Api, malformed_message

MODEL_PREFIXES = ("/v1/models/", "/v2/models/")


def _malformed(call: Call) -> Response:
    call.reason = f"no endpoint at {request.path[:200]!r}"
    raise ApiError(404, malformed_message(request.method, request.path), reason_code="malformed")


_GUARDED = {
    ("GET", Api.TFSERVING): guarded(Action.MODEL_METADATA, api=Api.TFSERVING)(_malformed),
    ("POST", Api.TFSERVING): guarded(Action.MODEL_PREDICT, api=Api.TFSERVING)(_malformed),
    ("GET", Api.OIP): guarded(Action.MODEL_METADATA, api=Api.OIP)(_malformed),
    ("POST", Api.OIP): guarded(Action.MODEL_PREDICT, api=Api.OIP)(_malformed),
}


def register(app: Flask) -> None:
    """Install the handler of routing 404s and 405s (more specific than the generic one)."""

    @app.errorhandler(NotFound)
    @app.errorhandler(MethodNotAllowed)
    def _unrouted(error: HTTPException) -> Response:
        path = request.path
        method = "GET" if request.method == "HEAD" else request.method
        if request.url_rule is None and path.startswith(MODEL_PREFIXES):
            api = Api.TFSERVING if path.startswith("/v1/") else Api.OIP
            view = _GUARDED.get((method, api))
            if view is not None:
                return view()
        if isinstance(error, MethodNotAllowed):
            allowed = ", ".join(sorted(error.valid_methods or ()))
            return error_response(405, "method not allowed", {"Allow": allowed} if allowed else {})
        return error_response(404, "not found")
