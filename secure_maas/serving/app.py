"""The Flask app factory: `create_app(settings)` wires the services to the blueprints.

No app exists at import time. `create_app` builds the process's `Services` (engine, verifier,
policy, audit writer, model cache, metrics) unless it is given one, registers the one JSON
error handler and the blueprints, and gives every response an `X-Request-Id` (the caller's,
when plain and short enough, else a fresh one; the same id is in the request's audit event).
`close_app(app)` releases what the app built: gunicorn calls it when a worker exits, the
development server when it stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flask import Flask, Response, g, request

from secure_maas.config import Settings, load_settings
from secure_maas.serving.errors import register_error_handler
from secure_maas.serving.headers import REQUEST_ID_HEADER, request_id
from secure_maas.serving.services import Services
from secure_maas.serving.views import admin, oip, ops, platform, tfserving, unmatched

log = logging.getLogger(__name__)

EXTENSION = "secure_maas"


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    preload: Iterable[str] = (),
) -> Flask:
    """A ready app for `settings` (default: from the environment).

    `services` lets a caller share or fake the process's services (the app then does not own
    them: `close_app` leaves them open). `preload` names models (NAME, NAME:VERSION, NAME@LABEL)
    to load now rather than on first use; one that cannot be loaded is logged, not fatal.
    """
    settings = settings or (services.settings if services is not None else load_settings())
    owned = services is None
    services = services or Services.build(settings)
    app = Flask("secure_maas.serving", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["SECURE_MAAS_OWNS_SERVICES"] = owned
    app.extensions[EXTENSION] = services
    register_error_handler(app)
    unmatched.register(app)
    for blueprint in (tfserving.bp, platform.bp, oip.bp, admin.bp, ops.bp):
        app.register_blueprint(blueprint)
    _install_request_hooks(app, services)
    refs = list(preload)
    if refs:
        for ref, problem in services.cache.preload(refs).items():
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
        metrics.observe_request(endpoint, request.method, response.status_code, elapsed)
        return response


def services_of(app: Flask) -> Services:
    """The `Services` an app serves with."""
    found: Services = app.extensions[EXTENSION]
    return found


def close_app(app: Flask) -> None:
    """Release what `create_app` built for `app` (nothing when its services were given)."""
    if app.config.get("SECURE_MAAS_OWNS_SERVICES"):
        services_of(app).close()
