"""The request headers the pipeline reads: `Authorization`, `X-Request-Id`, `Content-Type`.

Each reader takes the raw header values and either returns what the pipeline may use or raises
the `ApiError` the caller sees. Nothing here trusts a header further than its syntax.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from secure_maas.serving.errors import ApiError

REQUEST_ID_HEADER = "X-Request-Id"
#: An incoming request id is kept when it is this short and this plain (it lands in the audit
#: log and in a response header); anything else is replaced by a fresh one.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,64}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
#: RFC 6750's b64token: what may follow "Bearer ".
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
#: RFC 6750 section 3: the challenge a 401 carries, and its `error` for a refused token.
CHALLENGE = 'Bearer realm="secure-maas"'
INVALID_TOKEN_CHALLENGE = 'Bearer realm="secure-maas", error="invalid_token"'  # noqa: S105

#: Content types a JSON body may come with. `application/x-www-form-urlencoded` is what
#: `curl -d` sends, and TF Serving's own documentation calls it that way (it ignores the type),
#: so it is read as JSON too; an absent type is accepted as well.
JSON_TYPES = frozenset({"", "application/json", "application/x-www-form-urlencoded"})
#: OIP v2 infer also takes the binary tensor extension's body (`tritonclient` sends no type).
INFER_TYPES = JSON_TYPES | {"application/octet-stream"}


class AuthError(ApiError):
    """A 401: `reason` says why, for the audit log only."""

    def __init__(self, message: str, reason: str, *, invalid_token: bool = False) -> None:
        challenge = INVALID_TOKEN_CHALLENGE if invalid_token else CHALLENGE
        code = "invalid_token" if invalid_token else "unauthenticated"
        super().__init__(401, message, reason_code=code, headers={"WWW-Authenticate": challenge})
        self.reason = reason


def bearer_token(values: Sequence[str]) -> str:
    """The token of the one `Authorization: Bearer <token>` header, or a 401 `AuthError`."""
    if not values:
        raise AuthError(
            "missing bearer token: send 'Authorization: Bearer <token>'", "no Authorization header"
        )
    if len(values) > 1:
        raise AuthError(_MALFORMED, "several Authorization headers")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(_MALFORMED, "Authorization scheme is not Bearer")
    if not _B64TOKEN.fullmatch(token):
        raise AuthError(_MALFORMED, "Authorization header holds no well-formed bearer token")
    return token


_MALFORMED = "malformed Authorization header: expected 'Bearer <token>'"


def request_id(value: str | None) -> str:
    """The caller's `X-Request-Id` when it is plain and short enough, else a fresh random id."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return secrets.token_hex(16)


def check_content_type(mimetype: str, allowed: frozenset[str]) -> None:
    """Refuse (415) a body whose content type is not one `allowed` (JSON's `+json` types pass
    wherever JSON does)."""
    kind = mimetype.strip().lower()
    if kind in allowed:
        return
    if "application/json" in allowed and kind.startswith("application/") and kind.endswith("+json"):
        return
    shown = kind[:64] if kind.isprintable() else "(unprintable)"
    raise ApiError(
        415,
        f"unsupported content type {shown!r}: send the body as application/json",
    )
