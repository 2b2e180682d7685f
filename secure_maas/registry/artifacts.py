"""Reading sealed artifacts back: open into memory, verify without loading, rewrap to a new key.

Every check the envelope makes (signature by a trusted publisher, identity, every chunk) is
joined here by the registry's own: the digests recorded when the version was published must
match the file, so a validly signed artifact from another publish cannot stand in for this one.
Failures raise `InvalidArtifact` (opaque message; `code`/`reason` for logs and audit).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, joinedload

from secure_maas.crypto import (
    Attested,
    InvalidArtifact,
    Opened,
    Verified,
    authenticate_header,
    inspect_artifact,
    open_artifact,
    rewrap,
    verify_artifact,
)
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import KeyKind, Keyring
from secure_maas.registry.models import Model, ModelVersion
from secure_maas.registry.signed import SignedFacts, check_row, header_facts
from secure_maas.registry.store import SealedStore

log = logging.getLogger(__name__)


def _check_row(row: ModelVersion, checked: Verified | Attested) -> SignedFacts:
    """The row against what was verified: digests first, then every signed fact."""
    if checked.ciphertext_digest != row.ciphertext_digest:
        raise InvalidArtifact("digest_mismatch", "ciphertext digest differs from the registry's")
    if checked.header.plaintext_sha256 != row.plaintext_sha256:
        raise InvalidArtifact("digest_mismatch", "plaintext digest differs from the registry's")
    return check_row(row, checked.header, checked.publisher_key_id)


def open_version(store: SealedStore, keyring: Keyring, row: ModelVersion) -> Opened:
    """Verify and decrypt one version into memory (the caller wipes it after loading).

    The row is checked against the verified header (`signed.check_row`): a row whose privacy,
    guarantee, dataset or serving signature differs is refused like a tampered artifact."""
    private_keys, trusted = keyring.service_private_keys(), keyring.trusted_publishers()
    with store.reading(row.artifact_path) as handle:
        opened = open_artifact(
            handle,
            private_keys=private_keys,
            trusted_publishers=trusted,
            expect_model=row.model.name,
            expect_version=row.version,
            max_plaintext=row.plaintext_bytes,
        )
    try:
        _check_row(row, opened)
    except InvalidArtifact:
        opened.wipe()
        raise
    return opened


def signed_facts(
    store: SealedStore,
    keyring: Keyring,
    row: ModelVersion,
    *,
    hash_body: bool = False,
    reconcile: bool = True,
) -> SignedFacts:
    """The facts `row`'s publisher signed, checked against the row, without decrypting.

    Needs only the trusted publishers' public keys. Without `hash_body` the body is not read
    (the row's ciphertext digest goes into the signature check); with it the body is hashed
    and must match the row's digest too. Raises `InvalidArtifact` (`row_mismatch` names the
    fields that differ). With `reconcile=False` the header's facts are returned as signed,
    without comparing the rest of the row (to show what the publisher signed)."""
    trusted = keyring.trusted_publishers()
    with store.reading(row.artifact_path) as handle:
        attested = authenticate_header(
            handle,
            trusted_publishers=trusted,
            expect_model=row.model.name,
            expect_version=row.version,
            ciphertext_digest=None if hash_body else row.ciphertext_digest,
        )
    if not reconcile:
        return header_facts(attested.header, attested.publisher_key_id)
    return _check_row(row, attested)


def verify_version(store: SealedStore, keyring: Keyring, row: ModelVersion) -> Verified:
    """Every check of `open_version` without keeping the plaintext (for `models verify`)."""
    private_keys, trusted = keyring.service_private_keys(), keyring.trusted_publishers()
    with store.reading(row.artifact_path) as handle:
        checked = verify_artifact(
            handle,
            private_keys=private_keys,
            trusted_publishers=trusted,
            expect_model=row.model.name,
            expect_version=row.version,
        )
    _check_row(row, checked)
    return checked


@dataclass(frozen=True)
class Finding:
    """One line of a `models verify` report."""

    model: str
    version: int | None
    path: str
    ok: bool
    code: str
    reason: str


def _rows(session: Session, name: str | None) -> list[ModelVersion]:
    query = (
        sa.select(ModelVersion)
        .join(Model)
        .options(joinedload(ModelVersion.model))
        .order_by(Model.name, ModelVersion.version)
    )
    if name is not None:
        query = query.where(Model.name == name)
    return list(session.execute(query).scalars())


def verify_all(
    session: Session, store: SealedStore, keyring: Keyring, name: str | None = None
) -> Iterator[Finding]:
    """Check every artifact (or those of `name`), then report files that no row references.

    Each row is first compared with its signed header (publisher key only, body hashed, not
    decrypted; a difference is reported as `row_mismatch` naming the fields), then the
    artifact is decrypted and checked whole."""
    rows = _rows(session, name)
    for row in rows:
        try:
            signed_facts(store, keyring, row, hash_body=True)
            verify_version(store, keyring, row)
        except InvalidArtifact as exc:
            yield Finding(
                row.model.name, row.version, row.artifact_path, False, exc.code, exc.reason
            )
        else:
            yield Finding(row.model.name, row.version, row.artifact_path, True, "ok", "intact")
    known = {row.artifact_path for row in rows}
    for relative in store.files():
        model = relative.split("/", 1)[0]
        if relative not in known and (name is None or model == name):
            yield Finding(
                model,
                None,
                relative,
                False,
                "orphan_file",
                "file has no registry row (an interrupted publish?)",
            )


@dataclass(frozen=True)
class RewrapReport:
    rewrapped: list[str]
    already: list[str]


def rewrap_all(engine: Engine, store: SealedStore, keyring: Keyring) -> RewrapReport:
    """Move every artifact's data key to the active service key, without touching bodies.

    Idempotent and restartable: each file is judged by the key its keyblock names (not by the
    row), replaced atomically only after the new file verifies, then the row is updated; an
    interrupted run leaves every file decryptable and the next run finishes the rest.
    """
    active = keyring.active(KeyKind.SERVICE)
    recipient = keyring.public_key(active.id)
    private_keys = keyring.service_private_keys()
    trusted = keyring.trusted_publishers()
    factory = session_factory(engine)
    report = RewrapReport([], [])
    with session_scope(factory) as session:
        ids = [(row.id, row.artifact_path) for row in _rows(session, None)]
    for row_id, relative in ids:
        with store.open(relative) as handle:
            current = inspect_artifact(handle).service_key_id
        if current != active.id:
            with session_scope(factory) as session:
                row = session.get(ModelVersion, row_id, options=[joinedload(ModelVersion.model)])
                if row is None:
                    continue
                name, version = row.model.name, row.version

            def check(path: Path, name: str = name, version: int = version) -> None:
                with open(path, "rb") as candidate:
                    verify_artifact(
                        candidate,
                        private_keys={active.id: private_keys[active.id]},
                        trusted_publishers=trusted,
                        expect_model=name,
                        expect_version=version,
                    )

            with store.open(relative) as source:

                def produce(out: BinaryIO, source: io.BufferedReader = source) -> None:
                    rewrap(
                        source,
                        out,
                        old_private_keys=private_keys,
                        new_recipient=recipient,
                        new_key_id=active.id,
                    )

                store.replace(relative, produce, check)
            report.rewrapped.append(relative)
            log.info("rewrapped %s from %s to %s", relative, current, active.id)
        else:
            report.already.append(relative)
        with store.open(relative) as handle:
            size = inspect_artifact(handle).size
        with session_scope(factory) as session:
            row = session.get(ModelVersion, row_id)
            if row is not None and (row.service_key_id != active.id or row.size_bytes != size):
                row.service_key_id, row.size_bytes = active.id, size
    return report
