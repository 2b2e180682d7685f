"""What the client raises: one exception type per answer a caller handles differently."""

from __future__ import annotations


class ClientError(Exception):
    """An answer other than success. `status` is the HTTP status (0 when none came back),
    `message` the server's `error` text, `request_id` its `X-Request-Id` (find the request's
    audit event with it)."""

    def __init__(self, status: int, message: str, *, request_id: str | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.request_id = request_id


class BadRequest(ClientError):
    """400: the body is malformed or does not fit the model's signature."""


class Unauthenticated(ClientError):
    """401: no token, a malformed Authorization header, or a refused token."""


class Forbidden(ClientError):
    """403: the access policy does not allow this request."""


class NotFound(ClientError):
    """404: no such model or version, or one this token may not see."""


class TooLarge(ClientError):
    """413: the body is over the server's limit."""


class UnsupportedMediaType(ClientError):
    """415: the body's content type was refused."""


class QuotaExceeded(ClientError):
    """429: over quota; `retry_after` is the seconds the server asks to wait."""

    def __init__(
        self, status: int, message: str, *, request_id: str | None = None, retry_after: int = 0
    ) -> None:
        super().__init__(status, message, request_id=request_id)
        self.retry_after = retry_after


class Unavailable(ClientError):
    """503: the server cannot serve now (it fails closed); `retry_after` when it said."""

    def __init__(
        self, status: int, message: str, *, request_id: str | None = None, retry_after: int = 0
    ) -> None:
        super().__init__(status, message, request_id=request_id)
        self.retry_after = retry_after


class ServerError(ClientError):
    """Any other failure status (500 and the like)."""


class ConnectionFailed(ClientError):
    """No answer: the server could not be reached, or the connection broke (status 0)."""


BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    413: TooLarge,
    415: UnsupportedMediaType,
    429: QuotaExceeded,
    503: Unavailable,
}
