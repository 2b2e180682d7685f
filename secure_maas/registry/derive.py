"""Versions made from a published version by post-processing: a smaller model, the same promise.

Post-processing cannot weaken differential privacy: whatever is computed from a DP model alone,
or from it and data that is not private, is DP at the same (ε, δ). A derived version therefore
carries its parent's privacy class, guarantee and dataset exactly, read from the parent's
authenticated header, never its database row (the ε a rule enforces must be one a publisher
signed), and adds `derived_from`: the parent's version and plaintext digest, what was done, and
the public data it used (its digest and row count; the data itself is never stored).

Only this module reads a parent to derive from it, so every derived version is made the same
way: verify and decrypt the parent into memory (`artifacts.open_version`), refuse a parent that
is itself derived in a way that cannot be repeated (a quantized model is not quantized again),
transform in memory, publish the result as the model's next version with the caller's audit
event in the publishing transaction (`publish.publish`).
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
from secure_maas.registry import artifacts, catalog
from secure_maas.registry.container import Array
from secure_maas.registry.models import ModelVersion, Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.signed import SignedFacts, check_row
from secure_maas.registry.store import SealedStore

QUANTIZE = "quantize"
#: TFLite's post-training quantization modes, in the order the CLI lists them.
QUANTIZE_MODES = ("float16", "dynamic", "int8")


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
    from secure_maas.registry import lite
    from secure_maas.registry.codec import LoadedModel, decode_model

    parsed = catalog.ModelRef.parse(ref)
    with session_scope(session_factory(engine)) as session:
        row = catalog.resolve(session, parsed)
        name, version = row.model.name, row.version
        opened = artifacts.open_version(store, keyring, row)
        signed = check_row(row, opened.header, opened.publisher_key_id)
    try:
        if "derived_from" in opened.header.metadata:
            raise DeriveRefused(
                f"{name}:{version} is itself derived: quantize the model it came from"
            )
        model = decode_model(opened.plaintext)
    finally:
        opened.wipe()
    if not isinstance(model, LoadedModel):
        raise DeriveRefused(f"{name}:{version} is already quantized")
    arrays = calibration.arrays if calibration is not None else None
    payload = lite.quantize(model.model, model.signature, mode, arrays)
    detail: dict[str, Any] = {"mode": mode}
    if calibration is not None:
        rows = min(len(next(iter(calibration.arrays.values()))), lite.MAX_CALIBRATION_ROWS)
        detail["calibration"] = calibration.record(rows)
    derived_from = {
        "version": version,
        "plaintext_sha256": signed.plaintext_sha256,
        "transform": QUANTIZE,
        **detail,
    }

    def in_transaction(session: Session, published: ModelVersion) -> None:
        if record is not None:
            record(session, published, derived_from)

    published = publish(
        engine,
        store,
        keyring,
        name=name,
        payload=payload,
        signature=model.signature.to_dict(),
        provenance=provenance_of(signed, derived_from),
        created_by=created_by,
        record=in_transaction,
    )
    return Derived(published, version, derived_from, signed)
