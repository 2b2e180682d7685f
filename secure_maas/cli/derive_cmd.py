"""`secure-maas models quantize`: smaller versions of published models, same guarantee.

The command parses and prints; `registry.derive` does the work (and imports TensorFlow, so it
is imported inside the command). A refusal is audited before it is reported, like a refused
import.
"""

from __future__ import annotations

import getpass
from typing import Any

import click
from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent
from secure_maas.cli.context import AppContext
from secure_maas.cli.recording import os_event, os_user, record_in, record_now
from secure_maas.db.session import session_factory, session_scope
from secure_maas.errors import SecureMaasError
from secure_maas.registry import catalog
from secure_maas.registry.derive import QUANTIZE_MODES
from secure_maas.registry.models import ModelVersion
from secure_maas.registry.signature import ServingSignature


@click.command("quantize")
@click.argument("ref")
@click.option(
    "--mode",
    type=click.Choice(QUANTIZE_MODES),
    required=True,
    help="float16: weights as float16; dynamic: int8 weights, float activations; int8: "
    "weights and activations int8, calibrated on --calibration.",
)
@click.option(
    "--calibration",
    metavar="npz:PATH",
    help="Data declared public to calibrate int8 on (arrays named as the model's inputs, or x "
    "for a one-input model); a registered dataset is refused.",
)
@click.pass_obj
def quantize(app: AppContext, ref: str, mode: str, calibration: str | None) -> None:
    """Quantize REF (NAME, NAME:VERSION or NAME@LABEL) with TensorFlow Lite and publish the
    result as NAME's next version.

    Post-processing: the new version carries REF's guarantee (the same ε and δ) and records
    REF as its parent. It serves through the same APIs, on the TFLite interpreter (CPU).

    \b
    Examples:
        secure-maas models quantize digits --mode dynamic
        secure-maas models quantize digits:3 --mode int8 --calibration npz:public.npz
    """
    if (mode == "int8") != (calibration is not None):
        raise click.UsageError("--calibration is required for --mode int8, and only for it")
    parsed = catalog.ModelRef.parse(ref)
    try:
        derived = _quantize(app, ref, mode, calibration)
    except SecureMaasError as exc:
        _record_refusal(app, parsed.name, ref, mode, exc)
        raise
    row = derived.row
    guarantee = derived.guarantee
    epsilon = (guarantee.dp or {}).get("epsilon")
    promise = f"ε={epsilon:g}" if epsilon is not None else f"privacy {guarantee.privacy}"
    click.echo(
        f"published {row.model.name}:{row.version} ({mode}, {row.plaintext_bytes} bytes, "
        f"from version {derived.parent_version}; {promise}, inherited)"
    )


def _quantize(app: AppContext, ref: str, mode: str, calibration: str | None) -> Any:
    from secure_maas.registry import derive

    public = None
    if calibration is not None:
        from secure_maas.training.public_data import load_public

        public = load_public(calibration, _input_names(app, ref), app.engine())

    def record(session: Session, row: ModelVersion, derived_from: dict[str, Any]) -> None:
        used = derived_from.get("calibration")
        calibrated = f", calibrated on {used['source']} ({used['rows']} rows)" if used else ""
        event = os_event(
            AdminAction.MODEL_PUBLISH,
            f"quantized version {derived_from['version']} ({mode}{calibrated}); "
            "guarantee inherited",
            model=row.model.name,
            model_version=row.version,
            digest=row.ciphertext_digest,
            parent=derived_from["version"],
            calibration_sha256=used["sha256"] if used else None,
        )
        record_in(session, app, event)

    return derive.quantize_version(
        app.engine(),
        app.store(),
        app.keyring(),
        ref,
        mode=mode,
        calibration=public,
        created_by=getpass.getuser(),
        record=record,
    )


def _input_names(app: AppContext, ref: str) -> list[str]:
    """The input names of the version `ref` names (to read calibration arrays by)."""
    with session_scope(session_factory(app.engine())) as session:
        row = catalog.resolve(session, catalog.ModelRef.parse(ref))
        return list(ServingSignature.from_dict(row.signature).input_names)


def _record_refusal(app: AppContext, name: str, ref: str, mode: str, refusal: Exception) -> None:
    event = AuditEvent(
        action=AdminAction.MODEL_PUBLISH,
        actor=os_user(),
        actor_kind=ActorKind.OS,
        decision=AuditDecision.DENY,
        model=name,
        reason_code="quantize-refused",
        reason=f"quantize {ref} ({mode}) refused: {refusal}"[:1000],
    )
    record_now(app, event)
