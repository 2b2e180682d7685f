"""Training ledger: registered datasets, training runs, membership-inference results.

`datasets` describes data by fingerprint, size, shape and classes, never the data itself, and
holds each dataset's privacy budget (ε, δ). `training_runs` is the privacy ledger: a run's row
is inserted, in the same transaction that checks the budget, before any training starts, and
it keeps the run's ε and its RDP curve so that runs on one dataset compose; rows are never
deleted, so the ledger always proves how much of a budget is spent. `model_versions` gains the
latest membership-inference figures of `secure-maas privacy attack`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("label_column", sa.String(length=255), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("feature_shape", sa.JSON(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("epsilon_budget", sa.Float(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("delta > 0 AND delta < 1", name=op.f("ck_datasets_delta_range")),
        sa.CheckConstraint("epsilon_budget > 0", name=op.f("ck_datasets_budget_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", name=op.f("uq_datasets_name")),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "dataset_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dp", sa.Boolean(), nullable=False),
        sa.Column("arch", sa.String(length=32), nullable=False),
        sa.Column("requested_epsilon", sa.Float(), nullable=True),
        sa.Column("epsilon", sa.Float(), nullable=True),
        sa.Column("delta", sa.Float(), nullable=True),
        sa.Column("rdp_orders", sa.JSON(), nullable=True),
        sa.Column("rdp_values", sa.JSON(), nullable=True),
        sa.Column("noise_multiplier", sa.Float(), nullable=True),
        sa.Column("clip_norm", sa.Float(), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("sampling_rate", sa.Float(), nullable=True),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("accountant", sa.String(length=64), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("test_fraction", sa.Float(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("path_used", sa.String(length=32), nullable=True),
        sa.Column("test_accuracy", sa.Float(), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('started', 'finished', 'aborted', 'refused')",
            name=op.f("ck_training_runs_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_training_runs_dataset_id_datasets"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_training_runs_dataset_id"), ["dataset_id"], unique=False
        )

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mia_auc", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("mia_advantage", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("mia_epsilon_lower_bound", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("mia_report", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("mia_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("mia_at")
        batch_op.drop_column("mia_report")
        batch_op.drop_column("mia_epsilon_lower_bound")
        batch_op.drop_column("mia_advantage")
        batch_op.drop_column("mia_auc")

    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_runs_dataset_id"))

    op.drop_table("training_runs")
    op.drop_table("datasets")
