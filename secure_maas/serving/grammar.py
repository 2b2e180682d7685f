"""TF Serving's path grammar for /v1/models, as its REST handler matches it.

TF Serving (`http_rest_api_util.cc`) matches a request path whole against two case-insensitive
regular expressions, one per method (`W` is `(?:(?:/versions/(\\d+))|(?:/labels/([^/:]+)))?`)::

    POST (?i)/v1/models/([^/:]+)W:(classify|regress|predict)
    GET  (?i)/v1/models(?:/([^/:]+))?W(?:\\/(metadata))?

Anything else under /v1 is `400 {"error": "Malformed request: METHOD PATH"}`. So a name never
holds a colon or a slash (`GET /v1/models/m:predict` is malformed, not a model named
`m:predict`), a version is digits only, and `/V1/MODELS/m/VERSIONS/1:PREDICT` is the predict of
model `m` (names and labels keep their case). `match` reads a path this way and names the view
that serves it; `/v1/models` alone is our model listing (TF Serving answers it "Missing model
name in request."). HEAD is read as GET, as Flask does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = r"(?P<name>[^/:]+)"
_WHICH = r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
_PREDICTION = re.compile(
    rf"/v1/models/{_NAME}{_WHICH}:(?P<verb>classify|regress|predict)", re.IGNORECASE
)
_STATUS = re.compile(rf"/v1/models(?:/{_NAME}{_WHICH}(?:/(?P<metadata>metadata))?)?", re.IGNORECASE)
_UNDER_V1 = re.compile(r"/v1(?:/|$)", re.IGNORECASE)
#: The largest version TF Serving converts (an int64); a longer one is "Failed to convert".
MAX_INT64 = (1 << 63) - 1


@dataclass(frozen=True)
class Route:
    """The view a TF Serving path names (`blueprint.function`) and its URL values."""

    endpoint: str
    values: dict[str, str]


def under_v1(path: str) -> bool:
    """Whether TF Serving's handler would take `path` (`(?i)/v1/.*`)."""
    return _UNDER_V1.match(path) is not None


def match(method: str, path: str) -> Route | None:
    """The view `method` and `path` name in TF Serving's grammar, or None (malformed)."""
    if method == "POST":
        found = _PREDICTION.fullmatch(path)
        if found is None:
            return None
        return Route(f"tfserving.{found['verb'].lower()}", _values(found))
    if method not in ("GET", "HEAD"):
        return None
    found = _STATUS.fullmatch(path)
    if found is None:
        return None
    if found["name"] is None:
        return Route("platform.models", {})
    endpoint = "tfserving.metadata" if found["metadata"] else "tfserving.status"
    return Route(endpoint, _values(found))


def version_overflows(route: Route) -> bool:
    """Whether the route's version is too large for TF Serving to convert (a 400 there)."""
    version = route.values.get("version")
    return version is not None and (len(version) > 19 or int(version) > MAX_INT64)


def _values(found: re.Match[str]) -> dict[str, str]:
    values = {"name": found["name"]}
    for key in ("version", "label"):
        if found[key] is not None:
            values[key] = found[key]
    return values
