"""Every answer under /v1/models, /v2/models and /v2/repository (Triton's repository extension)
is audited, those of Flask's routing included.

Under /v1/models a path is read with TF Serving's grammar (`serving.grammar`) before any view
runs: case-insensitively, a name without `/` or `:`, a version of digits only. A path the
grammar reads is served by the view it names, whatever its case (`/V1/MODELS/m:PREDICT`); one
it cannot read is TF Serving's `400 {"error": "Malformed request: METHOD PATH"}`, even where
Flask's routes would have taken it (`GET /v1/models/m:predict`, `/versions/x1`); a version
too large for an int64 is TF Serving's 400 "Failed to convert version". Neither says
anything about any model: the path alone decides.

Routing answers some requests under these prefixes before any view runs: a path that names no
endpoint (`../../etc/passwd`, a name with a slash, an unknown verb), a method the path is not
routed for, OPTIONS (Flask's automatic answer), and a path with empty segments
(`/v1/models//digits`, which werkzeug's `merge_slashes` redirects with a 308). Each of these is
held back from the router (`_hold`) and answered here through the pipeline like any model
request: a caller without a token gets 401, and every answer is audited, GET, HEAD and OPTIONS
as `model:metadata` and any other method as `model:predict`. The answers:

- a path that names no endpoint, or a GET or POST where only the other is routed: the
  "Malformed request" error, 400 under /v1 (TF Serving's) and 404 under /v2;
- another method (PUT, DELETE, PATCH, ...) where the path is routed: 405 with `Allow`;
- OPTIONS where the path is routed: 200 with `Allow`;
- empty segments: the 308 to the path with merged slashes.

A path is under a prefix when it is with its slashes merged (`//v1//models/x` is; `/V1/Models`
is too). Other unknown paths get the plain JSON 404 (or 405) of the generic error handler,
unaudited: they touch nothing.

What the app never sees, so cannot audit: gunicorn answers a request line longer than
`limit_request_line` (414), a header longer than `limit_request_field_size` or more headers
than `limit_request_fields` (431 Request Header Fields Too Large), and a request it cannot parse
(400: a control character in a header, an unreadable Content-Length) before calling the app;
see `gunicorn_app.DEFAULTS`. The development server (werkzeug over `http.server`) answers 414
and 431 itself too, for lines over 64 KiB and more than 100 headers.
"""

from __future__ import annotations

import re

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from secure_maas.actions import Action
from secure_maas.serving import grammar
from secure_maas.serving.errors import ApiError
from secure_maas.serving.pipeline import Call, guarded
from secure_maas.serving.refs import Api, malformed_message

MODEL_PREFIXES = ("/v1/models", "/v2/models", "/v2/repository")
_SLASHES = re.compile(r"/{2,}")
#: Methods whose wrong path is the "Malformed request" error (HEAD is GET's).
_API_METHODS = frozenset({"GET", "HEAD", "POST"})
_READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class HeldRouting(HTTPException):
    """The answer Flask's routing would have given a request under a model prefix (None: the
    automatic OPTIONS answer), raised instead of it so that the pipeline gives it."""

    code = 404

    def __init__(self, routing: HTTPException | None, *, malformed: str | None = None) -> None:
        super().__init__()
        self.routing = routing
        self.malformed = malformed


def under_model_prefix(path: str) -> bool:
    """Whether `path`, its slashes merged, is /v1/models (in any case), /v2/models or below
    them."""
    merged = _SLASHES.sub("/", path)
    prefix = MODEL_PREFIXES[0]
    merged = prefix + merged[len(prefix) :] if merged.lower().startswith(prefix) else merged
    return merged in MODEL_PREFIXES or merged.startswith(tuple(p + "/" for p in MODEL_PREFIXES))


def _read_tfserving_path() -> HeldRouting | None:
    """Serve a /v1/models request by TF Serving's grammar: route it to the view the grammar
    names (whatever Flask's routing found), or hold it as malformed."""
    method, path = request.method, request.path
    route = grammar.match(method, path)
    if route is None or route.endpoint not in current_app.view_functions:
        return HeldRouting(None, malformed=malformed_message(method, path))
    if grammar.version_overflows(route):
        version = route.values["version"]
        return HeldRouting(None, malformed=f"Failed to convert version: {version} to numeric.")
    rule = request.url_rule
    if rule is None or rule.endpoint != route.endpoint or request.view_args != route.values:
        request.url_rule = next(iter(current_app.url_map.iter_rules(route.endpoint)))
        request.view_args = route.values
    request.routing_exception = None
    return None


def _routing_answer(
    call: Call, routing: HTTPException | None, malformed: str | None = None
) -> Response:
    method, path = request.method, request.path
    if malformed is not None:
        call.reason = f"malformed path {path[:200]!r}"
        raise ApiError(400, malformed, reason_code="malformed")
    if isinstance(routing, RequestRedirect):
        # Nothing is served: the caller is sent to the path it meant, where it is decided on.
        call.allowed = True
        call.reason = f"empty path segments: redirected to {_SLASHES.sub('/', path)[:200]!r}"
        return Response(status=routing.code, headers={"Location": routing.new_url})
    if routing is None:
        call.allowed = True  # the methods the path takes: nothing about any model
        options: Response = current_app.make_default_options_response()
        call.reason = f"OPTIONS: {options.headers.get('Allow', '')}"
        return options
    if isinstance(routing, MethodNotAllowed) and method not in _API_METHODS:
        allowed = ", ".join(sorted(routing.valid_methods or ()))
        call.reason = f"method {method[:32]!r} not allowed at {path[:200]!r}"
        raise ApiError(405, "method not allowed", headers={"Allow": allowed} if allowed else None)
    call.reason = f"no endpoint at {path[:200]!r}"
    status = 404 if call.api is Api.OIP else 400
    raise ApiError(status, malformed_message(method, path), reason_code="malformed")


_VIEWS = {
    (action, api): guarded(action, api=api)(_routing_answer)
    for action in (Action.MODEL_METADATA, Action.MODEL_PREDICT)
    for api in (Api.TFSERVING, Api.OIP)
}


def register(app: Flask) -> None:
    """Hold back routing's answers under the model prefixes and give them through the
    pipeline (see the module docstring)."""

    @app.before_request
    def _hold() -> None:
        # Routing ran when the request context was pushed; its exception is raised only when
        # the view is dispatched, after every before_request hook (request ids and timing
        # included), so the pipeline runs with everything it needs.
        routing = request.routing_exception
        tfserving = grammar.under_v1(request.path) and under_model_prefix(request.path)
        if (
            tfserving
            and request.method in _API_METHODS
            and not isinstance(routing, RequestRedirect)
        ):
            request.routing_exception = _read_tfserving_path()
            return
        if routing is None and request.method != "OPTIONS":
            return
        if under_model_prefix(request.path):
            request.routing_exception = HeldRouting(routing)

    @app.errorhandler(HeldRouting)
    def _answer(error: HeldRouting) -> Response:
        action = (
            Action.MODEL_METADATA if request.method in _READING_METHODS else Action.MODEL_PREDICT
        )
        api = Api.OIP if _SLASHES.sub("/", request.path).startswith("/v2/") else Api.TFSERVING
        return _VIEWS[(action, api)](routing=error.routing, malformed=error.malformed)
