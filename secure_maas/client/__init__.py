"""A small Python SDK for consumers and auditors of a secure-maas server.

    from secure_maas.client import Client, Forbidden
    client = Client("http://127.0.0.1:8501", token)
    client.predict("digits", [[0.0] * 64])          # TF Serving row format
    client.infer("digits", {"x": batch})            # Open Inference Protocol v2
    client.models(), client.metadata("digits")      # what this token may see, DP guarantee
    client.audit(since="1h", decision="deny")       # auditors (audit:read)

Standard library only (numpy for `infer`), so it imports in milliseconds; errors are typed by
HTTP status (`Unauthenticated`, `Forbidden`, `NotFound`, `BadRequest`, `TooLarge`,
`QuotaExceeded` with `retry_after`, `Unavailable`).
"""

from secure_maas.client.client import Client
from secure_maas.client.errors import (
    BadRequest,
    ClientError,
    ConnectionFailed,
    Forbidden,
    NotFound,
    QuotaExceeded,
    ServerError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)

__all__ = [
    "BadRequest",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "Forbidden",
    "NotFound",
    "QuotaExceeded",
    "ServerError",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
]
