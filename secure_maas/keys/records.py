"""What the keyring knows about each key, and the manifest that records it.

`keys/keyring.json` is the keyring's index: id, kind, algorithm, status, creation time,
fingerprint and file names. It holds no secret, so `keys list` never touches key material.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from secure_maas.atomic import atomic_write
from secure_maas.crypto import Algorithm
from secure_maas.errors import SecureMaasError
from secure_maas.keys.permissions import read_key_file
from secure_maas.timeutil import isoformat, parse_isoformat

MANIFEST_NAME = "keyring.json"
MANIFEST_FORMAT = "secure-maas-keyring/1"


class KeyKind(StrEnum):
    SERVICE = "service"  # X25519: artifacts are sealed to it; only the server decrypts
    PUBLISHER = "publisher"  # Ed25519: signs artifacts; the service trusts listed publishers
    JWT = "jwt"  # Ed25519: signs access tokens; published in jwks.json
    AUDIT = "audit"  # 32-byte HMAC-SHA256 key chaining the audit log

    @property
    def algorithm(self) -> Algorithm:
        return _ALGORITHMS[self]

    @property
    def id_prefix(self) -> str:
        return _PREFIXES[self]


_ALGORITHMS = {
    KeyKind.SERVICE: Algorithm.X25519,
    KeyKind.PUBLISHER: Algorithm.ED25519,
    KeyKind.JWT: Algorithm.ED25519,
    KeyKind.AUDIT: Algorithm.HMAC_SHA256,
}
_PREFIXES = {
    KeyKind.SERVICE: "svc",
    KeyKind.PUBLISHER: "pub",
    KeyKind.JWT: "jwt",
    KeyKind.AUDIT: "audit",
}


class KeyStatus(StrEnum):
    ACTIVE = "active"  # used for new work: seal to, sign with, issue with, MAC with
    PREVIOUS = "previous"  # replaced by a rotation; still decrypts and verifies
    TRUSTED = "trusted"  # another team's publisher public key, accepted on artifacts
    RETIRED = "retired"  # no longer trusted for anything


@dataclass(frozen=True)
class KeyRecord:
    id: str
    kind: KeyKind
    algorithm: Algorithm
    status: KeyStatus
    created_at: datetime
    fingerprint: str
    private_file: str | None
    public_file: str | None
    retired_at: datetime | None = None
    label: str | None = None
    #: Audit keys rotated out: the last audit chain position (seq) this key may MAC, recorded
    #: here, on the key host, where whoever writes the database cannot move it.
    last_seq: int | None = None

    @property
    def usable(self) -> bool:
        """Whether the key may still decrypt or verify (anything but retired)."""
        return self.status is not KeyStatus.RETIRED

    def with_status(self, status: KeyStatus, *, at: datetime | None = None) -> KeyRecord:
        return replace(self, status=status, retired_at=at if status is KeyStatus.RETIRED else None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = isoformat(self.created_at)
        data["retired_at"] = isoformat(self.retired_at) if self.retired_at else None
        if self.last_seq is None:
            del data["last_seq"]
        return {
            key: str(value) if isinstance(value, StrEnum) else value for key, value in data.items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        return cls(
            id=str(data["id"]),
            kind=KeyKind(data["kind"]),
            algorithm=Algorithm(data["algorithm"]),
            status=KeyStatus(data["status"]),
            created_at=parse_isoformat(data["created_at"]),
            fingerprint=str(data["fingerprint"]),
            private_file=data.get("private_file"),
            public_file=data.get("public_file"),
            retired_at=parse_isoformat(data["retired_at"]) if data.get("retired_at") else None,
            label=data.get("label"),
            last_seq=_last_seq(data.get("last_seq")),
        )


def _last_seq(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ValueError(f"last_seq must be a non-negative integer, not {value!r}")
    return value


class ManifestError(SecureMaasError):
    """The keyring manifest cannot be read."""


def read_manifest(folder: Path) -> list[KeyRecord]:
    """The records of `folder`'s manifest; an absent manifest is an empty keyring.

    Read as the key files are (`read_key_file`): the manifest says which keys are trusted, so
    a link or a file others can write is refused like a loose private key.
    """
    path = folder / MANIFEST_NAME
    try:
        data = read_key_file(folder, MANIFEST_NAME, private=False)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(data.decode("utf-8"))
        if document.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown format {document.get('format')!r}")
        return [KeyRecord.from_json(item) for item in document["keys"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"{path} is corrupted: {exc}") from exc


def write_manifest(folder: Path, records: list[KeyRecord]) -> None:
    document = {"format": MANIFEST_FORMAT, "keys": [record.to_json() for record in records]}
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(folder / MANIFEST_NAME, data, mode=0o600)
