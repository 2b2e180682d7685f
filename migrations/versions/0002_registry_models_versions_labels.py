"""Registry: models, versions, labels.

`models` names a model; `model_versions` holds each published version's digests, key ids,
serving signature and DP guarantee (nullable: imported models have none); `model_labels` maps
`stable`/`canary`-style names to versions, as TF Serving's version labels do.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("artifact_path", sa.String(length=255), nullable=False),
        sa.Column("plaintext_sha256", sa.String(length=64), nullable=False),
        sa.Column("ciphertext_digest", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("plaintext_bytes", sa.BigInteger(), nullable=False),
        sa.Column("publisher_key_id", sa.String(length=64), nullable=False),
        sa.Column("service_key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=False),
        sa.Column("privacy", sa.String(length=16), nullable=False),
        sa.Column("dp_epsilon", sa.Float(), nullable=True),
        sa.Column("dp_delta", sa.Float(), nullable=True),
        sa.Column("dp_noise_multiplier", sa.Float(), nullable=True),
        sa.Column("dp_clip_norm", sa.Float(), nullable=True),
        sa.Column("dp_batch_size", sa.Integer(), nullable=True),
        sa.Column("dp_sampling_rate", sa.Float(), nullable=True),
        sa.Column("dp_epochs", sa.Float(), nullable=True),
        sa.Column("dp_steps", sa.Integer(), nullable=True),
        sa.Column("dp_accountant", sa.String(length=64), nullable=True),
        sa.Column("dp_statement", sa.Text(), nullable=True),
        sa.Column("dataset_name", sa.String(length=64), nullable=True),
        sa.Column("dataset_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_versions_model_id_models"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_model_versions_model_id_version")),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_versions_model_id"), ["model_id"], unique=False)

    op.create_table(
        "model_labels",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column(
            "version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_labels_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_labels_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_labels")),
        sa.UniqueConstraint("model_id", "label", name=op.f("uq_model_labels_model_id_label")),
    )
    with op.batch_alter_table("model_labels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_labels_model_id"), ["model_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_labels", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_labels_model_id"))

    op.drop_table("model_labels")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_versions_model_id"))

    op.drop_table("model_versions")
    op.drop_table("models")
