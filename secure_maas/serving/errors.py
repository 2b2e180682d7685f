"""HTTP errors: one exception type for views and one JSON error handler for the whole app.

Every error a caller sees is `{"error": "<message>"}` with the right status, as TF Serving
answers; a 401 carries `WWW-Authenticate: Bearer`. Nothing else reaches a caller: an unexpected
exception is logged with its traceback and answered with a fixed 500 message.

A message often quotes what the caller sent (a model name, a signature name, a JSON key), and
it is also the audit reason of the request and what a client prints. So every message is
escaped here, where all of them pass (`audit.text.escape_controls`: no raw control, format or
separator character ever leaves), whatever the code that built it did; code that quotes a
caller's value uses `audit.text.quote` so the value also stays unambiguous.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from secure_maas.audit.text import escape_controls

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success; `message` is safe to show to the caller (escaped)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        message = escape_controls(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason_code = reason_code or _CODES.get(status, "error")
        self.headers = dict(headers or {})


_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "quota_exceeded",
    503: "unavailable",
}


def unavailable(message: str = "service unavailable") -> ApiError:
    return ApiError(503, message)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """`{"error": message}` with `status`: the one place an error body is made."""
    response = jsonify({"error": escape_controls(message)})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handler(app: Flask) -> None:
    """The one handler: ApiError, werkzeug's HTTP errors, and anything unexpected."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.message, error.headers)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = {
            404: "not found",
            405: "method not allowed",
            413: "request body too large",
        }.get(status, error.name.lower())
        allowed = getattr(error, "valid_methods", None)
        headers = {"Allow": ", ".join(allowed)} if status == 405 and allowed else {}
        return error_response(status, message, headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal error")
