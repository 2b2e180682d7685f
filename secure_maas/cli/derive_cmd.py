"""`secure-maas models quantize` and `models distill`: smaller versions, the same guarantee.

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
from secure_maas.registry.lite import MODES as QUANTIZE_MODES
from secure_maas.registry.models import ModelVersion
from secure_maas.registry.signature import ServingSignature
from secure_maas.training.options import ARCHITECTURES


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


def _record_refusal(app: AppContext, name: str, ref: str, what: str, refusal: Exception) -> None:
    """Audit a refused quantize or distill (`what`: the mode, or "distill, ARCH")."""
    code = "distill-refused" if what.startswith("distill") else "quantize-refused"
    event = AuditEvent(
        action=AdminAction.MODEL_PUBLISH,
        actor=os_user(),
        actor_kind=ActorKind.OS,
        decision=AuditDecision.DENY,
        model=name,
        reason_code=code,
        reason=f"{code.split('-')[0]} {ref} ({what}) refused: {refusal}"[:1000],
    )
    record_now(app, event)


@click.command("distill")
@click.argument("teacher")
@click.option(
    "--student-arch",
    type=click.Choice(ARCHITECTURES),
    required=True,
    help="The student's architecture (with the training options' default sizes).",
)
@click.option(
    "--inputs",
    "source",
    metavar="npz:PATH",
    required=True,
    help="Inputs declared public to label with the teacher (x, or an array named as the "
    "input); a registered dataset is refused.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def distill(
    app: AppContext, teacher: str, student_arch: str, source: str, epochs: int, seed: int
) -> None:
    """Train a STUDENT on TEACHER's (NAME, NAME:VERSION or NAME@LABEL) predictions over
    public inputs and publish it as the teacher model's next version.

    Post-processing: the student sees the teacher's outputs on public data, never a private
    example, so it carries the teacher's guarantee (the same ε and δ) and records it as its
    parent.

    \b
    Example:
        secure-maas models distill digits --student-arch mlp --inputs npz:public.npz
    """
    parsed = catalog.ModelRef.parse(teacher)
    try:
        derived, student = _distill(app, teacher, student_arch, source, epochs, seed)
    except SecureMaasError as exc:
        _record_refusal(app, parsed.name, teacher, f"distill, {student_arch}", exc)
        raise
    row = derived.row
    epsilon = (derived.guarantee.dp or {}).get("epsilon")
    promise = f"ε={epsilon:g}" if epsilon is not None else f"privacy {derived.guarantee.privacy}"
    sizes = f"{student.student_params} parameters"
    if student.teacher_params is not None:
        sizes += f" (teacher {student.teacher_params})"
    click.echo(
        f"published {row.model.name}:{row.version} ({student_arch} student, {sizes}, agrees "
        f"with the teacher on {student.agreement:.1%} of the public inputs; from version "
        f"{derived.parent_version}; {promise}, inherited)"
    )


def _distill(app: AppContext, teacher: str, arch: str, source: str, epochs: int, seed: int) -> Any:
    from secure_maas.training.distill import distill_version
    from secure_maas.training.public_data import load_public

    public = load_public(source, _input_names(app, teacher), app.engine())

    def record(session: Session, row: ModelVersion, derived_from: dict[str, Any]) -> None:
        used = derived_from["inputs"]
        event = os_event(
            AdminAction.MODEL_PUBLISH,
            f"distilled version {derived_from['version']} into a {arch} student on "
            f"{used['source']} ({used['rows']} public rows); guarantee inherited",
            model=row.model.name,
            model_version=row.version,
            digest=row.ciphertext_digest,
            parent=derived_from["version"],
            inputs_sha256=used["sha256"],
        )
        record_in(session, app, event)

    return distill_version(
        app.engine(),
        app.store(),
        app.keyring(),
        teacher,
        inputs=public,
        arch=arch,
        epochs=epochs,
        seed=seed,
        created_by=getpass.getuser(),
        record=record,
    )
