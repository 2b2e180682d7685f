"""Training tables: registered datasets and the privacy ledger of training runs.

A `datasets` row describes data (source, fingerprint, identity, size, shape, classes) and
carries its privacy budget (ε, δ), or names the dataset whose budget it shares
(`budget_owner_id`: the same people registered again, on purpose); the data itself is never
stored, only read from its source when a run trains on it. `dataset_identities` holds each
identity (the multiset of feature vectors) once, so the same data cannot get a second budget
under another name by accident. A `training_runs` row is one entry of the ledger: what a run
asked for, what it spends (ε, δ and the RDP curve that composes with the other runs on the
same budget), how it ended and, once published, which model version it made. Rows are never
deleted: the ledger is what proves how much of a budget is gone.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from secure_maas.db.base import Base, IdType, UTCDateTime
from secure_maas.timeutil import utcnow


class RunStatus(StrEnum):
    STARTED = "started"  # reserved its ε and began; still running, or killed (counted as spent)
    FINISHED = "finished"  # trained and published (counted)
    ABORTED = "aborted"  # failed after it began training (counted: it touched the data)
    REFUSED = "refused"  # refused before any training (not counted)


#: The statuses whose ε is spent: every run that reached training, however it ended.
SPENDING = (RunStatus.STARTED, RunStatus.FINISHED, RunStatus.ABORTED)


class RegisteredDataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        sa.CheckConstraint("epsilon_budget > 0", name="budget_positive"),
        sa.CheckConstraint("delta > 0 AND delta < 1", name="delta_range"),
        sa.CheckConstraint(
            "(budget_owner_id IS NULL AND epsilon_budget IS NOT NULL AND delta IS NOT NULL) OR "
            "(budget_owner_id IS NOT NULL AND epsilon_budget IS NULL AND delta IS NULL)",
            name="one_budget",
        ),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False)
    label_column: Mapped[str | None] = mapped_column(sa.String(255))
    # v2 (order-independent multiset of records); v1 (order-dependent) when identity is None.
    fingerprint: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    # Multiset of feature vectors; None only for rows registered before identities existed.
    identity: Mapped[str | None] = mapped_column(sa.String(64))
    n: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    feature_shape: Mapped[list[int]] = mapped_column(sa.JSON, nullable=False)
    classes: Mapped[list[str]] = mapped_column(sa.JSON, nullable=False)
    # The budget, on the row that owns it; None on a row that shares another's.
    epsilon_budget: Mapped[float | None] = mapped_column(sa.Float)
    delta: Mapped[float | None] = mapped_column(sa.Float)
    budget_owner_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("datasets.id", ondelete="RESTRICT")
    )
    # Whether runs without a DP guarantee (--no-dp, --noise-seed, exact statistics) may use it;
    # read on the budget's owner.
    allow_non_private: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    # Public value ranges declared at registration ({"default": [lo, hi] | None,
    # "features": {name: [lo, hi]}}), or None.
    feature_range: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    # Hex key of the record-local train/test split (random, per dataset).
    split_key: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    created_by: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class DatasetIdentity(Base):
    """One row per identity: the dataset it was first registered as."""

    __tablename__ = "dataset_identities"

    identity: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        sa.ForeignKey("datasets.id", ondelete="RESTRICT"), nullable=False
    )


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('started', 'finished', 'aborted', 'refused')", name="status_known"
        ),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        sa.ForeignKey("datasets.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    model_name: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    dp: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    arch: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    # The target ε the operator gave (None when a noise multiplier was given instead).
    requested_epsilon: Mapped[float | None] = mapped_column(sa.Float)
    # THE ε of the run (conservative: the larger of RDP's and PLD's); None without DP.
    epsilon: Mapped[float | None] = mapped_column(sa.Float)
    delta: Mapped[float | None] = mapped_column(sa.Float)
    rdp_orders: Mapped[list[float] | None] = mapped_column(sa.JSON)
    rdp_values: Mapped[list[float] | None] = mapped_column(sa.JSON)
    noise_multiplier: Mapped[float | None] = mapped_column(sa.Float)
    clip_norm: Mapped[float | None] = mapped_column(sa.Float)
    batch_size: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    sampling_rate: Mapped[float | None] = mapped_column(sa.Float)
    epochs: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    steps: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    accountant: Mapped[str | None] = mapped_column(sa.String(64))
    # What reproduces the train/test split (membership-inference checks need it).
    seed: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    test_fraction: Mapped[float] = mapped_column(sa.Float, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    path_used: Mapped[str | None] = mapped_column(sa.String(32))
    test_accuracy: Mapped[float | None] = mapped_column(sa.Float)
    model_version: Mapped[int | None] = mapped_column(sa.Integer)
    created_by: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(sa.Text)

    @property
    def spends(self) -> bool:
        """Whether this run's ε counts against its dataset's budget."""
        return self.dp and self.status in SPENDING
