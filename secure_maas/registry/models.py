"""Registry tables: models, their numbered versions, and labels pointing at versions.

A version row is the database half of a published artifact; the sealed file under the store
path is the other half. They are written together (see `publish.py`): the file first, under the
model's lock, then the row in the same transaction, so an acknowledged version always has its
file, and a crash leaves at worst an unreferenced file that `models verify` reports.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from secure_maas.db.base import Base, IdType, UTCDateTime
from secure_maas.timeutil import utcnow

#: Scope of the change counter bumped by every registry change (see db/state.py).
MODELS_SCOPE = "models"


class VersionStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class Privacy(StrEnum):
    DP = "dp"  # trained here with DP-SGD; dp_* columns hold the guarantee
    NON_PRIVATE = "non-private"  # trained here with --no-dp, on request
    IMPORTED = "imported"  # made elsewhere; no guarantee known
    # Made elsewhere on data its importer declared public (`models import --public`): no
    # guarantee, and none needed. The only class `train --init-from` starts from; like
    # IMPORTED it has no ε, so a `max_epsilon` rule never serves it.
    PUBLIC = "public"


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    created_by: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version"
    )
    labels: Mapped[list[ModelLabel]] = relationship(back_populates="model")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        sa.ForeignKey("models.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    version: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    status: Mapped[str] = mapped_column(
        sa.String(16), nullable=False, default=VersionStatus.ACTIVE.value
    )
    artifact_path: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    plaintext_sha256: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    ciphertext_digest: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    plaintext_bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    publisher_key_id: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    service_key_id: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    signature: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    privacy: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    dp_epsilon: Mapped[float | None] = mapped_column(sa.Float)
    dp_delta: Mapped[float | None] = mapped_column(sa.Float)
    dp_noise_multiplier: Mapped[float | None] = mapped_column(sa.Float)
    dp_clip_norm: Mapped[float | None] = mapped_column(sa.Float)
    dp_batch_size: Mapped[int | None] = mapped_column(sa.Integer)
    dp_sampling_rate: Mapped[float | None] = mapped_column(sa.Float)
    dp_epochs: Mapped[float | None] = mapped_column(sa.Float)
    dp_steps: Mapped[int | None] = mapped_column(sa.Integer)
    dp_accountant: Mapped[str | None] = mapped_column(sa.String(64))
    dp_statement: Mapped[str | None] = mapped_column(sa.Text)
    dp_preprocessing: Mapped[str | None] = mapped_column(sa.String(32))
    dp_stats_noise_multiplier: Mapped[float | None] = mapped_column(sa.Float)
    dataset_name: Mapped[str | None] = mapped_column(sa.String(64))
    dataset_fingerprint: Mapped[str | None] = mapped_column(sa.String(64))
    # The latest membership-inference check (`privacy attack`): the strongest attack's figures.
    mia_auc: Mapped[float | None] = mapped_column(sa.Float)
    mia_advantage: Mapped[float | None] = mapped_column(sa.Float)
    mia_epsilon_lower_bound: Mapped[float | None] = mapped_column(sa.Float)
    mia_report: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    mia_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    created_by: Mapped[str] = mapped_column(sa.String(128), nullable=False)

    model: Mapped[Model] = relationship(back_populates="versions")

    @property
    def active(self) -> bool:
        return self.status == VersionStatus.ACTIVE.value


class ModelLabel(Base):
    """A name such as `stable` or `canary` that points at one version of a model."""

    __tablename__ = "model_labels"
    __table_args__ = (sa.UniqueConstraint("model_id", "label"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True
    )
    label: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model_versions.id", ondelete="CASCADE"), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_by: Mapped[str] = mapped_column(sa.String(128), nullable=False)

    model: Mapped[Model] = relationship(back_populates="labels")
    version: Mapped[ModelVersion] = relationship()
