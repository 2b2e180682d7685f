"""Key generation, encoding and fingerprints.

Formats on disk: private keys as unencrypted PKCS#8 PEM (the folder's permissions protect them,
as with ssh host keys), public keys as SubjectPublicKeyInfo PEM, the symmetric audit key as one
line of base64. A fingerprint is `SHA256:` plus the unpadded base64 of SHA-256 over the raw
public key (ssh's form); for the symmetric key it is over an HMAC of a fixed label, so it
identifies the key without revealing anything about it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from secure_maas.errors import SecureMaasError

SECRET_KEY_BYTES = 32
_SECRET_FINGERPRINT_LABEL = b"secure-maas/key-fingerprint/v1"


class InvalidKey(SecureMaasError):
    """Key material could not be read as the algorithm it claims to be."""


class Algorithm(StrEnum):
    X25519 = "x25519"  # service encryption key (HPKE recipient)
    ED25519 = "ed25519"  # publisher and JWT signing keys
    HMAC_SHA256 = "hmac-sha256"  # audit MAC key (symmetric)


_PrivateObject = x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey
_PublicObject = x25519.X25519PublicKey | ed25519.Ed25519PublicKey
_PRIVATE_TYPES: dict[Algorithm, type[x25519.X25519PrivateKey] | type[ed25519.Ed25519PrivateKey]] = {
    Algorithm.X25519: x25519.X25519PrivateKey,
    Algorithm.ED25519: ed25519.Ed25519PrivateKey,
}
_PUBLIC_TYPES: dict[Algorithm, type[x25519.X25519PublicKey] | type[ed25519.Ed25519PublicKey]] = {
    Algorithm.X25519: x25519.X25519PublicKey,
    Algorithm.ED25519: ed25519.Ed25519PublicKey,
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _fingerprint(material: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(material).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class PublicKey:
    """An opaque public key handle; pass it back to the recipes in this package."""

    algorithm: Algorithm
    _key: _PublicObject = field(repr=False)

    @property
    def raw(self) -> bytes:
        return self._key.public_bytes_raw()

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.raw)

    def pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        """The RFC 8037 JWK of an Ed25519 key (`kty` OKP); other algorithms have none."""
        if self.algorithm is not Algorithm.ED25519:
            raise InvalidKey(f"{self.algorithm} keys have no JWK form here")
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64(self.raw)}


@dataclass(frozen=True)
class PrivateKey:
    """An opaque private key handle; its repr never shows key material."""

    algorithm: Algorithm
    _key: _PrivateObject = field(repr=False)

    def public_key(self) -> PublicKey:
        return PublicKey(self.algorithm, self._key.public_key())

    def pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class SecretKey:
    """A symmetric key (the audit MAC key); its repr never shows the bytes."""

    material: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return _fingerprint(hmac.new(self.material, _SECRET_FINGERPRINT_LABEL, "sha256").digest())

    def encode(self) -> bytes:
        return base64.b64encode(self.material) + b"\n"


@dataclass(frozen=True)
class GeneratedKey:
    """A freshly made key in its on-disk encodings: `private` is secret, `public` is not."""

    algorithm: Algorithm
    private: bytes = field(repr=False)
    public: bytes | None
    fingerprint: str


def generate(algorithm: Algorithm) -> GeneratedKey:
    """A new key of `algorithm`, encoded for the keyring folder."""
    if algorithm is Algorithm.HMAC_SHA256:
        secret = SecretKey(secrets.token_bytes(SECRET_KEY_BYTES))
        return GeneratedKey(algorithm, secret.encode(), None, secret.fingerprint)
    private = PrivateKey(algorithm, _PRIVATE_TYPES[algorithm].generate())
    public = private.public_key()
    return GeneratedKey(algorithm, private.pem(), public.pem(), public.fingerprint)


def load_private(algorithm: Algorithm, data: bytes, *, name: str) -> PrivateKey:
    """Parse a PEM private key of `algorithm`; `name` (a path) goes into the error message."""
    expected = _PRIVATE_TYPES.get(algorithm)
    if expected is None:
        raise InvalidKey(f"{name}: {algorithm} is not an asymmetric algorithm")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidKey(f"{name} is not a readable {algorithm} private key (corrupted?)") from exc
    if not isinstance(key, expected):
        raise InvalidKey(f"{name} holds a {type(key).__name__}, expected {algorithm}")
    return PrivateKey(algorithm, key)


def load_public(algorithm: Algorithm, data: bytes, *, name: str) -> PublicKey:
    """Parse a PEM public key of `algorithm`; `name` goes into the error message."""
    expected = _PUBLIC_TYPES.get(algorithm)
    if expected is None:
        raise InvalidKey(f"{name}: {algorithm} is not an asymmetric algorithm")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidKey(f"{name} is not a readable {algorithm} public key (corrupted?)") from exc
    if not isinstance(key, expected):
        raise InvalidKey(f"{name} holds a {type(key).__name__}, expected {algorithm}")
    return PublicKey(algorithm, key)


def load_secret(data: bytes, *, name: str) -> SecretKey:
    """Parse the one-line base64 encoding of a symmetric key of exactly 32 bytes."""
    try:
        material = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey(f"{name} is not a readable secret key (corrupted?)") from exc
    if len(material) != SECRET_KEY_BYTES:
        raise InvalidKey(f"{name} holds {len(material)} bytes, expected {SECRET_KEY_BYTES}")
    return SecretKey(material)
