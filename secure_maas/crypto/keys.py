"""Key generation, encoding and fingerprints.

Formats on disk: private keys as unencrypted PKCS#8 PEM (the folder's permissions protect them,
as with ssh host keys), public keys as SubjectPublicKeyInfo PEM, the symmetric audit key as one
line of base64. A fingerprint is `SHA256:` plus the unpadded base64 of SHA-256 over the raw
public key (ssh's form); for the symmetric key it is over an HMAC of a fixed label, so it
identifies the key without revealing anything about it.

The post-quantum service key (ML-KEM-768 + X25519, the hybrid KEM of HPKE) has no single
standard file form, and cryptography's hybrid key object cannot be serialised at all. It is kept
as its two halves, each in its standard encoding: the private file is the ML-KEM-768 PKCS#8 PEM
block (the 64-byte seed form) followed by the X25519 PKCS#8 PEM block, the public file the two
SubjectPublicKeyInfo blocks in the same order, and its raw public key (the fingerprint input) is
the ML-KEM-768 public key followed by the X25519 one, 1184 + 32 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from secure_maas.errors import SecureMaasError

SECRET_KEY_BYTES = 32
_SECRET_FINGERPRINT_LABEL = b"secure-maas/key-fingerprint/v1"


class InvalidKey(SecureMaasError):
    """Key material could not be read as the algorithm it claims to be."""


class Algorithm(StrEnum):
    X25519 = "x25519"  # service encryption key (HPKE recipient)
    ED25519 = "ed25519"  # publisher and JWT signing keys
    HMAC_SHA256 = "hmac-sha256"  # audit MAC key (symmetric)
    MLKEM768_X25519 = "mlkem768-x25519"  # post-quantum hybrid service key (HPKE recipient)


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n[A-Za-z0-9+/=\r\n]*?-----END \1-----")


def _pem_halves(data: bytes) -> tuple[bytes, bytes] | None:
    """The two PEM blocks of a hybrid key file, or None when the file is not exactly two."""
    blocks = [match.group(0) for match in _PEM_BLOCK.finditer(data)]
    if len(blocks) != 2 or _PEM_BLOCK.sub(b"", data).strip():
        return None
    return blocks[0] + b"\n", blocks[1] + b"\n"


@dataclass(frozen=True, repr=False)
class MlKemX25519Public:
    """The public half of a hybrid service key, kept as its two standard halves."""

    mlkem: mlkem.MLKEM768PublicKey
    x25519: x25519.X25519PublicKey

    def public_bytes_raw(self) -> bytes:
        return self.mlkem.public_bytes_raw() + self.x25519.public_bytes_raw()

    def public_bytes(
        self, encoding: serialization.Encoding, format: serialization.PublicFormat
    ) -> bytes:
        return self.mlkem.public_bytes(encoding, format) + self.x25519.public_bytes(
            encoding, format
        )

    def hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        return hpke.MLKEM768X25519PublicKey(self.mlkem, self.x25519)


@dataclass(frozen=True, repr=False)
class MlKemX25519Private:
    """The private half of a hybrid service key (see the module docstring for its encoding)."""

    mlkem: mlkem.MLKEM768PrivateKey
    x25519: x25519.X25519PrivateKey

    @classmethod
    def generate(cls) -> MlKemX25519Private:
        try:
            return cls(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())
        except UnsupportedAlgorithm as exc:
            raise InvalidKey("this build of cryptography has no ML-KEM-768") from exc

    def public_key(self) -> MlKemX25519Public:
        return MlKemX25519Public(self.mlkem.public_key(), self.x25519.public_key())

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        return self.mlkem.private_bytes(
            encoding, format, encryption_algorithm
        ) + self.x25519.private_bytes(encoding, format, encryption_algorithm)

    def hpke_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(self.mlkem, self.x25519)


_PrivateObject = x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey | MlKemX25519Private
_PublicObject = x25519.X25519PublicKey | ed25519.Ed25519PublicKey | MlKemX25519Public
_PRIVATE_TYPES: dict[
    Algorithm,
    type[x25519.X25519PrivateKey] | type[ed25519.Ed25519PrivateKey] | type[MlKemX25519Private],
] = {
    Algorithm.X25519: x25519.X25519PrivateKey,
    Algorithm.ED25519: ed25519.Ed25519PrivateKey,
    Algorithm.MLKEM768_X25519: MlKemX25519Private,
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


def _load_halves(
    data: bytes, *, name: str, kind: str, load: Callable[[bytes], object]
) -> tuple[object, object]:
    halves = _pem_halves(data)
    if halves is None:
        raise InvalidKey(f"{name} is not a readable {Algorithm.MLKEM768_X25519} {kind} key")
    try:
        return load(halves[0]), load(halves[1])
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidKey(f"{name} holds an unreadable {kind} key (corrupted?)") from exc


def _load_hybrid_private(data: bytes, *, name: str) -> PrivateKey:
    pq, classic = _load_halves(
        data,
        name=name,
        kind="private",
        load=lambda pem: serialization.load_pem_private_key(pem, None),
    )
    if isinstance(pq, mlkem.MLKEM768PrivateKey) and isinstance(classic, x25519.X25519PrivateKey):
        return PrivateKey(Algorithm.MLKEM768_X25519, MlKemX25519Private(pq, classic))
    raise InvalidKey(f"{name} does not hold ML-KEM-768 then X25519 private keys")


def _load_hybrid_public(data: bytes, *, name: str) -> PublicKey:
    pq, classic = _load_halves(
        data, name=name, kind="public", load=serialization.load_pem_public_key
    )
    if isinstance(pq, mlkem.MLKEM768PublicKey) and isinstance(classic, x25519.X25519PublicKey):
        return PublicKey(Algorithm.MLKEM768_X25519, MlKemX25519Public(pq, classic))
    raise InvalidKey(f"{name} does not hold ML-KEM-768 then X25519 public keys")


def load_private(algorithm: Algorithm, data: bytes, *, name: str) -> PrivateKey:
    """Parse a PEM private key of `algorithm`; `name` (a path) goes into the error message."""
    if algorithm is Algorithm.MLKEM768_X25519:
        return _load_hybrid_private(data, name=name)
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
    if algorithm is Algorithm.MLKEM768_X25519:
        return _load_hybrid_public(data, name=name)
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
