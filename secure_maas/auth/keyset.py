"""The keys tokens may be verified with, by `kid`, and the one algorithm each allows.

Two sources, each reloaded when its file changes:
- the keyring's JWT keys (Ed25519, so `EdDSA` only), for tokens this service issued;
- for a configured external identity provider, a JWKS file whose keys may be `EdDSA`, `ES256`
  (P-256) or `RS256` (RSA of at least 2048 bits). Keys for anything else (encryption keys, other
  algorithms, HMAC secrets) are skipped with a warning: a JWKS file never widens the allow-list.

The algorithm is bound to the key, not taken from the token: a token whose `alg` differs from
its key's algorithm is refused before any signature check, which is what defeats `alg=none`,
HMAC-with-the-public-key and RSA-where-EdDSA-is-expected tokens.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jwt import PyJWK
from jwt.exceptions import PyJWKError, PyJWTError

from secure_maas.errors import SecureMaasError
from secure_maas.keys import KeyKind, Keyring
from secure_maas.keys.records import MANIFEST_NAME

log = logging.getLogger(__name__)

LOCAL_ALGORITHM = "EdDSA"
EXTERNAL_ALGORITHMS = frozenset({"EdDSA", "ES256", "RS256"})
MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 1 << 20


class KeySetError(SecureMaasError):
    """A key set cannot be read (missing file, bad JSON, duplicate key ids)."""


@dataclass(frozen=True)
class VerificationKey:
    """One public key: its id, its only algorithm, and the issuer whose tokens it verifies."""

    kid: str
    algorithm: str
    issuer: str
    external: bool
    jwk: PyJWK = field(repr=False, compare=False)


class KeySource(Protocol):
    def keys(self) -> Mapping[str, VerificationKey]:
        """The keys as last loaded, by kid."""
        ...

    def refresh(self) -> bool:
        """Reload if the underlying file changed; return whether the keys changed."""
        ...


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class _WatchedFile:
    """Keys read from one file, read again only when its (inode, size, mtime) changes."""

    def __init__(self, path: Path, issuer: str) -> None:
        self._path = path
        self._issuer = issuer
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, VerificationKey] = {}
        self.refresh()

    def keys(self) -> Mapping[str, VerificationKey]:
        return self._keys

    def refresh(self) -> bool:
        stamp = _stamp(self._path)
        if stamp is not None and stamp == self._stamp:
            return False
        self._keys = self._load(stamp)
        self._stamp = stamp
        return True

    def _load(self, stamp: tuple[int, int, int] | None) -> dict[str, VerificationKey]:
        raise NotImplementedError


class KeyringKeys(_WatchedFile):
    """The keyring's usable JWT keys; reloaded when `keys/keyring.json` changes (rotation)."""

    def __init__(self, folder: Path, issuer: str) -> None:
        self._folder = folder
        super().__init__(folder / MANIFEST_NAME, issuer)

    def _load(self, stamp: tuple[int, int, int] | None) -> dict[str, VerificationKey]:
        keyring = Keyring.open(self._folder)
        loaded = {}
        for record in keyring.usable(KeyKind.JWT):
            jwk = keyring.public_key(record.id).jwk()
            loaded[record.id] = VerificationKey(
                record.id, LOCAL_ALGORITHM, self._issuer, False, PyJWK(jwk, LOCAL_ALGORITHM)
            )
        return loaded


def algorithm_of(jwk: Mapping[str, Any]) -> str | None:
    """The one allowed algorithm for a JWK, or None when it may not verify tokens here."""
    if jwk.get("use", "sig") != "sig":
        return None
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        algorithm = "EdDSA"
    elif kty == "EC" and crv == "P-256":
        algorithm = "ES256"
    elif kty == "RSA":
        algorithm = "RS256"
    else:
        return None
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        return None
    return algorithm


def parse_jwks(data: bytes, *, issuer: str, name: str) -> dict[str, VerificationKey]:
    """The usable signing keys of a JWKS document; unusable ones are skipped with a warning."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KeySetError(f"{name} is not JSON: {exc}") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeySetError(f'{name} is not a JWKS document (expected {{"keys": [...]}})')
    keys: dict[str, VerificationKey] = {}
    for entry in entries:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not kid:
            log.warning("%s: skipping a key without a kid", name)
            continue
        if kid in keys:
            raise KeySetError(f"{name}: key id {kid!r} appears twice")
        algorithm = algorithm_of(entry)
        if algorithm is None or algorithm not in EXTERNAL_ALGORITHMS:
            log.warning("%s: skipping key %s (not an EdDSA/ES256/RS256 signing key)", name, kid)
            continue
        try:
            jwk = PyJWK(entry, algorithm)
        except (PyJWKError, PyJWTError) as exc:
            raise KeySetError(f"{name}: key {kid!r} is unreadable: {exc}") from exc
        if algorithm == "RS256" and getattr(jwk.key, "key_size", 0) < MIN_RSA_BITS:
            log.warning("%s: skipping key %s (RSA under %d bits)", name, kid, MIN_RSA_BITS)
            continue
        keys[kid] = VerificationKey(kid, algorithm, issuer, True, jwk)
    return keys


class JwksFileKeys(_WatchedFile):
    """An external identity provider's JWKS, from a file the operator keeps current."""

    def _load(self, stamp: tuple[int, int, int] | None) -> dict[str, VerificationKey]:
        if stamp is None:
            raise KeySetError(f"external JWKS file {self._path} does not exist")
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            raise KeySetError(f"cannot read {self._path}: {exc.strerror}") from exc
        if len(data) > MAX_JWKS_BYTES:
            raise KeySetError(f"{self._path} is larger than {MAX_JWKS_BYTES} bytes")
        return parse_jwks(data, issuer=self._issuer, name=str(self._path))


def merged(sources: list[KeySource]) -> dict[str, VerificationKey]:
    """All sources' keys by kid; a kid in two sources is an error, never a silent choice."""
    keys: dict[str, VerificationKey] = {}
    for source in sources:
        for kid, key in source.keys().items():
            if kid in keys:
                raise KeySetError(f"key id {kid!r} is both a local and an external key")
            keys[kid] = key
    return keys
