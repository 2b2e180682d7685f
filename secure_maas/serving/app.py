"""The Flask app factory: `create_app(settings)` wires the services to the blueprints.

No app exists at import time. `create_app` builds the process's `Services` (engine, verifier,
policy, audit writer, model cache, metrics) unless it is given one, registers the one JSON
error handler and the blueprints, and gives every response an `X-Request-Id` (the caller's,
when plain and short enough, else a fresh one; the same id is in the request's audit event).
A request whose body was declared but not read in full gets its connection closed after the
answer (nothing waits for the unread rest). `close_app(app)` releases what the app built:
gunicorn calls it when a worker exits, the development server when it stops.

`redact_queries` is the one rule for what of a request target may be logged: the path, never
the query string (a token sent as `?access_token=` must not land in a log); the development
server's request handler (`development_handler`) and gunicorn's loggers apply it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.serving import WSGIRequestHandler

from secure_maas.audit.text import escape_controls
from secure_maas.config import Settings, load_settings
from secure_maas.console import views as console
from secure_maas.serving.bodies import BODY_READ, CLOSE_CONNECTION, DEADLINES, BodyDeadlines
from secure_maas.serving.errors import register_error_handler
from secure_maas.serving.headers import REQUEST_ID_HEADER, request_id
from secure_maas.serving.services import Services
from secure_maas.serving.views import admin, oip, ops, platform, tfserving, triton, unmatched

log = logging.getLogger(__name__)

EXTENSION = "secure_maas"
#: Methods the metrics name; any other (a client may send any token) is counted as "other", so
#: a caller cannot grow the number of metric series without bound.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: A query string in a log line: from the `?` that follows a path up to the next space or quote.
_QUERY = re.compile(r"(?<=[^\s\"'])\?[^\s\"']*")
#: The terminal colours werkzeug puts around its request lines.
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    preload: Iterable[str] = (),
    data_plane: Path | Sequence[Path] | None = None,
) -> Flask:
    """A ready app for `settings` (default: from the environment).

    `services` lets a caller share or fake the process's services (the app then does not own
    them: `close_app` leaves them open). `preload` names models (NAME, NAME:VERSION, NAME@LABEL)
    to load now rather than on first use; one that cannot be loaded is logged, not fatal.
    `data_plane` is the socket of the instance's model process, or their list in route order
    (under gunicorn): models run there, and this process never imports TensorFlow.
    """
    settings = settings or (services.settings if services is not None else load_settings())
    owned = services is None
    services = services or Services.build(settings, data_plane=data_plane)
    app = Flask("secure_maas.serving", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["SECURE_MAAS_OWNS_SERVICES"] = owned
    app.extensions[EXTENSION] = services
    app.extensions[DEADLINES] = BodyDeadlines()
    register_error_handler(app)
    unmatched.register(app)
    for blueprint in (tfserving.bp, platform.bp, oip.bp, triton.bp, admin.bp, ops.bp):
        app.register_blueprint(blueprint)
    console.register(app)
    _install_request_hooks(app, services)
    refs = list(preload)
    if refs:
        for ref, problem in services.models.preload(refs).items():
            if problem is None:
                log.info("preloaded %s", ref)
            else:
                log.error("could not preload %s: %s", ref, problem)
    return app


def _install_request_hooks(app: Flask, services: Services) -> None:
    metrics = services.metrics

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id(request.headers.get(REQUEST_ID_HEADER))

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id") or request_id(None)
        rule = request.url_rule
        endpoint = rule.endpoint if rule is not None else "unmatched"
        started = g.get("started")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        method = request.method if request.method in HTTP_METHODS else "other"
        metrics.observe_request(endpoint, method, response.status_code, elapsed)
        if _body_left_unread():
            request.environ[CLOSE_CONNECTION] = True
        return response


def _body_left_unread() -> bool:
    """Whether the request declared a body that was not read in full."""
    if request.environ.get(BODY_READ):
        return False
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return bool(request.content_length) or chunked


def services_of(app: Flask) -> Services:
    """The `Services` an app serves with."""
    found: Services = app.extensions[EXTENSION]
    return found


def close_app(app: Flask) -> None:
    """Release what `create_app` built for `app` (its services only when it owns them)."""
    deadlines = app.extensions.get(DEADLINES)
    if isinstance(deadlines, BodyDeadlines):
        deadlines.close()
    if app.config.get("SECURE_MAAS_OWNS_SERVICES"):
        services_of(app).close()


def redact_queries(text: str) -> str:
    """`text` (a log line, a request line) with every query string removed: `GET
    /v1/models?access_token=x HTTP/1.1` becomes `GET /v1/models HTTP/1.1`."""
    return _QUERY.sub("", text)


class DevelopmentRequestHandler(WSGIRequestHandler):
    """The development server's handler: its log lines (requests, bad request lines) have
    their query strings removed, and werkzeug's terminal colours, which a log file would keep
    as raw escape sequences."""

    def log(self, type: str, message: str, *args: Any) -> None:
        text = _COLOURS.sub("", message % args if args else message)
        super().log(type, "%s", escape_controls(redact_queries(text)))


def development_handler(settings: Settings) -> type[DevelopmentRequestHandler]:
    """The handler for `settings`: a connection whose socket stays silent for the body timeout
    plus 10 s is dropped (each connection has its own thread there; the body's own deadline is
    the pipeline's, see `BodyDeadlines`)."""
    seconds = settings.body_timeout.total_seconds() + 10
    return type("DevelopmentRequestHandler", (DevelopmentRequestHandler,), {"timeout": seconds})
