"""Minting tokens with jwcrypto, an implementation independent of the one under test (pyjwt).

Used to prove interoperability (a token jwcrypto signs with our key verifies) and to build
attacks that our own issuer could never produce.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from jwcrypto import jwk, jws

from secure_maas.keys import KeyKind, Keyring


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def keyring_jwk(keyring: Keyring, kid: str | None = None) -> jwk.JWK:
    """The keyring's (active) JWT private key as a jwcrypto key."""
    key_id = kid or keyring.active(KeyKind.JWT).id
    return jwk.JWK.from_pem(keyring.private_key(key_id).pem())


def sign(key: jwk.JWK, header: dict[str, Any], payload: bytes | dict[str, Any]) -> str:
    """A compact JWS of `payload` (claims or raw bytes) with exactly `header` protected."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    token = jws.JWS(body)
    token.add_signature(key, None, json.dumps(header))
    return str(token.serialize(compact=True))


def claims(
    now: datetime,
    *,
    subject: str = "alice",
    issuer: str = "secure-maas",
    audience: str | list[str] = "secure-maas",
    lifetime: int = 600,
    jti: str = "jti-0001",
    **extra: Any,
) -> dict[str, Any]:
    issued = int(now.timestamp())
    return {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "jti": jti,
        **extra,
    }
