"""Finding model versions and changing their labels and status.

Resolution follows TF Serving: no version and no label means the newest available version; a
label names one version; a disabled version is not served but stays listed and verifiable.
Every change bumps the `models` change counter, which serving workers poll.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from secure_maas.db.state import bump
from secure_maas.errors import SecureMaasError
from secure_maas.registry.models import (
    MODELS_SCOPE,
    Model,
    ModelLabel,
    ModelVersion,
    VersionStatus,
)
from secure_maas.registry.store import InvalidName, check_name, check_version
from secure_maas.timeutil import utcnow

LABEL_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class ModelNotFound(SecureMaasError):
    """No such model, version or label (or none that may be served)."""


@dataclass(frozen=True)
class ModelRef:
    """`NAME`, `NAME:VERSION` or `NAME@LABEL` as typed on the command line."""

    name: str
    version: int | None = None
    label: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        if "@" in text:
            name, label = text.split("@", 1)
            return cls(check_name(name), label=check_label(label))
        if ":" in text:
            name, number = text.split(":", 1)
            if not number.isdigit():
                raise InvalidName(f"invalid version in {text!r}: expected NAME:NUMBER")
            return cls(check_name(name), version=check_version(int(number)))
        return cls(check_name(text))

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.label}" if self.label else self.name


def check_label(label: str) -> str:
    if not LABEL_PATTERN.fullmatch(label):
        raise InvalidName(f"invalid label {label!r}: lower-case letters, digits, '_' or '-'")
    return label


def get_model(session: Session, name: str) -> Model:
    model = session.execute(
        sa.select(Model)
        .where(Model.name == name)
        .options(
            selectinload(Model.versions),
            selectinload(Model.labels).selectinload(ModelLabel.version),
        )
    ).scalar_one_or_none()
    if model is None:
        raise ModelNotFound(f"no model named {name!r}")
    return model


def list_models(session: Session) -> list[Model]:
    return list(
        session.execute(
            sa.select(Model)
            .order_by(Model.name)
            .options(
                selectinload(Model.versions),
                selectinload(Model.labels).selectinload(ModelLabel.version),
            )
        ).scalars()
    )


def resolve(session: Session, ref: ModelRef, *, include_disabled: bool = False) -> ModelVersion:
    """The version `ref` names; without version or label, the newest active one."""
    model = get_model(session, ref.name)
    if ref.label is not None:
        for label in model.labels:
            if label.label == ref.label:
                row = label.version
                break
        else:
            raise ModelNotFound(f"model {ref.name!r} has no label {ref.label!r}")
    elif ref.version is not None:
        matches = [v for v in model.versions if v.version == ref.version]
        if not matches:
            raise ModelNotFound(f"model {ref.name!r} has no version {ref.version}")
        row = matches[0]
    else:
        active = [v for v in model.versions if v.active]
        if not active:
            raise ModelNotFound(f"model {ref.name!r} has no active version")
        row = active[-1]
    if not include_disabled and not row.active:
        raise ModelNotFound(f"version {row.version} of model {ref.name!r} is disabled")
    return row


def labels_of(model: Model) -> dict[int, list[str]]:
    """Version number -> the labels pointing at it."""
    found: dict[int, list[str]] = {}
    for label in sorted(model.labels, key=lambda item: item.label):
        found.setdefault(label.version.version, []).append(label.label)
    return found


def set_label(
    session: Session,
    name: str,
    version: int,
    label: str,
    *,
    actor: str,
    now: datetime | None = None,
) -> ModelLabel:
    """Point `label` at `version` of `name` (moving it if it pointed elsewhere)."""
    check_label(label)
    row = resolve(session, ModelRef(name, version=version), include_disabled=True)
    if not row.active:
        raise SecureMaasError(f"version {version} of {name!r} is disabled; enable it first")
    moment = now or utcnow()
    existing = session.execute(
        sa.select(ModelLabel).where(ModelLabel.model_id == row.model_id, ModelLabel.label == label)
    ).scalar_one_or_none()
    if existing is None:
        existing = ModelLabel(
            model_id=row.model_id,
            label=label,
            version_id=row.id,
            updated_at=moment,
            updated_by=actor,
        )
        session.add(existing)
    else:
        existing.version_id, existing.updated_at, existing.updated_by = row.id, moment, actor
    bump(session, MODELS_SCOPE)
    session.flush()
    return existing


def set_status(session: Session, name: str, version: int, status: VersionStatus) -> ModelVersion:
    """Enable or disable one version; a disabled version is refused by serving."""
    row = resolve(session, ModelRef(name, version=version), include_disabled=True)
    row.status = status.value
    bump(session, MODELS_SCOPE)
    session.flush()
    return row
