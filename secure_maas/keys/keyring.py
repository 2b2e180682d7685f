"""The keyring folder: creating, reading, rotating and retiring keys.

Layout of `keys/` (the folder is 0700, every private file 0600):

    keyring.json        the manifest (see records.py), no secrets
    jwks.json           public JWT keys that still verify, for token consumers
    <id>.key            a private key (PEM) or the audit key (base64)
    <id>.pub            the matching public key (PEM)

Key files are named by id, and an id is derived from the key's fingerprint, so a new key never
lands on an existing file; files are written with `atomic_write(overwrite=False)` before the
manifest that names them, so a crash leaves at worst an unreferenced file, never a manifest
pointing at a half-written key; `jwks.json` is written just before the manifest, so it never
lags the active JWT key; a command's audit event is written before both (`BeforeSave`), so a
crash leaves at worst an event for a change that did not take effect, never a change in effect
unrecorded. Mutations hold an exclusive lock on `keys/.lock`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from secure_maas.atomic import atomic_write
from secure_maas.crypto import (
    Algorithm,
    GeneratedKey,
    InvalidKey,
    PrivateKey,
    PublicKey,
    SecretKey,
    generate,
    load_private,
    load_public,
    load_secret,
)
from secure_maas.errors import SecureMaasError
from secure_maas.keys.permissions import FOLDER_MODE, check_folder, read_key_file
from secure_maas.keys.records import (
    MANIFEST_NAME,
    KeyKind,
    KeyRecord,
    KeyStatus,
    read_manifest,
    write_manifest,
)
from secure_maas.timeutil import utcnow

JWKS_NAME = "jwks.json"
LOCK_NAME = ".lock"

#: Called with the key a change creates or alters, once its files are written and before the
#: manifest takes the change: the admin commands record the change's audit event here, so a
#: change is never in effect unrecorded. If it raises, the change does not happen (the new key
#: files stay unreferenced, as after a crash).
BeforeSave = Callable[[KeyRecord], None]

#: Given (the key rotated out, the new key) once the new key's files are written, a context
#: that yields the old key's rotation point (the last audit seq it may MAC); the manifest is
#: written inside it, and the change is void if it raises. Audit keys only: see
#: `secure_maas.audit.rotation`, which holds the chain's lock across the manifest write.
RotationPoint = Callable[[KeyRecord, KeyRecord], AbstractContextManager[int]]


class KeyringError(SecureMaasError):
    """The keyring is missing, incomplete, or an operation on it is not allowed."""


@dataclass(frozen=True)
class InitReport:
    """What `Keyring.init` did: the keys it created and whether it tightened the folder."""

    folder: Path
    created: tuple[KeyRecord, ...]
    tightened: bool

    @property
    def changed(self) -> bool:
        return bool(self.created) or self.tightened


def _key_id(kind: KeyKind, fingerprint: str) -> str:
    return f"{kind.id_prefix}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


def _require_folder(folder: Path) -> None:
    if not folder.exists() and not folder.is_symlink():
        raise KeyringError(f"keys folder {folder} does not exist: run `secure-maas keys init`")
    if not folder.is_dir() and not folder.is_symlink():
        raise KeyringError(f"keys folder {folder} is not a folder")
    check_folder(folder)


def _algorithm(kind: KeyKind, *, pq: bool) -> Algorithm:
    if not pq:
        return kind.algorithm
    if kind is not KeyKind.SERVICE:
        raise KeyringError(f"--pq applies to service keys only, not {kind} keys")
    return Algorithm.MLKEM768_X25519


def _rotated_algorithm(
    kind: KeyKind, previous: KeyRecord, *, pq: bool, classical: bool
) -> Algorithm:
    """The new key's algorithm: the previous key's family unless a flag says otherwise.

    A rotation must never quietly drop post-quantum protection: models re-wrapped to a
    classical key (`models rewrap`) would lose it. So a hybrid service key is replaced by a
    hybrid one unless `classical` asks for the downgrade explicitly.
    """
    if pq and classical:
        raise KeyringError("--pq and --classical contradict each other: give one of them")
    if kind is not KeyKind.SERVICE:
        if pq or classical:
            flag = "--pq" if pq else "--classical"
            raise KeyringError(f"{flag} applies to service keys only, not {kind} keys")
        return kind.algorithm
    if pq:
        return Algorithm.MLKEM768_X25519
    if classical:
        return Algorithm.X25519
    return previous.algorithm


def is_kem_downgrade(previous: Algorithm, new: Algorithm) -> bool:
    """Whether a service key rotation from `previous` to `new` drops post-quantum protection."""
    return previous is Algorithm.MLKEM768_X25519 and new is not Algorithm.MLKEM768_X25519


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Keyring:
    """A view of the keys folder. Build it with `Keyring.open()` or `Keyring.init()`."""

    def __init__(self, folder: Path, records: list[KeyRecord]) -> None:
        self.folder = folder
        self._records = list(records)

    # -- opening and initialising ---------------------------------------------------------

    @classmethod
    def open(cls, folder: Path) -> Keyring:
        """Read the keyring in `folder`, refusing a folder others can enter."""
        _require_folder(folder)
        records = read_manifest(folder)
        if not records:
            raise KeyringError(f"no keyring in {folder}: run `secure-maas keys init`")
        return cls(folder, records)

    @classmethod
    def init(
        cls, folder: Path, *, pq: bool = False, now: datetime | None = None
    ) -> tuple[Keyring, InitReport]:
        """Create whatever the keyring lacks; existing keys are checked and never replaced.

        `pq` makes a missing service key the post-quantum hybrid (ML-KEM-768 + X25519), for
        models stored for years; it does not touch a service key that already exists.
        """
        if folder.is_symlink():
            check_folder(folder)  # refused, naming the fix: never chmod through a link
        if folder.exists() and not folder.is_dir():
            raise KeyringError(f"keys folder {folder} is a file, not a folder")
        tightened = False
        if not folder.exists():
            folder.mkdir(mode=FOLDER_MODE, parents=True)
        elif (folder.stat().st_mode & 0o077) != 0 and folder.stat().st_uid == os.geteuid():
            # init is the one command that may fix the folder: a fresh clone has it at 0755.
            os.chmod(folder, FOLDER_MODE)
            tightened = True
        created: list[KeyRecord] = []
        with _locked(folder):
            keyring = cls(folder, read_manifest(folder))
            keyring.check()
            for kind in KeyKind:
                if keyring._active_or_none(kind) is None:
                    algorithm = _algorithm(kind, pq=pq and kind is KeyKind.SERVICE)
                    created.append(keyring._add(kind, KeyStatus.ACTIVE, now or utcnow(), algorithm))
            if created:
                keyring._save()
            elif not (folder / JWKS_NAME).exists():
                keyring._write_jwks()
        return keyring, InitReport(folder, tuple(created), tightened)

    # -- reading --------------------------------------------------------------------------

    @property
    def records(self) -> tuple[KeyRecord, ...]:
        return tuple(self._records)

    def get(self, key_id: str) -> KeyRecord:
        for record in self._records:
            if record.id == key_id:
                return record
        raise KeyringError(f"no key with id {key_id!r} in {self.folder / MANIFEST_NAME}")

    def _active_or_none(self, kind: KeyKind) -> KeyRecord | None:
        for record in self._records:
            if record.kind is kind and record.status is KeyStatus.ACTIVE:
                return record
        return None

    def active(self, kind: KeyKind) -> KeyRecord:
        """The key new work of `kind` uses."""
        record = self._active_or_none(kind)
        if record is None:
            raise KeyringError(
                f"no active {kind} key in {self.folder}: run `secure-maas keys init`"
            )
        return record

    def usable(self, kind: KeyKind) -> list[KeyRecord]:
        """Every key of `kind` that may still decrypt or verify, active first."""
        keys = [r for r in self._records if r.kind is kind and r.usable]
        return sorted(keys, key=lambda r: r.status is not KeyStatus.ACTIVE)

    def _read(self, name: str | None, record: KeyRecord, *, private: bool) -> tuple[Path, bytes]:
        """The file's path and bytes: one open, no link, checked on the descriptor read."""
        if name is None:
            raise KeyringError(f"key {record.id} has no {'private' if private else 'public'} file")
        path = self.folder / name
        try:
            return path, read_key_file(self.folder, name, private=private)
        except FileNotFoundError:
            raise KeyringError(
                f"{path} is missing (listed in {self.folder / MANIFEST_NAME})"
            ) from None
        except OSError as exc:
            raise KeyringError(f"cannot read {path}: {exc.strerror}") from exc

    def _read_private(self, record: KeyRecord) -> tuple[Path, bytes]:
        return self._read(record.private_file, record, private=True)

    def _mismatch(self, path: Path) -> InvalidKey:
        return InvalidKey(f"{path} does not match the fingerprint in {self.folder / MANIFEST_NAME}")

    def private_key(self, key_id: str) -> PrivateKey:
        """Load a private key, refusing loose permissions and a fingerprint mismatch."""
        record = self.get(key_id)
        path, data = self._read_private(record)
        key = load_private(record.algorithm, data, name=str(path))
        if key.public_key().fingerprint != record.fingerprint:
            raise self._mismatch(path)
        return key

    def secret_key(self, key_id: str) -> SecretKey:
        """Load a symmetric key (the audit key), with the same checks as `private_key`."""
        record = self.get(key_id)
        path, data = self._read_private(record)
        key = load_secret(data, name=str(path))
        if key.fingerprint != record.fingerprint:
            raise self._mismatch(path)
        return key

    def public_key(self, key_id: str) -> PublicKey:
        """Load a public key and check it against its recorded fingerprint."""
        record = self.get(key_id)
        path, data = self._read(record.public_file, record, private=False)
        key = load_public(record.algorithm, data, name=str(path))
        if key.fingerprint != record.fingerprint:
            raise self._mismatch(path)
        return key

    def service_private_keys(self) -> dict[str, PrivateKey]:
        """Every service key that may still decrypt, by id (for opening sealed artifacts)."""
        return {r.id: self.private_key(r.id) for r in self.usable(KeyKind.SERVICE)}

    def trusted_publishers(self) -> dict[str, PublicKey]:
        """Every publisher key whose signature the service accepts, by id."""
        return {r.id: self.public_key(r.id) for r in self.usable(KeyKind.PUBLISHER)}

    def check(self) -> None:
        """Load every key that is still usable, so a corrupted or exposed file is found now."""
        for record in self._records:
            if not record.usable:
                continue
            if record.public_file is not None:
                self.public_key(record.id)
            if record.private_file is None:
                continue
            if record.kind is KeyKind.AUDIT:
                self.secret_key(record.id)
            else:
                self.private_key(record.id)

    def jwks(self) -> dict[str, Any]:
        """RFC 7517 key set of the JWT keys that still verify tokens."""
        keys = []
        for record in self.usable(KeyKind.JWT):
            jwk = self.public_key(record.id).jwk()
            keys.append({**jwk, "kid": record.id, "alg": "EdDSA", "use": "sig"})
        return {"keys": keys}

    # -- changing -------------------------------------------------------------------------

    def rotate(
        self,
        kind: KeyKind,
        *,
        pq: bool = False,
        classical: bool = False,
        now: datetime | None = None,
        before_save: BeforeSave | None = None,
        rotation_point: RotationPoint | None = None,
    ) -> KeyRecord:
        """Make a new active key of `kind`; the old one stays for decryption/verification.

        A service key keeps the family of the key it replaces: `pq` makes the new key the
        post-quantum hybrid, `classical` makes it X25519, even when that drops post-quantum
        protection (see `is_kem_downgrade`); neither flag applies to other kinds. `before_save`
        (see `BeforeSave`) runs once the key files are written, before the change takes effect.
        `rotation_point` (see `RotationPoint`) records how far the old audit key may verify.
        """
        with _locked(self.folder):
            self._records = read_manifest(self.folder)
            previous = self.active(kind)
            algorithm = _rotated_algorithm(kind, previous, pq=pq, classical=classical)
            created = self._add(kind, KeyStatus.ACTIVE, now or utcnow(), algorithm)
            self._replace(previous.with_status(KeyStatus.PREVIOUS))
            if rotation_point is None:
                self._save(before_save, created)
                return created
            with rotation_point(previous, created) as last_seq:
                # The key rotated out, and any older one rotated before rotation points were
                # recorded: none of them MACs anything after `last_seq`.
                for record in self._records:
                    if record.kind is kind and record.id != created.id and record.last_seq is None:
                        self._replace(replace(record, last_seq=last_seq))
                self._save(before_save, created)
        return created

    def retire(
        self, key_id: str, *, now: datetime | None = None, before_save: BeforeSave | None = None
    ) -> KeyRecord:
        """Stop trusting a key for anything. The active key must be rotated away first."""
        with _locked(self.folder):
            self._records = read_manifest(self.folder)
            record = self.get(key_id)
            if record.status is KeyStatus.RETIRED:
                raise KeyringError(f"key {key_id} is already retired")
            if record.status is KeyStatus.ACTIVE:
                raise KeyringError(
                    f"key {key_id} is the active {record.kind} key: "
                    f"run `secure-maas keys rotate --kind {record.kind}` first"
                )
            if record.kind is KeyKind.AUDIT:
                raise KeyringError(
                    f"audit key {key_id} cannot be retired: the audit chains it signed need it "
                    "to verify"
                )
            retired = record.with_status(KeyStatus.RETIRED, at=now or utcnow())
            self._replace(retired)
            self._save(before_save, retired)
        return retired

    def trust_publisher(
        self,
        public_pem: bytes,
        *,
        label: str | None = None,
        now: datetime | None = None,
        before_save: BeforeSave | None = None,
    ) -> KeyRecord:
        """Accept artifacts signed by another team's publisher key (its public half only)."""
        key = load_public(KeyKind.PUBLISHER.algorithm, public_pem, name="publisher key")
        with _locked(self.folder):
            self._records = read_manifest(self.folder)
            key_id = _key_id(KeyKind.PUBLISHER, key.fingerprint)
            if any(r.id == key_id for r in self._records):
                raise KeyringError(f"publisher key {key_id} is already in the keyring")
            public_file = f"{key_id}.pub"
            atomic_write(self.folder / public_file, key.pem(), mode=0o644, overwrite=False)
            record = KeyRecord(
                id=key_id,
                kind=KeyKind.PUBLISHER,
                algorithm=key.algorithm,
                status=KeyStatus.TRUSTED,
                created_at=now or utcnow(),
                fingerprint=key.fingerprint,
                private_file=None,
                public_file=public_file,
                label=label,
            )
            self._records.append(record)
            self._save(before_save, record)
        return record

    def _add(
        self, kind: KeyKind, status: KeyStatus, now: datetime, algorithm: Algorithm
    ) -> KeyRecord:
        generated: GeneratedKey = generate(algorithm)
        key_id = _key_id(kind, generated.fingerprint)
        private_file = f"{key_id}.key"
        atomic_write(self.folder / private_file, generated.private, mode=0o600, overwrite=False)
        public_file = None
        if generated.public is not None:
            public_file = f"{key_id}.pub"
            atomic_write(self.folder / public_file, generated.public, mode=0o644, overwrite=False)
        record = KeyRecord(
            id=key_id,
            kind=kind,
            algorithm=generated.algorithm,
            status=status,
            created_at=now,
            fingerprint=generated.fingerprint,
            private_file=private_file,
            public_file=public_file,
        )
        self._records.append(record)
        return record

    def _replace(self, updated: KeyRecord) -> None:
        self._records = [updated if r.id == updated.id else r for r in self._records]

    def _save(
        self, before_save: BeforeSave | None = None, changed: KeyRecord | None = None
    ) -> None:
        if before_save is not None and changed is not None:
            before_save(changed)  # recorded before it takes effect; raising stops it here
        # jwks.json before the manifest: a crash between them leaves token consumers trusting
        # a new key nothing signs with yet (rotate) or already refusing one being retired,
        # never a manifest whose active JWT key the published key set lacks.
        self._write_jwks()
        write_manifest(self.folder, self._records)

    def _write_jwks(self) -> None:
        data = (json.dumps(self.jwks(), indent=2, sort_keys=True) + "\n").encode()
        atomic_write(self.folder / JWKS_NAME, data, mode=0o644)
