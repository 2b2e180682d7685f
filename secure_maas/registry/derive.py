"""Versions made from a published version by post-processing: a smaller model, the same promise.

Post-processing cannot weaken differential privacy: whatever is computed from a DP model alone,
or from it and data that is not private, is DP at the same (ε, δ). A derived version therefore
carries its parent's privacy class, guarantee and dataset exactly, read from the parent's
authenticated header, never its database row (the ε a rule enforces must be one a publisher
signed), and adds `derived_from`: the parent's version and plaintext digest, what was done, and
the public data it used (its digest and row count; the data itself is never stored).

Only this module reads a parent to derive from it, so every derived version is made the same
way: verify and decrypt the parent into memory (`artifacts.open_version`), refuse a parent that
is itself derived (derive from the trained or imported model instead, so `derived_from` always
names one), transform in memory, publish the result as the model's next version with the
caller's audit event in the publishing transaction (`publish.publish`).

Two transformations: `quantize_version` here (TFLite, `registry.lite`), and
`training.distill.distill_version` (a smaller student trained on the teacher's outputs over
public inputs), which uses `open_parent` and `publish_derived`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.db.session import session_factory, session_scope
from secure_maas.errors import SecureMaasError
from secure_maas.keys import Keyring
from secure_maas.registry import artifacts, catalog, lite
from secure_maas.registry.container import Array
from secure_maas.registry.models import ModelVersion, Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.signed import SignedFacts, check_row
from secure_maas.registry.store import SealedStore

QUANTIZE = "quantize"
DISTILL = "distill"


class DeriveRefused(SecureMaasError):
    """The parent cannot be transformed this way; the message says why."""


@dataclass(frozen=True)
class PublicData:
    """Data declared public that a transformation reads: what is recorded of it."""

    source: str
    sha256: str
    arrays: Mapping[str, Array]

    def record(self, rows: int) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "rows": rows}


@dataclass(frozen=True)
class Derived:
    """A derived version as published, and its parent."""

    row: ModelVersion
    parent_version: int
    derived_from: dict[str, Any]
    guarantee: SignedFacts


def provenance_of(parent: SignedFacts, derived_from: dict[str, Any]) -> Provenance:
    """The parent's signed privacy, guarantee and dataset, with `derived_from` added."""
    return Provenance(
        Privacy(parent.privacy),
        dp=dict(parent.dp) if parent.dp is not None else None,
        dataset_name=parent.dataset_name,
        dataset_fingerprint=parent.dataset_fingerprint,
        extra={"derived_from": derived_from},
    )


@dataclass(frozen=True)
class Parent:
    """A verified, decoded parent version and what its publisher signed."""

    name: str
    version: int
    signed: SignedFacts
    model: Any  # codec.ServedModel


def open_parent(engine: Engine, store: SealedStore, keyring: Keyring, ref: str) -> Parent:
    """The version `ref` names, verified, decrypted into memory and decoded (its plaintext is
    wiped once decoded). A version that is itself derived is refused: derive from its parent,
    so every derived version names a trained or imported one."""
    from secure_maas.registry.codec import decode_model

    parsed = catalog.ModelRef.parse(ref)
    with session_scope(session_factory(engine)) as session:
        row = catalog.resolve(session, parsed)
        name, version = row.model.name, row.version
        opened = artifacts.open_version(store, keyring, row)
        signed = check_row(row, opened.header, opened.publisher_key_id)
    try:
        if "derived_from" in opened.header.metadata:
            raise DeriveRefused(f"{name}:{version} is itself derived: use the model it came from")
        model = decode_model(opened.plaintext)
    finally:
        opened.wipe()
    return Parent(name, version, signed, model)


def publish_derived(
    engine: Engine,
    store: SealedStore,
    keyring: Keyring,
    parent: Parent,
    *,
    payload: bytes,
    signature: dict[str, Any],
    derived_from: dict[str, Any],
    created_by: str,
    record: Callable[[Session, ModelVersion, dict[str, Any]], None] | None,
) -> Derived:
    """Publish `payload` as the parent model's next version with the parent's guarantee."""
    record_from = {
        "version": parent.version,
        "plaintext_sha256": parent.signed.plaintext_sha256,
        **derived_from,
    }

    def in_transaction(session: Session, published: ModelVersion) -> None:
        if record is not None:
            record(session, published, record_from)

    published = publish(
        engine,
        store,
        keyring,
        name=parent.name,
        payload=payload,
        signature=signature,
        provenance=provenance_of(parent.signed, record_from),
        created_by=created_by,
        record=in_transaction,
    )
    return Derived(published, parent.version, record_from, parent.signed)


def quantize_version(
    engine: Engine,
    store: SealedStore,
    keyring: Keyring,
    ref: str,
    *,
    mode: str,
    calibration: PublicData | None,
    created_by: str,
    record: Callable[[Session, ModelVersion, dict[str, Any]], None] | None = None,
) -> Derived:
    """Quantize the version `ref` names (NAME, NAME:V, NAME@LABEL) with TFLite in `mode` and
    publish the result as NAME's next version.

    `calibration` is int8's public data (required there, refused otherwise). `record(session,
    row, derived_from)` runs in the publishing transaction (the caller's audit event).
    Raises `DeriveRefused` for a parent that cannot be quantized, `UnsupportedModel` for a model
    TFLite cannot convert, and the registry's errors for a missing or refused artifact.
    """
    from secure_maas.registry.codec import LoadedModel

    parent = open_parent(engine, store, keyring, ref)
    model = parent.model
    if not isinstance(model, LoadedModel):
        raise DeriveRefused(f"{parent.name}:{parent.version} is already quantized")
    arrays = calibration.arrays if calibration is not None else None
    payload = lite.quantize(model.model, model.signature, mode, arrays)
    detail: dict[str, Any] = {"transform": QUANTIZE, "mode": mode}
    if calibration is not None:
        rows = min(len(next(iter(calibration.arrays.values()))), lite.MAX_CALIBRATION_ROWS)
        detail["calibration"] = calibration.record(rows)
    return publish_derived(
        engine,
        store,
        keyring,
        parent,
        payload=payload,
        signature=model.signature.to_dict(),
        derived_from=detail,
        created_by=created_by,
        record=record,
    )
