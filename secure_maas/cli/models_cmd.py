"""`secure-maas models`: the sealed model registry."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent
from secure_maas.cli.context import AppContext
from secure_maas.cli.output import emit, format_option
from secure_maas.cli.recording import admin_change, os_event, os_user, record_in, record_now
from secure_maas.crypto import InvalidArtifact
from secure_maas.db.session import session_factory, session_scope
from secure_maas.errors import SecureMaasError
from secure_maas.registry import artifacts, catalog
from secure_maas.registry.models import Model, ModelVersion, Privacy, VersionStatus
from secure_maas.registry.publish import DP_FIELDS
from secure_maas.registry.signed import UNVERIFIED, SignedFacts
from secure_maas.timeutil import isoformat


def _signed(app: AppContext, row: ModelVersion) -> tuple[SignedFacts | None, str | None]:
    """The facts the publisher signed for `row` and its row checked against them: (facts,
    None) when they agree; (the header's facts or None, the problem) otherwise."""
    store, keyring = app.store(), app.keyring()
    try:
        return artifacts.signed_facts(store, keyring, row), None
    except InvalidArtifact as exc:
        problem = f"{exc.code}: {exc.reason}"
    try:
        return artifacts.signed_facts(store, keyring, row, reconcile=False), problem
    except InvalidArtifact:
        return None, problem


def version_row(
    model: Model, row: ModelVersion, labels: list[str], signed: SignedFacts | None
) -> dict[str, Any]:
    """One version as listed: privacy and guarantee from its signed header, never the row."""
    dp = (signed.dp if signed is not None else None) or {}
    return {
        "name": model.name,
        "version": row.version,
        "status": row.status,
        "labels": ",".join(labels) or None,
        "privacy": signed.privacy if signed is not None else UNVERIFIED,
        "epsilon": dp.get("epsilon"),
        "delta": dp.get("delta"),
        "size_bytes": row.size_bytes,
        "plaintext_sha256": row.plaintext_sha256,
        "ciphertext_digest": row.ciphertext_digest,
        "service_key_id": row.service_key_id,
        "publisher_key_id": row.publisher_key_id,
        "dataset": signed.dataset_name if signed is not None else None,
        "created_at": isoformat(row.created_at),
        "created_by": row.created_by,
    }


@click.group()
def models() -> None:
    """Publish, inspect and verify sealed models."""


@models.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (letters, digits, '.', '_', '-').")
@click.option(
    "--public",
    is_flag=True,
    help="Declare the model trained on PUBLIC data only (privacy class `public`), so "
    "`train --init-from` may start from it. You vouch for its data; the claim is signed into "
    "the artifact and audited.",
)
@click.pass_obj
def import_model(app: AppContext, file: Path, name: str, public: bool) -> None:
    """Seal an existing Keras model (.keras or .h5) as the next version of NAME.

    The model is recorded as having no DP guarantee (it was trained elsewhere): privacy class
    `imported`, or `public` with --public (trained on public data: no guarantee needed, and
    the only kind of model DP fine-tuning may start from). Neither has an ε, so a rule with
    `max_epsilon` serves neither. The file is read once, into memory, and nothing of it is
    written to disk but the sealed artifact. A refused file (a Lambda layer, a custom class,
    not a Keras model) is recorded in the audit log as a denied `model:publish`.

    \b
    Example:
        secure-maas models import churn.keras --name churn
        secure-maas models import digits-public.keras --name digits-base --public
    """
    from secure_maas.registry.store import check_name

    check_name(name)
    from secure_maas.registry.keras_import import load_keras_file

    try:
        payload, signature = load_keras_file(file)
    except SecureMaasError as exc:
        _record_refused_import(app, file, name, exc)
        raise
    from secure_maas.registry.publish import Provenance, publish

    privacy = Privacy.PUBLIC if public else Privacy.IMPORTED

    def record(session: Session, row: ModelVersion) -> None:
        what = "declared trained on public data" if public else "no DP guarantee"
        event = os_event(
            AdminAction.MODEL_PUBLISH,
            f"imported {file.name} ({what})",
            model=name,
            model_version=row.version,
            digest=row.ciphertext_digest,
            privacy=privacy.value,
        )
        record_in(session, app, event)

    row = publish(
        app.engine(),
        app.store(),
        app.keyring(),
        name=name,
        payload=payload,
        signature=signature,
        provenance=Provenance(privacy),
        created_by=getpass.getuser(),
        record=record,
    )
    click.echo(
        f"published {name}:{row.version} ({privacy.value}; {row.size_bytes} bytes sealed, "
        f"service key {row.service_key_id}, publisher {row.publisher_key_id})"
    )


def _record_refused_import(app: AppContext, file: Path, name: str, refusal: Exception) -> None:
    """Audit a refused import before the refusal is reported (never a secret: it names the
    file and the reason, such as the Lambda layer's place in the architecture)."""
    from secure_maas.audit import ActorKind, AuditDecision, AuditEvent
    from secure_maas.registry.codec import UnsafeModel

    code = "unsafe-model" if isinstance(refusal, UnsafeModel) else "not-importable"
    event = AuditEvent(
        action=AdminAction.MODEL_PUBLISH,
        actor=os_user(),
        actor_kind=ActorKind.OS,
        decision=AuditDecision.DENY,
        model=name,
        reason_code=code,
        reason=f"import of {file.name} refused: {refusal}",
        detail={"file": file.name},
    )
    record_now(app, event)


@models.command("list")
@format_option
@click.pass_obj
def list_models(app: AppContext, fmt: str) -> None:
    """List every model version with its labels, status and privacy guarantee.

    The guarantee is read from each artifact's signed header (no decryption); a version whose
    header cannot be authenticated or disagrees with its registry row shows `unverified`.

    \b
    Example:
        secure-maas models list --format json
    """
    with session_scope(session_factory(app.engine())) as session:
        rows = []
        for model in catalog.list_models(session):
            labels = catalog.labels_of(model)
            for v in model.versions:
                signed, problem = _signed(app, v)
                rows.append(
                    version_row(model, v, labels.get(v.version, []), None if problem else signed)
                )
    emit(
        rows,
        ["name", "version", "status", "labels", "privacy", "epsilon", "size_bytes", "created_at"],
        fmt,
    )


@models.command("show")
@click.argument("ref")
@format_option
@click.pass_obj
def show(app: AppContext, ref: str, fmt: str) -> None:
    """Show NAME (every version), NAME:VERSION or NAME@LABEL in detail.

    Privacy, guarantee, dataset and serving signature are those of the signed header (checked
    with the publisher's public key, not decrypted). A row that differs from its header, or a
    header that cannot be authenticated, is shown as such; the command then exits 1 and the
    refusal is audited.

    \b
    Example:
        secure-maas models show digits:2
    """
    parsed = catalog.ModelRef.parse(ref)
    with session_scope(session_factory(app.engine())) as session:
        model = catalog.get_model(session, parsed.name)
        labels = catalog.labels_of(model)
        if parsed.version is None and parsed.label is None:
            versions = list(model.versions)
        else:
            versions = [catalog.resolve(session, parsed, include_disabled=True)]
        rows = []
        problems: list[tuple[int, str]] = []
        for row in versions:
            signed, problem = _signed(app, row)
            data = version_row(model, row, labels.get(row.version, []), signed)
            data["signature"] = None if signed is None else dict(signed.signature)
            data["dataset_fingerprint"] = None if signed is None else signed.dataset_fingerprint
            dp = None if signed is None else signed.dp
            data["dp"] = {key: (dp or {}).get(key) for key in DP_FIELDS}
            data["header"] = (
                "signed header verified; the registry row agrees" if problem is None else problem
            )
            if problem is not None:
                problems.append((row.version, problem))
            rows.append(data)
    if fmt == "json":
        emit(rows, [], fmt)
    else:
        for data in rows:
            click.echo(f"{data['name']}:{data['version']}")
            for key, value in data.items():
                if key not in ("name", "version"):
                    click.echo(f"  {key:18} {value if value is not None else '-'}")
    if problems:
        _refuse_rows(app, parsed.name, problems, "models show")


@models.command("verify")
@click.argument("name", required=False)
@format_option
@click.pass_obj
def verify(app: AppContext, name: str | None, fmt: str) -> None:
    """Check every artifact (or NAME's): signature, digests, decryptability; no TensorFlow.

    Every registry row is first compared with its artifact's signed header (publisher's public
    key only, not decrypted): a difference in privacy, guarantee, dataset, serving signature,
    name, version, digests or publisher fails as `row_mismatch`, naming the fields. Also
    reports files in the store that no version references. Exits 1 if anything failed; every
    run is recorded in the audit log (`model:verify`).

    \b
    Example:
        secure-maas models verify && echo all artifacts intact
    """
    keyring = app.keyring()
    with session_scope(session_factory(app.engine())) as session:
        if name is not None:
            catalog.get_model(session, name)
        findings = list(artifacts.verify_all(session, app.store(), keyring, name))
    rows = [f.__dict__ for f in findings]
    emit(rows, ["model", "version", "ok", "code", "reason"], fmt)
    bad = [f for f in findings if not f.ok]
    summary = f"{len(bad)} of {len(findings)} artifacts failed verification"
    failed = "; ".join(f"{f.model}:{f.version or '-'} {f.code}: {f.reason}" for f in bad[:20])
    event = AuditEvent(
        action=AdminAction.MODEL_VERIFY,
        actor=os_user(),
        actor_kind=ActorKind.OS,
        decision=AuditDecision.ERROR if bad else AuditDecision.ALLOW,
        model=name,
        reason_code="verify_failed" if bad else "intact",
        reason=_clip(f"{summary}: {failed}" if bad else f"{len(findings)} artifacts intact"),
    )
    record_now(app, event)
    if bad:
        raise click.ClickException(summary)


def _clip(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_rows(app: AppContext, name: str, problems: list[tuple[int, str]], command: str) -> None:
    """Audit and refuse: registry rows that their signed headers do not vouch for."""
    listed = "; ".join(f"{name}:{version} {problem}" for version, problem in problems)
    record_now(
        app,
        AuditEvent(
            action=AdminAction.MODEL_VERIFY,
            actor=os_user(),
            actor_kind=ActorKind.OS,
            decision=AuditDecision.ERROR,
            model=name,
            model_version=problems[0][0] if len(problems) == 1 else None,
            reason_code="row_mismatch",
            reason=_clip(f"{command}: {listed}"),
        ),
    )
    raise click.ClickException(
        f"{listed}. The registry row is not what the publisher signed: the facts shown are the "
        "signed header's. Run `secure-maas models verify` and restore the row or republish."
    )


@models.command("label")
@click.argument("name")
@click.argument("version", type=int)
@click.argument("label")
@click.pass_obj
def label(app: AppContext, name: str, version: int, label: str) -> None:
    """Point LABEL (e.g. stable, canary) at VERSION of NAME.

    \b
    Example:
        secure-maas models label digits 3 stable
    """
    with admin_change(app, AdminAction.MODEL_LABEL) as change:
        catalog.set_label(change.session, name, version, label, actor=change.actor)
        change.note(f"{name}@{label} -> {version}", model=name, label=label, version=version)
    click.echo(f"{name}@{label} -> {version}")


def _set_status(app: AppContext, name: str, version: int, status: VersionStatus) -> None:
    action = (
        AdminAction.MODEL_DISABLE
        if status is VersionStatus.DISABLED
        else (AdminAction.MODEL_ENABLE)
    )
    with admin_change(app, action) as change:
        catalog.set_status(change.session, name, version, status)
        change.note(f"{name}:{version} {status.value}", model=name, version=version)
    click.echo(f"{name}:{version} {status.value}")


@models.command("disable")
@click.argument("name")
@click.argument("version", type=int)
@click.pass_obj
def disable(app: AppContext, name: str, version: int) -> None:
    """Stop serving VERSION of NAME (it stays listed and verifiable).

    \b
    Example:
        secure-maas models disable digits 2
    """
    _set_status(app, name, version, VersionStatus.DISABLED)


@models.command("enable")
@click.argument("name")
@click.argument("version", type=int)
@click.pass_obj
def enable(app: AppContext, name: str, version: int) -> None:
    """Serve VERSION of NAME again.

    \b
    Example:
        secure-maas models enable digits 2
    """
    _set_status(app, name, version, VersionStatus.ACTIVE)


@models.command("rewrap")
@click.pass_obj
def rewrap(app: AppContext) -> None:
    """Re-wrap every artifact's data key to the active service key (after a rotation).

    The bodies are not re-encrypted; each new file is verified before it replaces the old
    one. Safe to interrupt and run again.

    \b
    Example:
        secure-maas keys rotate --kind service && secure-maas models rewrap
    """
    report = artifacts.rewrap_all(app.engine(), app.store(), app.keyring())
    record_now(
        app,
        os_event(
            AdminAction.MODEL_REWRAP,
            f"{len(report.rewrapped)} rewrapped, {len(report.already)} already on the active key",
        ),
    )
    for relative in report.rewrapped:
        click.echo(f"rewrapped {relative}")
    click.echo(
        f"{len(report.rewrapped)} rewrapped, {len(report.already)} already on the "
        "active service key"
    )
