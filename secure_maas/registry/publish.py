"""Publishing: seal a model's bytes into the store and register the version, together.

Order of operations, under the model's lock (row lock on PostgreSQL, BEGIN IMMEDIATE on SQLite):
allocate the next version number, seal straight into a temp file in the store and link it into
place, verify the written file with the keys the service will use, then insert the row and bump
the `models` counter; the transaction commits last. Any failure removes the file, so a version
is never visible without its artifact; a crash between link and commit leaves an unreferenced
file, which the next publish of that version replaces and `models verify` reports meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.crypto import (
    Attested,
    InvalidArtifact,
    SealInfo,
    Verified,
    authenticate_header,
    seal,
    verify_artifact,
)
from secure_maas.db.dialect import insert
from secure_maas.db.session import write_scope
from secure_maas.db.state import bump
from secure_maas.errors import SecureMaasError
from secure_maas.keys import KeyKind, Keyring
from secure_maas.registry.models import MODELS_SCOPE, Model, ModelVersion, Privacy
from secure_maas.registry.store import SealedStore, check_name
from secure_maas.timeutil import utcnow

log = logging.getLogger(__name__)

DP_FIELDS = (
    "epsilon",
    "delta",
    "noise_multiplier",
    "clip_norm",
    "batch_size",
    "sampling_rate",
    "epochs",
    "steps",
    "accountant",
    "statement",
    "preprocessing",
    "stats_noise_multiplier",
)


@dataclass(frozen=True)
class Provenance:
    """Where a model came from and what privacy it carries; stored on the version row and
    sealed into the artifact's authenticated metadata."""

    privacy: Privacy
    dp: dict[str, Any] | None = None
    dataset_name: str | None = None
    dataset_fingerprint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.privacy is Privacy.DP) != (self.dp is not None):
            raise SecureMaasError("a DP model needs its guarantee, and only a DP model has one")
        unknown = set(self.dp or {}) - set(DP_FIELDS)
        if unknown:
            raise SecureMaasError(f"unknown DP guarantee fields: {', '.join(sorted(unknown))}")

    def as_metadata(self) -> dict[str, Any]:
        return {
            "privacy": self.privacy.value,
            "dp": self.dp,
            "dataset": {"name": self.dataset_name, "fingerprint": self.dataset_fingerprint},
            **self.extra,
        }


def _lock_model(session: Session, name: str, actor: str, now: datetime) -> Model:
    session.execute(
        insert(session, Model)
        .values(name=name, created_by=actor, created_at=now)
        .on_conflict_do_nothing(index_elements=[Model.name])
    )
    return session.execute(
        sa.select(Model).where(Model.name == name).with_for_update()
    ).scalar_one()


def _check_written(
    store: SealedStore,
    relative: str,
    keyring: Keyring,
    service_id: str,
    publisher_id: str,
    info: SealInfo,
) -> None:
    """Read the new file back before the row is committed: a disk that lied fails here.

    A publishing host that holds only the service's public key (a separate training team)
    cannot decrypt, so it checks what the publisher's public key can: the framing, the name
    and version, the signature over the header and the body as written (hashed, not
    decrypted), and that both digests are the ones just sealed. The service checks
    decryptability at load time.
    """
    header = info.header
    signer = {publisher_id: keyring.public_key(publisher_id)}
    with store.open(relative) as handle:
        if keyring.get(service_id).private_file is None:
            checked: Verified | Attested = authenticate_header(
                handle,
                trusted_publishers=signer,
                expect_model=header.model,
                expect_version=header.version,
            )
        else:
            checked = verify_artifact(
                handle,
                private_keys={service_id: keyring.private_key(service_id)},
                trusted_publishers=signer,
                expect_model=header.model,
                expect_version=header.version,
            )
    if checked.ciphertext_digest != info.ciphertext_digest or checked.header != header:
        raise InvalidArtifact("digest_mismatch", "written artifact differs from what was sealed")


def publish(
    engine: Engine,
    store: SealedStore,
    keyring: Keyring,
    *,
    name: str,
    payload: bytes | bytearray | memoryview,
    signature: dict[str, Any],
    provenance: Provenance,
    created_by: str,
    now: datetime | None = None,
    record: Callable[[Session, ModelVersion], None] | None = None,
) -> ModelVersion:
    """Seal `payload` (an encoded model) as the next version of `name` and register it.

    `record(session, row)` runs inside the publishing transaction, after the row is written and
    before the commit: the caller's audit event commits with the version or not at all.
    """
    check_name(name)
    moment = now or utcnow()
    service = keyring.active(KeyKind.SERVICE)
    publisher = keyring.active(KeyKind.PUBLISHER)
    recipient = keyring.public_key(service.id)
    signer = keyring.private_key(publisher.id)
    metadata = {"signature": signature, **provenance.as_metadata()}
    written: str | None = None
    try:
        with write_scope(engine) as session:
            model = _lock_model(session, name, created_by, moment)
            last = session.execute(
                sa.select(sa.func.max(ModelVersion.version)).where(
                    ModelVersion.model_id == model.id
                )
            ).scalar_one()
            version = int(last or 0) + 1
            relative = store.relative_path(name, version)
            if (store.root / relative).exists():
                log.warning(
                    "removing unreferenced artifact %s left by an interrupted publish", relative
                )
                store.remove(relative)
            sealed: list[SealInfo] = []

            def produce(out: BinaryIO) -> None:
                sealed.append(
                    seal(
                        payload,
                        out,
                        model=name,
                        version=version,
                        metadata=metadata,
                        recipient=recipient,
                        recipient_key_id=service.id,
                        signer=signer,
                        signer_key_id=publisher.id,
                    )
                )

            store.write(name, version, produce)
            written = relative
            info = sealed[0]
            _check_written(store, relative, keyring, service.id, publisher.id, info)
            dp = provenance.dp or {}
            row = ModelVersion(
                model_id=model.id,
                version=version,
                artifact_path=relative,
                plaintext_sha256=info.plaintext_sha256,
                ciphertext_digest=info.ciphertext_digest,
                size_bytes=info.size,
                plaintext_bytes=len(payload),
                publisher_key_id=publisher.id,
                service_key_id=service.id,
                signature=signature,
                privacy=provenance.privacy.value,
                **{f"dp_{key}": dp.get(key) for key in DP_FIELDS},
                dataset_name=provenance.dataset_name,
                dataset_fingerprint=provenance.dataset_fingerprint,
                created_at=moment,
                created_by=created_by,
            )
            session.add(row)
            bump(session, MODELS_SCOPE)
            session.flush()
            row.model = model
            if record is not None:
                record(session, row)
    except BaseException:
        if written is not None:
            store.remove(written)
        raise
    return row
