"""Ed25519 signatures over messages the caller has already framed.

Ed25519 needs no algorithm choice and signs deterministically (the same key and message always
give the same signature), which keeps sealed artifacts reproducible for known-answer tests.
Callers are responsible for domain separation: every message they sign starts with a label of
their own (`secure-maas/v1/signature` for artifacts), so a signature made for one purpose can
never be replayed as another.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from secure_maas.crypto.keys import Algorithm, InvalidKey, PrivateKey, PublicKey
from secure_maas.errors import SecureMaasError

SIGNATURE_BYTES = 64


class BadSignature(SecureMaasError):
    """The signature does not verify under the given public key; nothing more is said."""

    def __init__(self) -> None:
        super().__init__("signature verification failed")


def sign(key: PrivateKey, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of `message` by `key` (an Ed25519 private key)."""
    raw = key._key
    if key.algorithm is not Algorithm.ED25519 or not isinstance(raw, ed25519.Ed25519PrivateKey):
        raise InvalidKey(f"cannot sign with a {key.algorithm} key")
    return raw.sign(message)


def verify(key: PublicKey, signature: bytes, message: bytes) -> None:
    """Return when `signature` is `key`'s signature of `message`; raise `BadSignature` if not."""
    raw = key._key
    if key.algorithm is not Algorithm.ED25519 or not isinstance(raw, ed25519.Ed25519PublicKey):
        raise InvalidKey(f"cannot verify with a {key.algorithm} key")
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature
    try:
        raw.verify(signature, message)
    except InvalidSignature as exc:
        raise BadSignature from exc
